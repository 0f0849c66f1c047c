"""Token layout for reading: prompts and passages as padded batches with explicit positions, and the
passage key/values that the middle layers attend to.

Layout of one prompt that reads k passages (method page, "Reading"). The prompt always starts at
position k*l_max, so its positions are known before retrieval and never overlap the passages'. The
passages (each truncated to l_max, concatenated into P <= k*l_max tokens) sit either

    "start" (default):  [0, P)                   the paper's layout, a gap of k*l_max - P positions, or
    "flush":            [k*l_max - P, k*l_max)   ending right where the prompt starts (no gap).

The gap matters to the untrained model: a small one (l_max ~ passage length) reads best, a large one
(l_max >> passage length, several passages) worst, none in between (benchmarks/probe_split.py).

The passages run as one sequence with full causal attention through layers 0..t; their keys/values of
layers b..t are kept. Prompts in one batch may read different passages (and different numbers of them):
each row has its own passages, padded on the right, and its own positions.

Shape legend: B batch, T prompt tokens, P passage tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from imprag.config import LayerSplit
from imprag.errors import ImpragError
from imprag.model.backbone import Backbone, KVCache

__all__ = [
    "InputError",
    "TokenBatch",
    "batch_tokens",
    "pack_passages",
    "passage_kv",
    "tokenize",
]


class InputError(ImpragError, ValueError):
    """Bad user input (empty prompt, over-long sequence, ...); the message says what to change."""


@dataclass
class TokenBatch:
    """A padded batch of token sequences with per-token positions."""

    input_ids: Tensor  # (B, T) long
    valid: Tensor  # (B, T) bool, False on padding
    positions: Tensor  # (B, T) long

    @property
    def lengths(self) -> list[int]:
        return self.valid.sum(dim=1).tolist()

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.valid.to(device), self.positions.to(device))


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    what: str,
) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's own special tokens).

    Raises InputError for an empty list, a non-string or a text with no tokens, naming its index.
    """
    if isinstance(texts, str):
        raise InputError(f"{what}s must be a list of strings, got a single string; wrap it in a list")
    if len(texts) == 0:
        raise InputError(f"no {what}s given: pass at least one")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i} is a {type(text).__name__}, expected a string")
        if not text.strip():
            raise InputError(f"{what} {i} is empty; remove it or give it some text")
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


def batch_tokens(
    sequences: Sequence[Sequence[int]],
    offsets: Sequence[int],
    pad_id: int,
    padding_side: Literal["left", "right"] = "right",
) -> TokenBatch:
    """Pad sequences into one batch; row i's tokens get positions offsets[i], offsets[i]+1, ...

    Padded slots get position 0 and valid=False; they are never attended to.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(sequences), width), dtype=torch.bool)
    positions = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, offset) in enumerate(zip(sequences, offsets, strict=True)):
        n = len(seq)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        valid[row, cols] = True
        positions[row, cols] = torch.arange(offset, offset + n)
    return TokenBatch(ids, valid, positions)


def pack_passages(
    per_prompt: Sequence[Sequence[Sequence[int]]], pad_id: int, ends: Sequence[int] | None = None
) -> TokenBatch:
    """Concatenate each prompt's tokenized passages into one right-padded row.

    Positions start at 0, or, with `ends` (the "flush" layout), row i ends at position ends[i] - 1.
    """
    rows = [[tok for passage in passages for tok in passage] for passages in per_prompt]
    if ends is None:
        starts = [0] * len(rows)
    else:
        starts = [end - len(row) for row, end in zip(rows, ends, strict=True)]
        if any(s < 0 for s in starts):
            raise ValueError(f"passages longer than their position budget: starts {starts}")
    return batch_tokens(rows, starts, pad_id, padding_side="right")


def passage_kv(backbone: Backbone, passages: TokenBatch, split: LayerSplit) -> KVCache:
    """Run the packed passages through layers 0..t (full causal attention within each row) and return
    their keys/values for the reading layers b..t. Layer t's MLP is skipped: only its K/V are needed."""
    device = backbone.device
    passages = passages.to(device)
    cache = KVCache.empty(passages.input_ids.shape[0], device, keep=split.middle)
    h = backbone.embed(passages.input_ids)
    step = backbone.step(h, passages.positions, passages.valid, cache=cache)
    h = backbone.run(h, range(0, split.t), step)
    last = backbone.project(split.t, h, step)
    step.record(split.t, last.k, last.v)
    step.commit()
    return cache
