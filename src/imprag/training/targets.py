"""Retrieval targets for the warmup: pseudo labels from a teacher retriever (method page, "Training").

For each training item the teacher (MiniLM by default, or BM25) ranks the passage store with the item's
prompt as its query. Positives are the teacher's top `positives` (paper: 5); hard negatives are `negatives`
passages sampled from the teacher's ranks `negative_ranks` (paper: 10-50), never one of the item's gold
evidence passages (a gold article ranked 20th is not a negative) [D]. With `top_m`, the label also keeps the
teacher's top-m passages and their scores: the dense teacher signal (`objective.teacher_kl_weight`), a KL
from the teacher's score distribution over them to the model's.

Labels are cached on disk, keyed by teacher and corpus hash:

    OUT/{teacher}-{corpus_hash}/{task}-{split}.jsonl   {"id", "positives", "negatives", "top", "scores"}
    OUT/{teacher}-{corpus_hash}/{task}-{split}.json    settings and the items' ids hash (written last)

A cached file is reused only when its settings and items match; otherwise it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from imprag.data.benchmark import Item
from imprag.io import atomic_write_text
from imprag.retrieval.memory import TextRetriever

__all__ = ["PseudoLabel", "PseudoLabelConfig", "cached_pseudo_labels", "pseudo_label"]


@dataclass(frozen=True)
class PseudoLabelConfig:
    positives: int = 5
    """Teacher's top-n passages taken as positives."""
    negatives: int = 4
    """Hard negatives sampled per item (the method page: a few, < 10)."""
    negative_ranks: tuple[int, int] = (10, 50)
    """1-based, inclusive teacher ranks the hard negatives are sampled from."""
    query: Literal["prompt", "oracle"] = "prompt"
    """The teacher's query: the item's whole prompt (as RA-IT retrieves) or its hand-built ideal query."""
    top_m: int = 0
    """Also keep the teacher's top-m passages with their scores (0: none)."""
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        first, last = self.negative_ranks
        if self.top_m < 0:
            raise ValueError("top_m must be >= 0")
        if self.positives < 1 or self.negatives < 0:
            raise ValueError("positives must be >= 1 and negatives >= 0")
        if not (self.positives < first <= last):
            raise ValueError(
                f"negative_ranks {self.negative_ranks} must lie below the {self.positives} positives"
            )
        if self.negatives > last - first + 1:
            raise ValueError(f"{self.negatives} negatives cannot be sampled from ranks {first}-{last}")


@dataclass(frozen=True)
class PseudoLabel:
    id: str
    positives: list[str]
    """Passage ids, teacher order."""
    negatives: list[str]
    top: list[str] = field(default_factory=list)
    """The teacher's top-m passage ids, best first (`PseudoLabelConfig.top_m`)."""
    scores: list[float] = field(default_factory=list)
    """The teacher's scores of `top` (cosine for MiniLM, BM25 scores for BM25)."""


def pseudo_label(
    items: Sequence[Item],
    teacher: TextRetriever,
    config: PseudoLabelConfig | None = None,
    progress: bool = True,
) -> list[PseudoLabel]:
    """Positives and hard negatives for every item, in item order (deterministic for a seed)."""
    config = config or PseudoLabelConfig()
    first, last = config.negative_ranks
    depth = max(last, config.top_m)
    depth = min(depth, len(teacher)) if hasattr(teacher, "__len__") else depth  # a corpus smaller than 50
    out: list[PseudoLabel] = []
    batches = range(0, len(items), config.batch_size)
    for start in tqdm(batches, desc="pseudo-labels", unit="batch", disable=not progress):
        batch = items[start : start + config.batch_size]
        queries = [it.oracle_query if config.query == "oracle" else it.prompt for it in batch]
        for item, ranked in zip(batch, teacher.retrieve(queries, depth), strict=True):
            ids = [p.id for p in ranked]
            pool = [pid for pid in ids[first - 1 : last] if pid not in item.evidence]
            rng = random.Random(f"{config.seed}/{item.id}")  # per item: labels do not depend on batching
            negatives = rng.sample(pool, min(config.negatives, len(pool)))
            top = ranked[: config.top_m]
            out.append(
                PseudoLabel(
                    item.id, ids[: config.positives], negatives, [p.id for p in top],
                    [round(float(p.score), 6) for p in top],
                )
            )  # fmt: skip
    return out


def cached_pseudo_labels(
    out: str | Path,
    teacher_name: str,
    corpus_hash: str,
    name: str,
    items: Sequence[Item],
    teacher: TextRetriever,
    config: PseudoLabelConfig | None = None,
    progress: bool = True,
) -> tuple[list[PseudoLabel], bool]:
    """Labels for `items` from the cache under `out` when they match, else computed and cached.
    `name` names the item set (e.g. "describe-train"). Returns (labels, whether they came from the cache)."""
    config = config or PseudoLabelConfig()
    folder = Path(out) / f"{teacher_name}-{corpus_hash}"
    meta_path, data_path = folder / f"{name}.json", folder / f"{name}.jsonl"
    meta: dict[str, Any] = {
        "teacher": teacher_name,
        "corpus_hash": corpus_hash,
        "config": asdict(config) | {"negative_ranks": list(config.negative_ranks)},
        "items": len(items),
        "items_hash": hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()[:32],
    }
    try:
        if json.loads(meta_path.read_text(encoding="utf-8")) == meta:
            with data_path.open(encoding="utf-8") as f:
                labels = [PseudoLabel(**json.loads(line)) for line in f if line.strip()]
            if [label.id for label in labels] == [it.id for it in items]:
                return labels, True
    except (OSError, ValueError, TypeError):
        pass  # no cache, or a damaged one: recompute
    labels = pseudo_label(items, teacher, config, progress)
    meta_path.unlink(missing_ok=True)  # the data file changes before its settings are written again
    atomic_write_text(data_path, "".join(json.dumps(asdict(label)) + "\n" for label in labels))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return labels, False
