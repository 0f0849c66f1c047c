"""The engine on its own: a row's request ends the moment its row ends, not when its batch does."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tiny_server import OTHER, PROMPT, tiny_parts

from imprag.config import DecodeConfig
from imprag.serve import ServeConfig
from imprag.serve.engine import Channel, Engine, GenerateJob

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_row_that_ends_early_is_answered_before_its_batch_ends(tokenizer, tmp_path) -> None:
    model, index, _ = tiny_parts(tokenizer, tmp_path)
    full = model.generate([PROMPT, OTHER], max_new_tokens=20, ignore_eos=True)
    decode, other = model.tokenizer.decode, model.tokenizer.decode(full[1].token_ids)
    cuts = [  # (tokens up to the stop, the stop): a token of row 0's text that row 1's text lacks
        (n, decode(full[0].token_ids[:n])[len(decode(full[0].token_ids[: n - 1])) :]) for n in range(2, 15)
    ]
    n_stop, stop = next((n, t) for n, t in cuts if t.strip() and t not in other and "\ufffd" not in t)
    cfg = DecodeConfig(max_new_tokens=20, stop=(stop,), ignore_eos=True)
    engine = Engine(model, index, ServeConfig(batch_wait_ms=200))
    sizes: list[int] = []
    engine.on_batch = sizes.append

    async def run() -> list[tuple]:
        channel = Channel(asyncio.get_running_loop())
        for i, prompt in enumerate((PROMPT, OTHER)):
            engine.submit(GenerateJob(prompt, cfg, 0, None, channel, index=i, stream=True))
        events = []
        while sum(e[1] == "end" for e in events) < 2:
            events.append(await channel.events.get())
        return events

    engine.start()
    try:
        events = asyncio.run(run())
    finally:
        engine.stop()
    assert sizes == [2]  # one batch of both
    ends = [(e[0], e[2]) for e in events if e[1] == "end"]
    assert [i for i, _ in ends] == [0, 1]  # the short row first
    first, second = ends[0][1], ends[1][1]
    assert first.finish_reason == "stop" and len(first.token_ids) <= n_stop
    assert second.finish_reason == "length" and second.token_ids == full[1].token_ids
    deltas = [e for e in events if e[1] == "delta" and e[0] == 1]
    position = events.index(next(e for e in events if e[1] == "end"))
    assert any(events.index(d) > position for d in deltas)  # row 1 went on streaming after row 0 ended
    assert "".join(e[2] for e in events if e[1] == "delta" and e[0] == 0) == first.text


@pytest.mark.parametrize("threads", [1, 2])
def test_the_worker_runs_with_the_configured_thread_count(tokenizer, tmp_path, threads) -> None:
    """`imprag serve` loads the model with one thread and gives the worker the machine's count, so one
    OpenMP team exists (two on 2 cores made every op 2.5x slower): the count is the worker's own."""
    model, index, _ = tiny_parts(tokenizer, tmp_path)
    engine = Engine(model, index, ServeConfig(threads=threads))

    async def ask() -> int:
        return await engine.call(torch.get_num_threads)

    engine.start()
    try:
        assert asyncio.run(ask()) == threads
    finally:
        engine.stop()
