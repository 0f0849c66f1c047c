"""EmbeddingConfig.query_pooling="attention": E_q = sum_i softmax(v . x_i) q_i over the prompt's tokens.

Checked on tiny random models of every family against the stock HF forward (layer b's input captured with a
hook, its own input_layernorm and q_proj, the GQA group mean and the softmax by hand, one prompt at a time,
no padding): v = 0 gives exactly the mean, a trained v the hand computation, from both places E_q is read
(`embed_queries` and the prompt's own prefill pass); v is saved, loaded and fingerprinted with the model but
never with the passages."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_embeddings import PASSAGES, PROMPTS, layer_b_inputs
from torch.testing import assert_close

from imprag import EmbeddingConfig, ImpRAG
from imprag.config import ConfigError
from imprag.model.embeddings import pool
from imprag.model.query_pooling import QUERY_SCORER_FILE
from imprag.model.reader import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def attentive(tiny: ImpRAG, center: bool = False) -> ImpRAG:
    embedding = EmbeddingConfig(pooling="mean", query_pooling="attention")
    model = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, embedding)
    if center:
        model.calibrate(PROMPTS)
    return model


def by_hand(model: ImpRAG, text: str, scorer: torch.Tensor) -> torch.Tensor:
    """E_q of one prompt from the stock modules: softmax(v . x_i) over its tokens, then the weighted
    mean of the GQA-grouped pre-RoPE query states, minus mu_q when the model has one."""
    hf, b = model.model, model.split.b
    ids = model.tokenizer(text)["input_ids"]
    offset = model.config.reader.k * model.config.reader.l_max
    h = layer_b_inputs(hf, b, torch.tensor([ids]), torch.arange(offset, offset + len(ids))[None])
    attn = hf.model.layers[b].self_attn
    x = hf.model.layers[b].input_layernorm(h)[0]  # (T, hidden)
    q = attn.q_proj(x).view(len(ids), -1, attn.head_dim)  # (T, H, D)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    n_kv = hf.config.num_key_value_heads
    grouped = q.view(len(ids), n_kv, -1, attn.head_dim).mean(dim=2)  # (T, G, D)
    weights = torch.softmax(x.float() @ scorer, dim=0)
    e_q = (weights[:, None, None] * grouped.float()).sum(dim=0).reshape(-1)
    center = model.config.embedding.query_center
    return e_q if center is None else e_q - torch.tensor(center)


@pytest.mark.parametrize("center", [False, True])
def test_a_zero_scorer_is_mean_pooling(tiny: ImpRAG, center: bool) -> None:
    """Switched on, v is 0 and E_q is the mean-pooled E_q of the same weights, exactly as before."""
    mean = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(pooling="mean"))
    model = attentive(tiny)
    if center:
        mean.calibrate(PROMPTS)
        model.calibrate(PROMPTS)
    assert model.query_scorer is not None and not model.query_scorer.any()
    assert model.query_scorer.shape == (tiny.model.config.hidden_size,)
    assert_close(model.embed_queries(PROMPTS), mean.embed_queries(PROMPTS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("center", [False, True])
def test_attention_pooling_equals_hand_computation(tiny: ImpRAG, center: bool) -> None:
    """A trained v: embed_queries (prompts batched with padding) and the prompt's own prefill pass (what
    `generate` searches with) both equal the hand computation, which differs from the mean."""
    model = attentive(tiny, center)
    torch.manual_seed(1)
    with torch.no_grad():
        model.query_scorer.normal_(0.0, 2.0)
    queries = model.embed_queries(PROMPTS)
    offset = model.config.reader.prompt_start(model.config.reader.k)
    with torch.no_grad():
        prefill = model._prefill(model.prompt_batch(PROMPTS, offset), lambda _: None, cache=False).query
    mean = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, replace(model.config.embedding, query_pooling=None))
    for i, text in enumerate(PROMPTS):
        expected = by_hand(model, text, model.query_scorer.detach())
        assert_close(queries[i], expected, rtol=1e-4, atol=1e-5)
        assert_close(prefill[i].float(), expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(queries[i], mean.embed_queries([text])[0], atol=1e-3)


def test_the_scorer_is_the_query_side_only(tiny: ImpRAG) -> None:
    """E_p, the passage-side settings and the retrieval fingerprint ignore v; the model fingerprint does
    not, and v gets a gradient through E_q."""
    model = attentive(tiny)
    plain = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(pooling="mean"))
    before = model.model_fingerprint()
    with torch.no_grad():
        model.query_scorer.normal_(0.0, 1.0)
    assert model.model_fingerprint() != before
    assert model.retrieval_fingerprint() == plain.retrieval_fingerprint()
    assert_close(model.embed_passages(PASSAGES), plain.embed_passages(PASSAGES))
    model.query_scorer.requires_grad_(True)
    e_q = model.encode_queries(model.prompt_batch(PROMPTS))
    (e_q * torch.randn_like(e_q)).sum().backward()
    assert model.query_scorer.grad is not None and model.query_scorer.grad.abs().sum() > 0


def test_the_scorer_is_saved_loaded_and_switched_off(tiny: ImpRAG, tmp_path) -> None:
    model = attentive(tiny)
    with torch.no_grad():
        model.query_scorer.normal_(0.0, 1.0)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / QUERY_SCORER_FILE).is_file()
    loaded = ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    assert loaded.config.embedding.query_pooling == "attention"
    assert torch.equal(loaded.query_scorer, model.query_scorer)
    assert_close(loaded.embed_queries(PROMPTS), model.embed_queries(PROMPTS))
    (tmp_path / "m" / QUERY_SCORER_FILE).unlink()
    with pytest.raises(InputError, match=f"has no {QUERY_SCORER_FILE}"):
        ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    (tmp_path / "m" / QUERY_SCORER_FILE).write_text("not a tensor")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    model.config = replace(model.config, embedding=replace(model.config.embedding, query_pooling="mean"))
    assert model.query_scorer is None


def test_attention_pooling_weighs_only_valid_tokens() -> None:
    """Uniform scores give the mean; a padded token's score, however large, weighs nothing; a row with
    no valid token pools to 0; the passage side cannot pool this way and scores must be given."""
    torch.manual_seed(0)
    states = torch.randn(3, 2, 4, 5)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True], [False] * 4])
    scores = torch.zeros(3, 4)
    assert_close(pool(states, valid, "attention", scores)[:2], pool(states, valid, "mean")[:2])
    assert torch.equal(pool(states, valid, "attention", scores)[2], torch.zeros(10))
    scores[0, 3], scores[1, 0] = 1e4, 3.0
    out = pool(states, valid, "attention", scores)
    assert_close(out[0], pool(states, valid, "mean")[0])  # the padded position's 1e4 is ignored
    weights = torch.softmax(torch.tensor([3.0, 0.0, 0.0, 0.0]), 0)
    assert_close(out[1], (states[1] * weights[None, :, None]).sum(1).reshape(-1))
    with pytest.raises(ValueError, match="needs per-token scores"):
        pool(states, valid, "attention")
    with pytest.raises(ConfigError, match="pooling must be 'last' or 'mean'"):
        EmbeddingConfig(pooling="attention")  # type: ignore[arg-type]
