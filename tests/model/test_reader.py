"""Middle-layer reading equals references built from the stock model: a plain forward over
[passages; prompt] when every layer reads, and the stock decoder layers with per-layer masks otherwise."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close

from imprag import ImpRAG, InputError, LayerSplit
from imprag.model.reader import batch_tokens, pack_passages

L_MAX = 16


def _seq(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 300, (n,), generator=g).tolist()


def naive_reference(
    model, split: LayerSplit, passages: list[list[int]], prompt: list[int], offset: int, flush: bool = False
):
    """Run the stock decoder layers over [passages; prompt]; prompt tokens may attend to passage tokens
    only in layers b..t. Passages sit at [0, P), or at [offset - P, offset) when `flush`.
    Returns the prompt's logits (T, V)."""
    flat = [tok for p in passages for tok in p]
    n_p, n_q = len(flat), len(prompt)
    ids = torch.tensor([flat + prompt])
    start = offset - n_p if flush else 0
    pos = torch.cat([torch.arange(start, start + n_p), torch.arange(offset, offset + n_q)])[None]
    decoder = model.model
    h = decoder.embed_tokens(ids)
    cos_sin = decoder.rotary_emb(h, pos)
    causal = torch.ones(n_p + n_q, n_p + n_q, dtype=torch.bool).tril()
    blind = causal.clone()
    blind[n_p:, :n_p] = False  # prompt cannot see passages
    for i, layer in enumerate(decoder.layers):
        allowed = causal if i in split.middle else blind
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(h.dtype).min)[None, None]
        h = layer(h, attention_mask=mask, position_embeddings=cos_sin, position_ids=pos)
    return model.lm_head(decoder.norm(h))[0, n_p:]


def test_all_layers_reading_equals_stock_forward_over_concatenation(tiny: ImpRAG) -> None:
    model = tiny.model
    full = ImpRAG(model, tiny.tokenizer, LayerSplit(0, model.config.num_hidden_layers - 1))
    passages = [_seq(1, 7), _seq(2, 5)]
    prompt = _seq(3, 6)
    offset = 2 * L_MAX
    got = full.forward(batch_tokens([prompt], [offset], 0), pack_passages([passages], 0))[0]
    flat = [tok for p in passages for tok in p]
    pos = torch.cat([torch.arange(len(flat)), torch.arange(offset, offset + len(prompt))])[None]
    expected = model(torch.tensor([flat + prompt]), position_ids=pos).logits[0, len(flat) :]
    assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b, t", [(1, 3), (0, 0), (2, 4), (4, 4)])
