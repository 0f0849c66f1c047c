"""Encode a passage store with the model's bottom layers (layers 0..b) into shard files.

- Shard i holds the passages with rows in [i*S, (i+1)*S): their rows and E_p vectors, one `.npy` pair
  written atomically (temporary name, then rename). A finished shard is never redone, so a build that was
  killed continues where it stopped, and the result equals an uninterrupted build.
- Rank r of N processes encodes the shards i with i % N == r (torchrun); shards are independent.
- Within a shard, `embed_passages` sorts passages by length so batches carry little padding; memory holds
  one shard of text and vectors at a time, whatever the corpus size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imprag.model.imprag import ImpRAG
from imprag.retrieval.store import PassageStore

__all__ = ["encode_shards", "read_shards", "shard_count", "shards_done"]

log = logging.getLogger(__name__)


def shard_count(store: PassageStore, shard_size: int) -> int:
    return math.ceil((store.max_row + 1) / shard_size)


def _paths(directory: Path, i: int) -> tuple[Path, Path]:
    return directory / f"shard-{i:06d}.rows.npy", directory / f"shard-{i:06d}.vectors.npy"


def shards_done(directory: Path, count: int) -> list[int]:
    """Indices of the shards whose files are complete (both present: vectors are renamed last)."""
    return [i for i in range(count) if all(p.is_file() for p in _paths(directory, i))]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_shards(
    model: ImpRAG,
    store: PassageStore,
    directory: Path,
    shard_size: int,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> int:
    """Encode this rank's unfinished shards; returns the number of passages encoded now."""
    directory.mkdir(parents=True, exist_ok=True)
    count = shard_count(store, shard_size)
    done = set(shards_done(directory, count))
    todo = [i for i in range(count) if i % world == rank and i not in done]
    total = sum(store.count_rows(i * shard_size, (i + 1) * shard_size) for i in todo)
    if done and rank == 0:
        log.info("resuming: %d of %d shards already encoded", len(done), count)
    bar = tqdm(
        total=total,
        unit="passage",
        desc=f"encoding (rank {rank})" if world > 1 else "encoding",
        disable=not progress,
        position=rank,
        dynamic_ncols=True,
    )
    encoded = 0
    with bar:
        for i in todo:
            rows = [r for chunk in store.iter_rows(i * shard_size, (i + 1) * shard_size) for r in chunk]
            if not rows:
                continue
            passages = store.get(rows)
            vectors = model.embed_passages([p.content for p in passages], batch_size=batch_size)
            rows_path, vectors_path = _paths(directory, i)
            _save_atomic(rows_path, np.asarray(rows, dtype=np.int64))
            _save_atomic(vectors_path, vectors.numpy().astype(np.float32))  # written last: marks done
            encoded += len(rows)
            bar.update(len(rows))
    return encoded


def read_shards(directory: Path, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, vectors) of every shard in order; vectors are memory-mapped, not loaded whole."""
    for i in range(count):
        rows_path, vectors_path = _paths(directory, i)
        if not vectors_path.is_file():
            continue  # an empty row range (after deletions) has no shard
        yield np.load(rows_path), np.load(vectors_path, mmap_mode="r")
