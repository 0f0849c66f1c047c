"""The layer loop reproduces the stock Hugging Face forward exactly, for every supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_model
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel

from imprag import ImpRAG, LayerSplit, UnsupportedModelError
from imprag.model.reader import batch_tokens


def _ids(seed: int, batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 300, (batch, length), generator=g)


def test_no_passages_matches_stock_forward(tiny: ImpRAG) -> None:
    ids = _ids(0, 3, 11)
    expected = tiny.model(ids).logits
    got = tiny.forward(batch_tokens(ids.tolist(), [0, 0, 0], tiny.pad_id))
    assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("mistral", {"sliding_window": 4}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
        ("qwen3", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}),
    ],
)
def test_sliding_window_layers_match_stock_forward(family: str, overrides: dict, tokenizer) -> None:
    model = tiny_model(family, **overrides)
    assert any(w is not None for w in ImpRAG(model, tokenizer).backbone.windows)
    ids = _ids(1, 2, 12)
    got = ImpRAG(model, tokenizer, LayerSplit(1, 3)).forward(batch_tokens(ids.tolist(), [0, 0], 0))
    assert_close(got, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_bf16_close_to_stock_bf16(tokenizer) -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    ids = _ids(2, 2, 9)
    got = ImpRAG(model, tokenizer, LayerSplit(1, 3)).forward(batch_tokens(ids.tolist(), [0, 0], 0))
    expected = model(ids).logits
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05)


def test_wrapping_leaves_state_dict_untouched(tokenizer) -> None:
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = ImpRAG(model, tokenizer)
    after = wrapped.model.state_dict()
    assert wrapped.model is model and wrapped.tokenizer is tokenizer
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_unsupported_architecture_is_refused_by_name(tokenizer) -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match=r"'gpt2'.*llama, mistral, qwen2, qwen3"):
        ImpRAG(model, tokenizer)


@pytest.mark.parametrize("b, t", [(5, 5), (3, 2), (-1, 2), (0, 9)])
def test_split_out_of_range_is_refused(b: int, t: int, tokenizer) -> None:
    from imprag import ConfigError

    with pytest.raises(ConfigError, match="LayerSplit"):
        ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b, t))


def test_families_fixture_covers_the_registry() -> None:
    from imprag import ARCHITECTURES

    assert sorted(ARCHITECTURES) == FAMILIES