def test_middle_layer_reading_equals_masked_stock_layers(tiny: ImpRAG, b: int, t: int) -> None:
    model = tiny.model
    imprag = ImpRAG(model, tiny.tokenizer, LayerSplit(b, t))
    passages = [_seq(4, 9), _seq(5, 3), _seq(6, 6)]
    prompt = _seq(7, 8)
    offset = 3 * L_MAX
    got = imprag.forward(batch_tokens([prompt], [offset], 0), pack_passages([passages], 0))[0]
    assert_close(got, naive_reference(model, imprag.split, passages, prompt, offset), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flush", [False, True])
def test_flush_layout_puts_passages_right_below_the_prompt(tiny: ImpRAG, flush: bool) -> None:
    passages = [_seq(30, 5), _seq(31, 7)]
    prompt = _seq(32, 4)
    offset = 2 * L_MAX
    packed = pack_passages([passages], 0, ends=[offset] if flush else None)
    first = offset - 12 if flush else 0
    assert packed.positions[0].tolist() == list(range(first, first + 12))
    got = tiny.forward(batch_tokens([prompt], [offset], 0), packed)[0]
    assert_close(
        got, naive_reference(tiny.model, tiny.split, passages, prompt, offset, flush), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_rows_read_their_own_passages(tokenizer, padding_side: str) -> None:
    """Different prompts, passages and passage counts in one padded batch equal one-at-a-time."""
    model = tiny_model("qwen3", seed=3)
    imprag = ImpRAG(model, tokenizer, LayerSplit(1, 3))
    prompts = [_seq(10, 5), _seq(11, 9), _seq(12, 2)]
    passages = [[_seq(13, 4)], [_seq(14, 6), _seq(15, 8)], []]
    offsets = [len(p) * L_MAX for p in passages]
    packed = pack_passages(passages, 0, ends=offsets)
    batched = imprag.forward(batch_tokens(prompts, offsets, 0, padding_side), packed)
    width = batched.shape[1]
    for row, (prompt, row_passages, offset) in enumerate(zip(prompts, passages, offsets, strict=True)):
        alone_packed = pack_passages([row_passages], 0, ends=[offset])
        alone = imprag.forward(batch_tokens([prompt], [offset], 0), alone_packed)[0]
        cols = slice(0, len(prompt)) if padding_side == "right" else slice(width - len(prompt), width)
        assert_close(batched[row, cols], alone, rtol=1e-5, atol=1e-5)
        expected = naive_reference(model, imprag.split, row_passages, prompt, offset, flush=True)
        assert_close(alone, expected, rtol=1e-5, atol=1e-5)


def test_reading_passages_changes_the_output(tiny: ImpRAG) -> None:
    prompt = batch_tokens([_seq(20, 6)], [L_MAX], 0)
    alone = tiny.forward(prompt)
    reading = tiny.forward(prompt, pack_passages([[_seq(21, 10)]], 0))
    assert not torch.allclose(alone, reading, atol=1e-3)


def test_passage_rows_must_match_prompts(tiny: ImpRAG) -> None:
    from imprag import InputError

    prompts = batch_tokens([_seq(40, 4), _seq(41, 5)], [L_MAX, L_MAX], 0)
    with pytest.raises(InputError, match="1 passage rows for 2 prompts"):
        tiny.forward(prompts, pack_passages([[_seq(42, 3)]], 0))


def test_embeddings_are_ordinary_tensors(tiny: ImpRAG) -> None:
    """Public embeddings can flow into autograd code (they are not inference-mode tensors)."""
    vectors = tiny.embed_passages(["The capital of Veloria is Quantum City."])
    weight = torch.ones(vectors.shape[1], requires_grad=True)
    (vectors @ weight).sum().backward()
    assert weight.grad is not None


def test_misaligned_batches_are_refused_and_read_batch_aligns_them(tiny: ImpRAG) -> None:
    prompts = ["Q: What is the capital of Veloria?\nA:"]
    passages = [["The capital of Veloria is Quantum City.", "Paris is in France."]]
    with pytest.raises(InputError, match="prompts must start after their passages"):
        tiny.forward(tiny.prompt_batch(prompts), tiny.passage_batch(passages))
    prompt_batch, passage_batch = tiny.read_batch(prompts, passages)
    got = tiny.forward(prompt_batch, passage_batch)[0]
    ids = [tiny.tokenizer(p)["input_ids"] for p in passages[0]]
    expected = naive_reference(tiny.model, tiny.split, ids, prompt_batch.input_ids[0].tolist(), 2 * 128)
    assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("mistral", {"sliding_window": 6}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
    ],
)
def test_sliding_windows_with_passages_match_stock_when_contiguous(
    family: str, overrides: dict, tokenizer
) -> None:
    """Windows count positions (RoPE distance). With the flush layout positions are contiguous, so reading in
    every layer equals a stock forward over [passages; prompt], whose windows count tokens."""
    model = tiny_model(family, **overrides)
    full = ImpRAG(model, tokenizer, LayerSplit(0, model.config.num_hidden_layers - 1))
    passages, prompt = [_seq(50, 7), _seq(51, 5)], _seq(52, 6)
    offset = 2 * L_MAX
    got = full.forward(batch_tokens([prompt], [offset], 0), pack_passages([passages], 0, ends=[offset]))[0]
    flat = [tok for p in passages for tok in p]
    pos = torch.arange(offset - len(flat), offset + len(prompt))[None]
    expected = model(torch.tensor([flat + prompt]), position_ids=pos).logits[0, len(flat) :]
    assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("mistral", {"sliding_window": 5}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 2}),
    ],
)
def test_sliding_window_decoding_matches_stock_generate(family: str, overrides: dict, tokenizer) -> None:
    model = tiny_model(family, **overrides)
    imprag = ImpRAG(model, tokenizer, LayerSplit(1, 3))
    prompt = "Q: What is the capital of Veloria?\nA:"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    stock = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    ours = imprag.generate([prompt], max_new_tokens=8, ignore_eos=True)[0]
    assert ours.token_ids == stock[0, ids.shape[1] :].tolist()
