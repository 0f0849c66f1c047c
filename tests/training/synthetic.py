"""Synthetic training inputs shared by the training tests: a small passage store and examples over it."""

from __future__ import annotations

from pathlib import Path

from imprag.retrieval.corpus import Passage
from imprag.retrieval.store import PassageStore
from imprag.training.data import Example


def passage_store(path: Path, count: int) -> PassageStore:
    passages = [
        Passage(f"p{i}", f"Title {i}", f"Text number {i} about things {i * 7}.") for i in range(count)
    ]
    return PassageStore.build(path, passages)


def examples(n_ret: int, n_ins: int) -> dict[str, list[Example]]:
    """Retrieval example i: positives rows (i, i+1), hard negative i+10, evidence row i."""
    return {
        "retrieval": [
            Example(f"r{i}", "retrieval", f"Q: what is {i}? A:", f" thing {i}\n", (i, i + 1), (i + 10,), (i,))
            for i in range(n_ret)
        ],
        "instruction": [
            Example(f"n{i}", "instruction", f"Recover {i} A:", f" ok {i}\n") for i in range(n_ins)
        ],
    }
