"""The one thread that runs the model, and the dynamic batching that feeds it.

The model is never run from two threads at once: every request becomes a job on one queue, and one worker
thread runs them. It takes the first job, waits up to `batch_wait_ms` for more (up to `max_batch` prompts),
then groups the generation jobs it took by what one `ImpRAG.generate` call must share -- where the passages
come from (the index with the same k, given ones, or none) and the decoding settings -- and runs each group
as one batched prefill and decode. Other work (embeddings, retrieval) runs in arrival order between
batches. A job joins a batch only at its start: rows do not enter a decode that is already running.

Results travel back to the event loop as events on the request's `Channel`, tagged with the prompt's
index: ("delta", text) as tokens are chosen (streaming), ("end", Generation) the moment that prompt's row
ends, or ("error", exception) for every row of a batch that failed. A client that goes away sets the channel's
`cancelled` flag, and its rows end at the next token, freeing the batch (`GenerationObserver.token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imprag.config import DecodeConfig
from imprag.model.generation import FinishReason, Generation, GenerationObserver, RetrievedPassage
from imprag.model.imprag import ImpRAG
from imprag.model.retriever import Retriever
from imprag.serve.config import ServeConfig
from imprag.serve.stream import IncrementalText

log = logging.getLogger("imprag.serve")

_STOP = object()


class Channel:
    """Events from the worker thread to one request's coroutine (thread-safe on the sending side)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.cancelled = threading.Event()

    def send(self, *event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class GenerateJob:
    """One prompt to answer. `index` tags its events (the choice number of its request)."""

    prompt: str
    decode: DecodeConfig
    k: int
    """Passages to retrieve from the index; 0 = closed book. Ignored when `passages` are given."""
    passages: tuple[str, ...] | None
    channel: Channel
    index: int = 0
    stream: bool = False
    """Send ("delta", text) events as tokens are chosen (else only ("end", ...))."""
    text: IncrementalText | None = field(default=None, repr=False)

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one generate call."""
        if self.passages is not None:
            return ("given", 0, self.decode)
        return ("index" if self.k else "none", self.k, self.decode)


@dataclass
class CallJob:
    """Any other work for the model's thread: `fn()`'s result (or its exception) goes to the channel."""

    fn: Callable[[], Any]
    channel: Channel


class _Observer(GenerationObserver):
    """Sends each row's text deltas as its tokens are chosen, and ends each row's request the moment that
    row ends -- not when the whole batch does."""

    def __init__(self, jobs: Sequence[GenerateJob]) -> None:
        self.jobs = jobs
        self.passages: list[list[RetrievedPassage]] = [[] for _ in jobs]

    def read(self, passages: list[list[RetrievedPassage]]) -> None:
        self.passages = passages

    def token(self, row: int, token_ids: list[int]) -> bool:
        job = self.jobs[row]
        if job.channel.cancelled.is_set():
            return False
        if job.stream and job.text is not None:
            delta = job.text.update(token_ids)
            if delta:
                job.channel.send(job.index, "delta", delta)
        return True

    def finished(self, row: int, token_ids: list[int], text: str, reason: FinishReason) -> None:
        job = self.jobs[row]
        if job.stream and job.text is not None and reason != "cancelled":
            try:
                rest = job.text.finish(text)
            except ValueError as err:  # cannot take back what was sent; say so rather than send wrong text
                log.warning("stream of %r: %s", job.prompt[:40], err)
                rest = ""
            if rest:
                job.channel.send(job.index, "delta", rest)
        result = Generation(job.prompt, text, self.passages[row], list(token_ids), reason)
        job.channel.send(job.index, "end", result)


class Engine:
    """Owns the model, the index and the baselines; runs all of their work in one worker thread."""

    def __init__(
        self,
        model: ImpRAG,
        index: Retriever | None,
        config: ServeConfig,
        baselines: dict[str, Any] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.index, self.config = model, index, config
        self.baselines = dict(baselines or {})
        self.on_batch = on_batch or (lambda size: None)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imprag-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- submitting -----------------------------------------------------------------------------------

    def submit(self, job: GenerateJob | CallJob) -> None:
        if isinstance(job, GenerateJob) and job.stream:
            job.text = IncrementalText(self.model.tokenizer, job.decode.stop)
        self._queue.put(job)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` in the model's thread; its result, or its exception raised here."""
        channel = Channel(asyncio.get_running_loop())
        self.submit(CallJob(fn, channel))
        kind, value = await channel.events.get()
        if kind == "error":
            raise value
        return value

    # -- the worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.config.threads:
            # OpenMP keeps a thread team per calling thread, and libgomp stops spin-waiting (every op gets
            # slower, 2.5x for a batch-1 linear layer here) once its teams hold more threads than there are
            # cores. `imprag serve` loads the model with one thread, so this thread's team is the only one.
            torch.set_num_threads(self.config.threads)
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            taken = [first]
            if isinstance(first, GenerateJob):
                deadline = time.monotonic() + self.config.batch_wait_ms / 1000
                prompts = 1
                while prompts < self.config.max_batch:
                    try:
                        more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    taken.append(more)
                    prompts += isinstance(more, GenerateJob)
            for job in taken:
                if isinstance(job, CallJob):
                    self._call(job)
            groups: dict[tuple[Any, ...], list[GenerateJob]] = {}
            for job in taken:
                if isinstance(job, GenerateJob) and not job.channel.cancelled.is_set():
                    groups.setdefault(job.batch_key(), []).append(job)
            for jobs in groups.values():  # the window took at most max_batch prompts
                self._generate(jobs)

    def _call(self, job: CallJob) -> None:
        try:
            result = job.fn()
        except Exception as err:  # handed to the request, which answers for it
            job.channel.send("error", err)
        else:
            job.channel.send("ok", result)

    def _generate(self, jobs: list[GenerateJob]) -> None:
        first = jobs[0]
        prompts = [j.prompt for j in jobs]
        kwargs: dict[str, Any] = {}
        if first.passages is not None:
            kwargs["passages"] = [list(j.passages or ()) for j in jobs]
        elif first.k:
            kwargs.update(index=self.index, k=first.k)
        self.on_batch(len(jobs))
        try:  # each row's request hears of its end from the observer, as soon as it ends
            self.model.generate(prompts, decode_config=first.decode, observer=_Observer(jobs), **kwargs)
        except Exception as err:  # every request of the batch hears of it
            log.exception("generation failed for a batch of %d", len(jobs))
            for job in jobs:
                job.channel.send(job.index, "error", err)
