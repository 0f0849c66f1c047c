"""Two-stage generation: retrieval at layer b inside the prompt's own forward pass, then cached decoding
that equals naive decoding recomputing everything for every token."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close

from imprag import (
    DecodeConfig,
    EmbeddingConfig,
    GenerationObserver,
    ImpRAG,
    InMemoryRetriever,
    InputError,
    LayerSplit,
    ReaderConfig,
)
from imprag.model.reader import batch_tokens

PROMPTS = ["Q: What is the capital of Veloria?\nA:", "Is this statement true? Rome is in Italy. A:"]
PASSAGES = [
    "The capital of Veloria is Quantum City.",
    "Paris is the capital of France.",
    "Mozart was a composer from Salzburg.",
    "The Nile flows into the Mediterranean Sea.",
    "Rome is the capital of Italy.",
]


def naive_greedy(model: ImpRAG, prompt: str, passages: list[str], steps: int) -> list[int]:
    """Recompute the whole forward (passages included) for every new token; no cache anywhere."""
    ids = model.tokenizer(prompt)["input_ids"]
    offset = len(passages) * model.config.reader.l_max
    packed = model.passage_batch([passages], [offset]) if passages else None
    if passages:
        first = int(packed.positions[0, 0])
        expected_first = offset - packed.input_ids.shape[1] if model.config.reader.layout == "flush" else 0
        assert first == expected_first
    out: list[int] = []
    for _ in range(steps):
        logits = model.forward(batch_tokens([ids + out], [offset], model.pad_id), packed)
        out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("layout", ["start", "flush"])
@pytest.mark.parametrize("with_passages", [True, False])
def test_cached_greedy_equals_naive_recompute(tiny: ImpRAG, with_passages: bool, layout: str) -> None:
    model = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, reader=ReaderConfig(layout=layout))
    passages = [PASSAGES[:2], PASSAGES[2:5]] if with_passages else None
    results = model.generate(PROMPTS, passages=passages, max_new_tokens=8, ignore_eos=True)
    for i, res in enumerate(results):
        expected = naive_greedy(model, PROMPTS[i], passages[i] if passages else [], 8)
        assert res.token_ids == expected
        assert res.finish_reason == "length"
        assert [p.text for p in res.passages] == (passages[i] if passages else [])


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_retrieval_happens_inside_the_forward_pass(tiny: ImpRAG, rope: str) -> None:
    """generate(index=...) reads exactly the top-k by E_q, and decodes like naive recompute over them.
    k=2 differs from reader.k, so the prompt position (and post-RoPE E_q) depend on passing k through."""
    model = ImpRAG(tiny.model, tiny.tokenizer, tiny.split, EmbeddingConfig(rope=rope))
    index = InMemoryRetriever.build(model, PASSAGES)
    results = model.generate(PROMPTS, index=index, k=2, max_new_tokens=6, ignore_eos=True)
    ids, scores = index.search(model.embed_queries(PROMPTS, k=2), 2)
    retrieved = model.retrieve(PROMPTS, index, k=2)
    for i, res in enumerate(results):
        assert [p.row for p in res.passages] == ids[i].tolist() == [p.row for p in retrieved[i]]
        assert_close(torch.tensor([p.score for p in res.passages]), scores[i], rtol=1e-5, atol=1e-4)
        assert res.token_ids == naive_greedy(model, PROMPTS[i], [p.text for p in res.passages], 6)


def test_layers_below_b_run_once_and_passages_are_not_recomputed_per_token(tokenizer) -> None:
    model = tiny_model("llama")
    imprag = ImpRAG(model, tokenizer, LayerSplit(2, 3))
    index = InMemoryRetriever.build(imprag, PASSAGES)
    calls: list[tuple[int, int]] = []  # (layer, tokens in the chunk)
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(lambda m, a, out, i=i: calls.append((i, a[0].shape[1])))
    imprag.generate(PROMPTS[:1], index=index, k=2, max_new_tokens=4, ignore_eos=True)
    prompt_len = len(tokenizer(PROMPTS[0])["input_ids"])
    prompt_calls = [layer for layer, n in calls if n == prompt_len]
    assert prompt_calls == [0, 1, 2, 3, 4]  # each layer once over the prompt: nothing redone after layer b
    single = [layer for layer, n in calls if n == 1]
    assert single == [0, 1, 2, 3, 4] * 3  # 3 decode steps after the first token, one token each
    passage_calls = [layer for layer, n in calls if n not in (1, prompt_len)]
    assert passage_calls == [0, 1, 2, 3]  # passages through layers 0..t once (layer t: K/V only)


def test_batched_generation_equals_one_at_a_time(tiny: ImpRAG) -> None:
    model = tiny
    passages = [[PASSAGES[0]], PASSAGES[1:4]]
    batched = model.generate(PROMPTS, passages=passages, max_new_tokens=5, ignore_eos=True)
    for i in range(2):
        alone = model.generate(
            PROMPTS[i : i + 1], passages=passages[i : i + 1], max_new_tokens=5, ignore_eos=True
        )[0]
        assert alone.token_ids == batched[i].token_ids


def test_top_k_one_sampling_is_greedy(tiny: ImpRAG) -> None:
    sampled = tiny.generate(PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, seed=3, ignore_eos=True)
    greedy = tiny.generate(PROMPTS, max_new_tokens=8, ignore_eos=True)
    assert [r.token_ids for r in sampled] == [r.token_ids for r in greedy]


def test_sampling_is_reproducible_with_a_seed_and_differs_from_greedy(tiny: ImpRAG) -> None:
    model = tiny
    cfg = DecodeConfig(
        max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7, ignore_eos=True
    )
    first = model.generate(PROMPTS, decode_config=cfg)
    again = model.generate(PROMPTS, decode_config=cfg)
    greedy = model.generate(PROMPTS, max_new_tokens=12, ignore_eos=True)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in greedy]


def test_eos_and_stop_strings_end_generation(tiny: ImpRAG) -> None:
    model = tiny
    full = model.generate(PROMPTS[:1], max_new_tokens=10, ignore_eos=True)[0]
    assert len(full.token_ids) == 10
    # EOS: make the third generated token the EOS id.
    eos = full.token_ids[2]
    model._eos_ids = lambda: [eos]  # type: ignore[method-assign]  # instance-local
    ended = model.generate(PROMPTS[:1], max_new_tokens=10)[0]
    assert ended.finish_reason == "eos"
    assert ended.token_ids == full.token_ids[: full.token_ids.index(eos)]
    del model._eos_ids
    # Stop string: the decoded text of generated tokens 4..5; the result is cut right before it.
    before = model.tokenizer.decode(full.token_ids[:4])
    stop = model.tokenizer.decode(full.token_ids[:6])[len(before) :]
    assert stop.strip(), "the tiny model's tokens 4..5 decode to whitespace; pick other tokens"
    cut = model.generate(PROMPTS[:1], max_new_tokens=10, stop=[stop], ignore_eos=True)[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and before.strip().startswith(cut.text)


def test_eos_ids_come_from_generation_config_and_tokenizer(tiny: ImpRAG) -> None:
    tiny.model.generation_config.eos_token_id = [7, 9]
    assert tiny._eos_ids() == sorted({7, 9, tiny.tokenizer.eos_token_id})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "no prompts given"),
        (dict(prompts=["ok", "  "]), "prompt 1 is empty"),
        (dict(prompts="a string"), "list of strings"),
        (dict(prompts=["ok"], passages=[["a"], ["b"]]), "one list of strings per prompt"),
        (dict(prompts=["ok"], passages=["a"]), "one list of strings per prompt"),
        (dict(prompts=["ok"], passages=[[""]]), "passage 0 is empty"),
        (dict(prompts=["ok"], max_new_tokens=5000), "does not fit the context window"),
        (dict(prompts=["ok"], max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(prompts=["ok"], temperature=2.0, bogus=1), "unknown decoding option"),
        (dict(prompts=["ok"], passages=[None]), "one list of strings per prompt"),
        (dict(prompts=["ok"], passages=[["a"]], k=2), "k applies to retrieval"),
        (dict(prompts=["ok"], index=["not", "a", "retriever"]), "index must be a retriever"),
        (dict(prompts=["ok"], max_new_tokens="5"), "max_new_tokens must be an integer"),
    ],
)
def test_bad_input_is_reported_clearly(tiny: ImpRAG, kwargs: dict, message: str) -> None:
    from imprag import ConfigError

    with pytest.raises((InputError, ConfigError), match=message):
        tiny.generate(**kwargs)


def test_k_must_be_a_positive_integer(tiny: ImpRAG) -> None:
    index = InMemoryRetriever.build(tiny, PASSAGES)
    for bad in (True, 0, 2.0):
        with pytest.raises(InputError, match="k must be a positive integer"):
            tiny.generate(PROMPTS, index=index, k=bad)


def test_over_long_prompts_are_refused_everywhere(tiny: ImpRAG) -> None:
    long_prompt = "Paris is the capital of France. " * 800
    with pytest.raises(InputError, match="does not fit the context window"):
        tiny.embed_queries([long_prompt])
    with pytest.raises(InputError, match="does not fit the context window"):
        tiny.prompt_batch([long_prompt])
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        tiny.embed_passages(PASSAGES, batch_size=0)


def test_k_larger_than_the_index_is_reported(tiny: ImpRAG) -> None:
    index = InMemoryRetriever.build(tiny, PASSAGES[:3])
    with pytest.raises(InputError, match="k=5 passages requested but the index holds only 3"):
        tiny.generate(PROMPTS, index=index, k=5)
    with pytest.raises(InputError, match="either passages"):
        tiny.generate(PROMPTS, index=index, passages=[["a"], ["b"]])


def test_stop_strings_count_after_leading_whitespace(tiny: ImpRAG) -> None:
    """A one-line answer that starts on a new line is kept, then cut at the next newline."""
    from imprag.config import DecodeConfig
    from imprag.model.generation import decode

    tok = tiny.tokenizer
    newline, word = tok.encode("\n", add_special_tokens=False), tok.encode("ab", add_special_tokens=False)
    script = [*newline, *word, *newline, *word]
    vocab = len(tok)

    def logits_for(step: int) -> torch.Tensor:
        out = torch.full((1, vocab), -1e9)
        out[0, script[step]] = 0.0
        return out

    steps = iter(range(1, len(script)))
    result = decode(
        logits_for(0),
        lambda tokens: logits_for(next(steps)),
        DecodeConfig(max_new_tokens=len(script), stop=("\n",)),
        eos_ids=[],
        tokenizer=tok,
        pad_id=0,
    )
    ids, text, reason = result[0]
    assert reason == "stop"
    assert text == tok.decode(word)
    assert ids == [*newline, *word, *newline]


def test_truncation_is_reported_for_given_passages_only(
    tiny: ImpRAG, caplog: pytest.LogCaptureFixture
) -> None:
    """Passages handed to generate are warned about when cut to l_max; passages from an index were embedded
    cut the same way, so reading them again is not news (an evaluation would log it for every batch)."""
    long = " ".join(["word"] * 400)
    assert len(tiny.tokenizer.encode(long)) > tiny.config.reader.l_max
    with caplog.at_level(logging.WARNING, logger="imprag"):
        tiny.generate(PROMPTS[:1], passages=[[long]], max_new_tokens=1)
    assert f"truncated to l_max={tiny.config.reader.l_max}" in caplog.text
    caplog.clear()
    index = InMemoryRetriever.build(tiny, [long, *PASSAGES[:2]])
    with caplog.at_level(logging.WARNING, logger="imprag"):
        out = tiny.generate(PROMPTS[:1], index=index, k=3, max_new_tokens=1)
    assert len(out[0].passages) == 3 and "truncated" not in caplog.text


class Recorder(GenerationObserver):
    """Records every hook call; ends row `cancel_row` after `cancel_after` tokens."""

    def __init__(self, cancel_row: int = -1, cancel_after: int = 0) -> None:
        self.reads: list[list[list[str]]] = []
        self.tokens: dict[int, list[list[int]]] = {}
        self.ends: dict[int, tuple[list[int], str, str]] = {}
        self.cancel_row, self.cancel_after = cancel_row, cancel_after

    def read(self, passages) -> None:
        self.reads.append([[p.text for p in row] for row in passages])

    def token(self, row: int, token_ids: list[int]) -> bool:
        assert row not in self.ends, "a token after the row ended"
        self.tokens.setdefault(row, []).append(list(token_ids))
        return not (row == self.cancel_row and len(token_ids) >= self.cancel_after)

    def finished(self, row: int, token_ids: list[int], text: str, reason: str) -> None:
        assert row not in self.ends, "a row ended twice"
        self.ends[row] = (list(token_ids), text, reason)


def test_an_observer_sees_what_is_read_every_token_and_every_end(tiny: ImpRAG) -> None:
    index = InMemoryRetriever.build(tiny, PASSAGES)
    seen = Recorder()
    results = tiny.generate(PROMPTS, index=index, k=2, max_new_tokens=6, observer=seen, ignore_eos=True)
    assert seen.reads == [[[p.text for p in r.passages] for r in results]]
    for row, res in enumerate(results):
        # one call per token, each with the prefix so far, then one end with the Generation's own values
        assert seen.tokens[row] == [res.token_ids[: i + 1] for i in range(6)]
        assert (
            seen.ends[row]
            == (res.token_ids, res.text, res.finish_reason)
            == (res.token_ids, res.text, "length")
        )


def test_an_observer_ends_one_row_early_and_the_others_do_not_change(tiny: ImpRAG) -> None:
    plain = tiny.generate(PROMPTS, max_new_tokens=8, ignore_eos=True)
    seen = Recorder(cancel_row=0, cancel_after=3)
    results = tiny.generate(PROMPTS, max_new_tokens=8, observer=seen, ignore_eos=True)
    assert results[0].finish_reason == "cancelled" and results[0].token_ids == plain[0].token_ids[:3]
    assert seen.ends[0][2] == "cancelled" and len(seen.tokens[0]) == 3
    assert results[1].token_ids == plain[1].token_ids and results[1].finish_reason == "length"


def test_an_observer_is_told_of_stop_string_and_eos_ends_with_the_final_text(tiny: ImpRAG) -> None:
    full = tiny.generate(PROMPTS[:1], max_new_tokens=10, ignore_eos=True)[0]
    before = tiny.tokenizer.decode(full.token_ids[:4])
    stop = tiny.tokenizer.decode(full.token_ids[:6])[len(before) :]
    seen = Recorder()
    cut = tiny.generate(PROMPTS[:1], max_new_tokens=10, stop=[stop], observer=seen, ignore_eos=True)[0]
    assert cut.finish_reason == "stop" and seen.ends[0] == (cut.token_ids, cut.text, "stop")
    assert len(seen.tokens[0]) == len(cut.token_ids) - 1  # the token completing the stop is not streamed
    eos = full.token_ids[2]
    tiny._eos_ids = lambda: [eos]  # type: ignore[method-assign]  # instance-local
    try:
        seen = Recorder()
        ended = tiny.generate(PROMPTS[:1], max_new_tokens=10, observer=seen)[0]
    finally:
        del tiny._eos_ids
    assert seen.ends[0] == (ended.token_ids, ended.text, "eos") and len(seen.tokens[0]) == 2


def test_seeded_sampling_of_a_row_does_not_depend_on_the_rest_of_the_batch(tiny: ImpRAG) -> None:
    cfg = DecodeConfig(max_new_tokens=10, do_sample=True, temperature=1.5, seed=11, ignore_eos=True)
    both = tiny.generate(PROMPTS, decode_config=cfg)
    for i in range(2):
        assert tiny.generate(PROMPTS[i : i + 1], decode_config=cfg)[0].token_ids == both[i].token_ids
    twice = tiny.generate([PROMPTS[0], PROMPTS[0]], decode_config=cfg)
    assert twice[0].token_ids == twice[1].token_ids == both[0].token_ids
