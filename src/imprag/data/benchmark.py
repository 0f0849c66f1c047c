"""A built benchmark on disk, and its items.

    DIR/benchmark.json         written last: seed, corpus name and hash, counts per task and split, dropped
                               counts, data package versions, build settings (an imported benchmark:
                               its source files and the items without evidence in the corpus instead)
    DIR/{split}/{task}.jsonl   one Item per line

Written by `imprag data build` (`build.py`) or `imprag data import` (`importing.py`), in the same layout.

Read with `Benchmark.load(DIR)`; `items(task, split)` gives the items (an unknown task or an empty split
is an error that lists what exists).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imprag.data.tasks import TASKS, get_task
from imprag.errors import ImpragError

__all__ = ["SPLITS", "Benchmark", "BenchmarkError", "Item"]

SPLITS = ("train", "dev", "test")
MANIFEST = "benchmark.json"


class BenchmarkError(ImpragError, ValueError):
    """A benchmark directory is missing, damaged, or lacks the requested task/split."""


@dataclass
class Item:
    """One benchmark example."""

    id: str
    task: str
    split: str
    fields: dict[str, str]
    """Values for the task's template (question, entity/relation, statement, context, ...)."""
    answers: list[str]
    """Gold answers; a prediction scores against the best of them."""
    evidence: list[str]
    """Corpus passage ids that hold the answer (gold articles)."""
    oracle_query: str = ""
    """A hand-built ideal text query for this item (the `minilm-oracle` reference)."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return get_task(self.task).prompt(self.fields)

    @property
    def articles(self) -> list[str]:
        """The corpus ids this item is about: its evidence, and an entity-linking sentence's own article.
        Those of dev/test items are kept out of training."""
        return [*self.evidence, *([self.meta["source"]] if "source" in self.meta else [])]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "prompt": self.prompt}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Item:
        row = json.loads(line)
        row.pop("prompt", None)
        return cls(**row)


class Benchmark:
    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def load(cls, directory: str | Path) -> Benchmark:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise BenchmarkError(
                f"{directory} is not a built benchmark (no {MANIFEST}); build it with "
                f"`imprag data build --out {directory}`"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            manifest["counts"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise BenchmarkError(f"{path} is damaged ({e}); rebuild with `imprag data build`") from None
        return cls(directory, manifest)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]

    @property
    def tasks(self) -> list[str]:
        return list(self.counts)

    def items(self, task: str, split: str) -> list[Item]:
        if task not in TASKS:
            raise BenchmarkError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        if task not in self.counts and get_task(task).splits == "imported":
            raise BenchmarkError(
                f"task {task!r} was not imported into {self.directory}; it has: {', '.join(self.tasks)} "
                "(import the task's files with `imprag data import FILE ... --out DIR`)"
            )
        if task not in self.counts:
            raise BenchmarkError(
                f"task {task!r} was not built into {self.directory}; it has: {', '.join(self.tasks)} (a "
                f"benchmark built before the task existed: `imprag data build --out {self.directory} "
                "--overwrite` rebuilds it with every task)"
            )
        if split not in SPLITS:
            raise BenchmarkError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if not self.counts[task].get(split):
            have = [s for s in SPLITS if self.counts[task].get(s)]
            raise BenchmarkError(f"task {task!r} has no {split} items (it has: {', '.join(have) or 'none'})")
        path = self.directory / split / f"{task}.jsonl"
        try:
            with path.open(encoding="utf-8") as f:
                items = [Item.from_json(line) for line in f if line.strip()]
        except FileNotFoundError:
            raise BenchmarkError(f"{path} is missing; rebuild with `imprag data build`") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise BenchmarkError(f"{path} is damaged ({e}); rebuild with `imprag data build`") from e
        if len(items) != self.counts[task][split]:
            raise BenchmarkError(
                f"{path} holds {len(items)} items but {MANIFEST} says {self.counts[task][split]}; rebuild"
            )
        return items
