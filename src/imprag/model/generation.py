"""The decode loop and the result types of `ImpRAG.generate`.

The loop is model-agnostic: it gets the logits of the prompt's last token and a function that feeds one
new token per row and returns the next logits (the facade's closure runs that token through all layers
against the cached prompt and passage key/values, so nothing is recomputed per token). Filtering for
sampling reuses transformers' logits warpers. A `GenerationObserver` sees what was read, every token as it
is chosen and every row as it ends, and can end a row early (a streaming server whose client went away).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from imprag.config import DecodeConfig

__all__ = ["Generation", "GenerationObserver", "RetrievedPassage", "decode"]

FinishReason = Literal["eos", "stop", "length", "cancelled"]


@dataclass(frozen=True)
class RetrievedPassage:
    """A passage that was read or retrieved. Given explicitly, it has only `text`."""

    text: str
    score: float | None = None
    """Retrieval score (E_q . E_p for the implicit query); None for given passages."""
    id: str | None = None
    """The corpus' own id of the passage."""
    title: str = ""
    row: int | None = None
    """The integer id inside the retriever's vector index."""

    @property
    def content(self) -> str:
        """What the model reads: the title on its own line, then the text (as when it was embedded)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass
class Generation:
    """What `ImpRAG.generate` returns per prompt."""

    prompt: str
    text: str
    """The generated text, cut at the first stop string, without special tokens, stripped."""
    passages: list[RetrievedPassage] = field(default_factory=list)
    """The passages the middle layers read, in reading order (retrieval rank)."""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = "length"


class GenerationObserver:
    """Hooks into `ImpRAG.generate` while it runs; every method is a no-op here, override what you need.

    Rows are the prompts' positions in the call. `token` runs after each chosen token (not the EOS) and
    returning False ends that row now with finish reason "cancelled" (its slot is fed padding, like a row
    that has ended, until the whole batch is done); `finished` runs once per row, in the step that row
    ends, with the same text and reason its `Generation` will carry."""

    def read(self, passages: list[list[RetrievedPassage]]) -> None:
        """What each row reads, once, after retrieval and before the first token."""

    def token(self, row: int, token_ids: list[int]) -> bool:
        """`row` chose a token; token_ids is everything it has generated so far."""
        return True

    def finished(self, row: int, token_ids: list[int], text: str, reason: FinishReason) -> None:
        """`row` ended: its tokens, its final text (cut at a stop string, stripped) and why."""


def decode(
    first_logits: Tensor,
    next_logits: Callable[[Tensor], Tensor],
    cfg: DecodeConfig,
    eos_ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    pad_id: int,
    observer: GenerationObserver | None = None,
) -> list[tuple[list[int], str, FinishReason]]:
    """Greedy or sampled decoding; returns (token ids, text, finish reason) per row.

    first_logits: (B, V) logits after the prompt. next_logits(tokens (B, 1)) -> (B, V) for the next step.
    Finished rows keep being fed `pad_id` (their outputs are ignored) so the batch stays rectangular.
    Sampling with a seed draws each row from a generator of its own seeded with it, so a row's tokens do
    not depend on which other rows share the batch.
    """
    batch = first_logits.shape[0]
    warpers = LogitsProcessorList()
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            warpers.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            warpers.append(TopPLogitsWarper(cfg.top_p))
    generators = None
    if cfg.do_sample and cfg.seed is not None:
        generators = [torch.Generator(device=first_logits.device).manual_seed(cfg.seed) for _ in range(batch)]
    observer = observer or GenerationObserver()

    eos_ids = [] if cfg.ignore_eos else sorted(set(eos_ids))
    eos = torch.tensor(eos_ids, dtype=torch.long, device=first_logits.device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    texts = [""] * batch
    reasons: list[FinishReason | None] = [None] * batch

    def end(row: int, reason: FinishReason) -> None:
        reasons[row] = reason
        if reason != "stop":
            texts[row] = tokenizer.decode(tokens[row], skip_special_tokens=True)
        texts[row] = texts[row].strip()
        observer.finished(row, tokens[row], texts[row], reason)

    logits = first_logits
    for step in range(cfg.max_new_tokens):
        chosen = _choose(logits.float(), tokens, warpers, cfg.do_sample, generators)  # (B,)
        for row in range(batch):
            if reasons[row] is not None:
                continue
            tok = int(chosen[row])
            if eos.numel() and bool((eos == tok).any()):
                end(row, "eos")
                continue
            tokens[row].append(tok)
            if cfg.stop:
                text = tokenizer.decode(tokens[row], skip_special_tokens=True)
                text = text[len(text) - len(text.lstrip()) :]  # stops count after leading whitespace
                cut = _first_stop(text, cfg.stop)
                if cut is not None:
                    texts[row] = text[:cut]
                    end(row, "stop")
                    continue
            if not observer.token(row, tokens[row]):
                end(row, "cancelled")
            elif step == cfg.max_new_tokens - 1:
                end(row, "length")
        if all(r is not None for r in reasons) or step == cfg.max_new_tokens - 1:
            break
        feed = torch.tensor(
            [tokens[r][-1] if reasons[r] is None else pad_id for r in range(batch)],
            dtype=torch.long,
            device=first_logits.device,
        )
        logits = next_logits(feed[:, None])
    return [(tokens[row], texts[row], cast(FinishReason, reasons[row])) for row in range(batch)]


def _choose(
    logits: Tensor,
    history: list[list[int]],
    warpers: LogitsProcessorList,
    do_sample: bool,
    generators: list[torch.Generator] | None,
) -> Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    width = max(1, max(len(h) for h in history))
    ids = torch.zeros(len(history), width, dtype=torch.long, device=logits.device)
    for row, h in enumerate(history):
        if h:
            ids[row, -len(h) :] = torch.tensor(h, device=logits.device)
    probs = torch.softmax(warpers(ids, logits), dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    rows = zip(probs, generators, strict=True)
    return torch.cat([torch.multinomial(p[None], 1, generator=g)[0] for p, g in rows])


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
