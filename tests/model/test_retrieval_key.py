"""EmbeddingConfig.retrieval_key="trained": E_p = W_ret f_p over the base model's frozen layer-b inputs.

Checked on tiny random models against the stock HF forward (layer b's normalised input from
`output_hidden_states`, its own k_proj, a mean over tokens by hand): f_p is that input's mean, W_ret starts
at k_proj so scores equal the base model's, search through an index of f_p ranks as E_q . W_ret f_p, and
W_ret is saved, loaded and fingerprinted with the model but never with the passages."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close

from imprag import ImpRAG, LayerSplit
from imprag.config import ConfigError, EmbeddingConfig, ImpRAGConfig
from imprag.model.reader import InputError
from imprag.model.retrieval_key import RETRIEVAL_KEY_FILE
from imprag.retrieval.memory import InMemoryRetriever

SPLIT = LayerSplit(b=1, t=3)
TEXTS = ["The capital of Veloria is Quantum City.", "Mozart was a composer.", "The Nile flows north."]
PROMPTS = ["Q: What is the capital of Veloria? A:", "Q: Where is Mozart from? A:"]

pytestmark = pytest.mark.usefixtures("one_thread")


def keyed(family: str, tokenizer, seed: int = 0) -> ImpRAG:
    model = ImpRAG(tiny_model(family, seed), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", retrieval_key="trained")
    model.config = replace(model.config, embedding=embedding)
    return model


def naive_key_inputs(model: ImpRAG, texts: list[str]) -> torch.Tensor:
    """Mean over each passage's tokens of layer b's input_layernorm output, from the stock HF forward."""
    out = []
    layer = model.model.model.layers[SPLIT.b]
    for ids in model.passage_tokens(texts):
        with torch.no_grad():
            hidden = model.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[SPLIT.b]
            out.append(layer.input_layernorm(hidden)[0].float().mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_passage_vectors_are_layer_b_inputs_and_the_untrained_key_scores_as_the_base(family, tokenizer):
    model = keyed(family, tokenizer)
    assert model.index_dim == model.model.config.hidden_size != model.dim
    f_p = model.embed_passages(TEXTS)
    assert_close(f_p, naive_key_inputs(model, TEXTS), atol=1e-5, rtol=1e-4)

    base = ImpRAG(tiny_model(family), tokenizer, SPLIT)
    base.config = replace(base.config, embedding=replace(base.config.embedding, pooling="mean"))
    e_p, e_q = base.embed_passages(TEXTS), base.embed_queries(PROMPTS)
    # W_ret starts at k_proj: E_p = W_ret f_p (k_proj's bias, qwen2's, adds E_q . b to every passage alike)
    bias = base.backbone.layer(SPLIT.b).self_attn.k_proj.bias
    shift = 0 if bias is None else bias.detach().float()
    assert_close(f_p @ model.retrieval_key.T + shift, e_p, atol=1e-4, rtol=1e-4)
    assert_close(model.embed_queries(PROMPTS), e_q)
    scores = model.index_query(e_q) @ f_p.T
    assert_close(scores - scores[:, :1], e_q @ e_p.T - (e_q @ e_p.T)[:, :1], atol=1e-4, rtol=1e-4)


def test_search_maps_the_query_and_ranks_by_e_q_dot_w_ret_f_p(tokenizer) -> None:
    model = keyed("llama", tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():
        model.retrieval_key.add_(torch.randn_like(model.retrieval_key))  # a "trained" key
    texts = [f"Passage {i} about topic {i * 3}." for i in range(12)]
    f_p = model.embed_passages(texts)
    index = InMemoryRetriever(texts, f_p)
    found = model.retrieve(PROMPTS, index, k=4)
    expected = (model.embed_queries(PROMPTS) @ model.retrieval_key @ f_p.T).topk(4, dim=1)
    assert [[p.row for p in row] for row in found] == expected.indices.tolist()
    scores = torch.tensor([[p.score for p in row] for row in found])
    assert_close(scores, expected.values, atol=1e-4, rtol=1e-4)


def test_the_key_saves_loads_and_counts_in_the_model_fingerprint_only(tokenizer, tmp_path) -> None:
    model = keyed("llama", tokenizer)
    passages_fp, model_fp = model.retrieval_fingerprint(), model.model_fingerprint()
    with torch.no_grad():
        model.retrieval_key.mul_(1.5)
    assert model.retrieval_fingerprint() == passages_fp  # f_p does not depend on W_ret: indexes stay valid
    assert model.model_fingerprint() != model_fp  # answers do
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / RETRIEVAL_KEY_FILE).is_file()
    loaded = ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    assert loaded.config.embedding.retrieval_key == "trained" and loaded.config.passages == "frozen"
    assert torch.equal(loaded.retrieval_key, model.retrieval_key)
    searched = loaded.index_query(loaded.embed_queries(PROMPTS))
    assert_close(searched, model.index_query(model.embed_queries(PROMPTS)))

    (tmp_path / "m" / RETRIEVAL_KEY_FILE).unlink()
    with pytest.raises(InputError, match=f"has no {RETRIEVAL_KEY_FILE}"):
        ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")
    (tmp_path / "m" / RETRIEVAL_KEY_FILE).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        ImpRAG.from_pretrained(tmp_path / "m", dtype="float32")


def test_switching_the_key_off_drops_it_and_the_index_dimension(tokenizer) -> None:
    model = keyed("llama", tokenizer)
    model.config = replace(model.config, embedding=replace(model.config.embedding, retrieval_key="base"))
    assert model.retrieval_key is None and model.index_dim == model.dim
    assert model.embed_passages(TEXTS).shape == (3, model.dim)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: EmbeddingConfig(pooling="last", retrieval_key="trained"), "pooling='mean' and rope='pre'"),
        (lambda: EmbeddingConfig(pooling="mean", rope="post", retrieval_key="trained"), "rope='pre'"),
        (lambda: EmbeddingConfig(retrieval_key="learned"), "must be 'base' or 'trained'"),
        (
            lambda: ImpRAGConfig(SPLIT, EmbeddingConfig(pooling="mean", retrieval_key="trained")),
            "needs passages='frozen'",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_family_with_key_norms_is_refused(tokenizer) -> None:
    model = ImpRAG(tiny_model("qwen3"), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", retrieval_key="trained")
    with pytest.raises(InputError, match="k_norm"):
        model.config = replace(model.config, embedding=embedding)


def test_base_indexes_keep_their_fingerprint() -> None:
    """retrieval_key appears in the passage-side settings only when trained: old manifests still match."""
    assert "retrieval_key" not in EmbeddingConfig(pooling="mean").passage_side()
    side = EmbeddingConfig(pooling="mean", retrieval_key="trained").passage_side()
    assert side["retrieval_key"] == "trained"
