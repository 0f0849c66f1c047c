"""E_q / E_p equal values computed by hand from the stock model's layer-b inputs; only layers 0..b run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close

from imprag import EmbeddingConfig, ImpRAG, LayerSplit
from imprag.model.reader import InputError, batch_tokens

PROMPTS = [
    "Q: What is the capital of Veloria?\nA:",
    "Is this statement true? The sky is blue. A:",
    "Mozart [SEP] birthplace A:",
]
PASSAGES = ["The capital of Veloria is Quantum City.", "Paris is the capital of France.", "The Nile."]


def layer_b_inputs(model, b: int, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Hidden states entering layer b in the stock forward, captured with a hook."""
    seen = {}

    def capture(module, args, kwargs) -> None:
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = model.model.layers[b].register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(ids, position_ids=positions)
    handle.remove()
    return seen["h"]


def by_hand(model, b: int, text_ids: list[int], offset: int, kind: str, rope: str, pooling: str):
    """E_q (kind='q') or E_p (kind='k') computed from the stock modules, one text, no padding."""
    ids = torch.tensor([text_ids])
    pos = torch.arange(offset, offset + len(text_ids))[None]
    h = layer_b_inputs(model, b, ids, pos)
    attn = model.model.layers[b].self_attn
    x = model.model.layers[b].input_layernorm(h)
    head_dim, n_kv = attn.head_dim, model.config.num_key_value_heads
    q = attn.q_proj(x).view(1, len(text_ids), -1, head_dim)
    k = attn.k_proj(x).view(1, len(text_ids), -1, head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (1, heads, T, D)
    if rope == "post":
        cos, sin = model.model.rotary_emb(h, pos)
        cos, sin = cos[:, None], sin[:, None]
        rot = lambda x: torch.cat([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], dim=-1)  # noqa: E731
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    if kind == "q":
        g = q.shape[1] // n_kv
        states = torch.stack([q[:, i * g : (i + 1) * g].mean(dim=1) for i in range(n_kv)], dim=1)
    else:
        states = k
    pooled = states[:, :, -1] if pooling == "last" else states.mean(dim=2)  # (1, G, D)
    return pooled.reshape(-1)


@pytest.mark.parametrize("rope", ["pre", "post"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embeddings_equal_hand_computation(tiny: ImpRAG, rope: str, pooling: str) -> None:
    model = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(rope=rope, pooling=pooling))
    offset = model.config.reader.k * model.config.reader.l_max
    queries = model.embed_queries(PROMPTS)
    passages = model.embed_passages(PASSAGES)
    assert queries.shape == (3, model.dim) and passages.shape == (3, model.dim)
    assert model.dim == tiny.model.config.num_key_value_heads * 16
    for i, text in enumerate(PROMPTS):
        ids = model.tokenizer(text)["input_ids"]
        expected = by_hand(model.model, model.split.b, ids, offset, "q", rope, pooling)
        assert_close(queries[i], expected, rtol=1e-4, atol=1e-5)
    for i, text in enumerate(PASSAGES):
        ids = model.tokenizer(text)["input_ids"]
        expected = by_hand(model.model, model.split.b, ids, 0, "k", rope, pooling)
        assert_close(passages[i], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("query_pooling, pooling", [("last", "mean"), ("mean", "last")])
def test_query_pooling_pools_e_q_alone(tiny: ImpRAG, query_pooling: str, pooling: str) -> None:
    """EmbeddingConfig.query_pooling: E_q pooled its own way (by hand), E_p as `pooling` says, and nothing
    an index records (passage_side, the retrieval fingerprint) depends on it."""
    plain = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(pooling=pooling))
    mixed = ImpRAG(
        tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(pooling=pooling, query_pooling=query_pooling)
    )
    offset = mixed.config.reader.k * mixed.config.reader.l_max
    queries = mixed.embed_queries(PROMPTS)
    for i, text in enumerate(PROMPTS):
        ids = mixed.tokenizer(text)["input_ids"]
        assert_close(queries[i], by_hand(mixed.model, mixed.split.b, ids, offset, "q", "pre", query_pooling))
        other = by_hand(mixed.model, mixed.split.b, ids, offset, "q", "pre", pooling)
        assert not torch.allclose(queries[i], other, atol=1e-3)
    assert_close(mixed.embed_passages(PASSAGES), plain.embed_passages(PASSAGES))
    assert mixed.config.embedding.passage_side() == plain.config.embedding.passage_side()
    assert mixed.retrieval_fingerprint() == plain.retrieval_fingerprint()
    assert mixed.config.embedding.query_side_pooling == query_pooling
    assert plain.config.embedding.query_side_pooling == pooling


def test_query_pooling_must_be_a_known_pooling() -> None:
    from imprag.config import ConfigError

    with pytest.raises(ConfigError, match="query_pooling must be null, 'last', 'mean' or 'attention'"):
        EmbeddingConfig(query_pooling="max")  # type: ignore[arg-type]


def test_gqa_groups_follow_the_models_head_mapping(tokenizer) -> None:
    """With 8 query heads over 2 KV heads, group i is the mean of query heads 4i..4i+3 (not interleaved)."""
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    imprag = ImpRAG(model, tokenizer, LayerSplit(2, 3))
    ids = tokenizer(PROMPTS[0])["input_ids"]
    offset = imprag.config.reader.k * imprag.config.reader.l_max
    expected = by_hand(model, 2, ids, offset, "q", "pre", "last")
    assert_close(imprag.embed_queries(PROMPTS[:1])[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batched_equals_one_at_a_time(tiny: ImpRAG, padding_side: str, pooling: str) -> None:
    model = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(pooling=pooling))
    ids = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    batched = model.encode_queries(batch_tokens(ids, [0] * 3, 0, padding_side))
    for i, row in enumerate(ids):
        assert_close(batched[i], model.encode_queries(batch_tokens([row], [0], 0))[0], rtol=1e-5, atol=1e-5)
    # The public API sorts by length and batches; any batch size gives the same vectors.
    assert_close(model.embed_passages(PASSAGES, batch_size=1), model.embed_passages(PASSAGES, batch_size=3))


def test_embedding_runs_only_layers_up_to_b(tokenizer) -> None:
    model = tiny_model("llama")
    imprag = ImpRAG(model, tokenizer, LayerSplit(2, 3))
    norms, mlps = [], []
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(lambda *a, i=i: norms.append(i))
        layer.mlp.register_forward_hook(lambda *a, i=i: mlps.append(i))
    imprag.embed_queries(PROMPTS[:2], batch_size=2)
    imprag.embed_passages(PASSAGES[:2], batch_size=2)
    assert norms == [0, 1, 2, 0, 1, 2]  # layers 0..b project (two calls, one batch each)
    assert mlps == [0, 1, 0, 1]  # layer b stops after its q/k projections


# -- query centering (EmbeddingConfig.query_center, ImpRAG.calibrate) ---------------------------------


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_calibrate_centers_queries_and_leaves_passages_and_the_fingerprint(tokenizer, pooling: str) -> None:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3), EmbeddingConfig(pooling=pooling))
    raw_q, raw_p = model.embed_queries(PROMPTS), model.embed_passages(PASSAGES)
    fingerprint = model.retrieval_fingerprint()
    mu = model.calibrate(PROMPTS)
    assert_close(mu, raw_q.double().mean(0).float())
    assert model.config.embedding.query_center == tuple(mu.tolist())
    centered = model.embed_queries(PROMPTS)
    assert_close(centered, raw_q - mu)
    assert_close(centered.mean(0), torch.zeros_like(mu), atol=1e-5, rtol=0)
    assert torch.equal(model.embed_passages(PASSAGES), raw_p)
    assert model.retrieval_fingerprint() == fingerprint  # an index built before calibrating stays valid
    rebuilt = ImpRAG(model.model, tokenizer, model.split, model.config.embedding)  # no cached value
    assert rebuilt.retrieval_fingerprint() == fingerprint
    other = "last" if pooling == "mean" else "mean"
    model.config = replace(model.config, embedding=replace(model.config.embedding, pooling=other))
    assert model.retrieval_fingerprint() != fingerprint  # a passage-side setting: the cache sees it
    model.config = replace(model.config, embedding=replace(model.config.embedding, pooling=pooling))
    # the query generate() reads at layer b is the centered one too
    batch = model.prompt_batch(PROMPTS, model.config.reader.k * model.config.reader.l_max)
    seen = model._prefill(batch, lambda q: None, cache=False).query
    assert_close(seen.float(), centered, atol=1e-5, rtol=1e-5)
    # calibrating again re-estimates from the uncentered vectors, not the centered ones
    assert_close(model.calibrate(PROMPTS[:2]), raw_q[:2].double().mean(0).float())


def test_query_center_is_saved_and_loaded_with_the_model(tokenizer, tmp_path) -> None:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3), EmbeddingConfig(pooling="mean"))
    model.calibrate(PROMPTS)
    model.save_pretrained(tmp_path / "m")
    loaded = ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    assert loaded.config.embedding == model.config.embedding
    assert_close(loaded.embed_queries(PROMPTS), model.embed_queries(PROMPTS))


def test_a_query_center_of_the_wrong_size_or_values_is_refused(tokenizer) -> None:
    from imprag.config import ConfigError

    with pytest.raises(ConfigError, match="finite"):
        EmbeddingConfig(query_center=(1.0, float("nan")))
    for bad in ((), 3.0, (True, 1.0), ("1.0",)):
        with pytest.raises(ConfigError, match="finite"):
            EmbeddingConfig(query_center=bad)
    assert EmbeddingConfig(query_center=(np.float32(0.5), 1)).query_center == (0.5, 1.0)
    with pytest.raises(InputError, match=r"has 3 values but this model's E_q has 32"):
        ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3), EmbeddingConfig(query_center=(0.0,) * 3))
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3))
    with pytest.raises(InputError, match=r"re-run ImpRAG\.calibrate"):  # setting the config checks it too
        model.config = replace(model.config, embedding=EmbeddingConfig(query_center=(0.0,) * 3))
    object.__setattr__(
        model, "_config", replace(model.config, embedding=EmbeddingConfig(query_center=(0.0,) * 3))
    )
    with pytest.raises(InputError, match=r"re-run ImpRAG\.calibrate"):  # and so does E_q, past the setter
        model.embed_queries(PROMPTS)
