"""`imprag data build`: the benchmark, written deterministically from the installed data packages.

Every item has gold answers and gold evidence passage ids in the corpus (`wiki-summaries`, whose passage id
is the article title). Each candidate item is checked before it is kept: some gold answer (for fact
checking, the true fact behind the claim) must occur in an evidence passage; failures are dropped and
counted. (For answers that are an article title -- describe, entity linking, trivia named like its
answer -- the check holds by construction: every passage starts with its title.) Splits follow each
task's policy (`Task.splits`) by a seeded hash of a group key (the country, the target article, the
FanOutQA question), so all items about one entity share a split and two builds with one seed are
identical. No training item is about an article that a dev/test item uses.

The per-task builders, and what makes each task hard, are in `builders.py`.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from imprag.data.benchmark import MANIFEST, SPLITS, Benchmark, BenchmarkError, Item
from imprag.data.builders import EVAL_BUILDERS, TRAIN_BUILDERS, Candidate, check
from imprag.data.sources import package_versions
from imprag.data.tasks import built_tasks, get_task
from imprag.io import atomic_directory, check_output, writer_lock
from imprag.retrieval.corpus import CorpusHash, Passage, read_corpus

__all__ = ["BuildConfig", "build_benchmark", "build_items", "check_out"]


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    dev_fraction: float = 1 / 3
    """Share of groups in dev for tasks without a train split (the rest is test)."""
    eval_size: int = 300
    """Items in each of dev and test of a task that also has a train split (`describe`); the rest is train."""
    max_items: dict[str, int] = field(
        default_factory=lambda: (
            dict.fromkeys(("denoise", "sentence", "reading", "verify", "title", "yesno"), 3000)
            | {"about": 6000}
        )
    )
    """Caps per task (applied per split, after the seeded shuffle)."""


def _is_benchmark_manifest(path: Path) -> bool:
    """Whether `path` is what `build_benchmark` writes (a mapping with its seed, corpus and task formats)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"seed", "corpus", "formats"} <= manifest.keys()


def _hash01(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_items(
    corpus: dict[str, Passage],
    tasks: Iterable[str],
    config: BuildConfig,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Item], dict[str, dict[str, int]]]:
    """All items of the chosen tasks, split and checked, and per-task counts (kept per split, dropped)."""
    tasks = list(tasks)

    def rng(task: str) -> random.Random:  # one stream per task: a task's items never depend on the others
        return random.Random(f"{config.seed}/{task}")

    # Every evaluation task is built even when not asked for: which articles are held out of training
    # depends on all of them, and must not change with the selection.
    built: dict[str, tuple[list[Item], int]] = {}
    for task, make in EVAL_BUILDERS.items():
        candidates = make(corpus, rng(task))
        kept = [c for c in candidates if check(c, corpus)]
        split_items = _split(task, kept, config)
        if task == "fact-check":
            _balance(split_items, config.seed)
        built[task] = (split_items, len(candidates) - len(kept))
        if progress and task in tasks:
            progress(task)
    # Articles a dev/test item is about (its evidence, an entity-linking sentence's own article) are held out
    # of every training task, so training cannot teach a test answer or context by heart.
    protected = {
        pid
        for split_items, _ in built.values()
        for it in split_items
        if it.split != "train"
        for pid in it.articles
    }
    items: list[Item] = []
    stats: dict[str, dict[str, int]] = {}
    for task in [t for t in EVAL_BUILDERS if t in tasks]:
        split_items, dropped = built[task]
        kept_items = [it for it in split_items if it.split != "train" or not set(it.evidence) & protected]
        items += kept_items
        stats[task] = _counts(kept_items, dropped=dropped, held_out=len(split_items) - len(kept_items))
    free = [p for pid, p in sorted(corpus.items()) if pid not in protected]
    for task in [t for t in TRAIN_BUILDERS if t in tasks]:
        stream = rng(task)
        made = TRAIN_BUILDERS[task](free, stream)
        candidates = [c for c in made if c is not None]
        kept = [c for c in candidates if check(c, corpus)]
        kept.sort(key=lambda c: _hash01(config.seed, f"{task}\x00{c.key}"))
        split_items = [_item(c, "train") for c in kept[: config.max_items.get(task, len(kept))]]
        items += split_items
        stats[task] = _counts(split_items, dropped=len(candidates) - len(kept))
        if progress:
            progress(task)
    return items, stats


def _split(task: str, kept: list[Candidate], config: BuildConfig) -> list[Item]:
    """Assign splits by the task's policy; the order (and dev/test membership) is a seeded hash of the
    item's group, so one entity never straddles two splits."""
    order = sorted(kept, key=lambda c: (_hash01(config.seed, f"{task}\x00{c.group}"), c.key))
    policy = get_task(task).splits
    if policy in ("test", "train"):
        return [_item(c, policy) for c in order]
    if policy == "train-dev-test":  # fixed-size dev and test, the rest is train
        n = config.eval_size
        return [_item(c, "dev" if i < n else "test" if i < 2 * n else "train") for i, c in enumerate(order)]
    return [
        _item(c, "dev" if _hash01(config.seed, f"group\x00{c.group}") < config.dev_fraction else "test")
        for c in order
    ]


def _balance(items: list[Item], seed: int) -> None:
    """Make every other fact-check claim of each split False (in seeded order): balanced labels."""
    for split in SPLITS:
        rows = sorted(
            (it for it in items if it.split == split), key=lambda it: _hash01(seed, f"tf\x00{it.id}")
        )
        for it in rows[1::2]:
            it.fields["statement"] = it.meta["false_claim"]
            it.answers = ["False"]


def _item(c: Candidate, split: str) -> Item:
    return Item(
        id=f"{c.task}/{c.key}", task=c.task, split=split, fields=c.fields, answers=c.answers,
        evidence=c.evidence, oracle_query=c.oracle_query, meta=c.meta,
    )  # fmt: skip


def _counts(items: list[Item], dropped: int, held_out: int = 0) -> dict[str, int]:
    counts = collections.Counter(it.split for it in items)
    return {**{s: counts.get(s, 0) for s in SPLITS}, "dropped": dropped, "held_out": held_out}


def build_benchmark(
    out: str | Path,
    tasks: Iterable[str] | None = None,
    config: BuildConfig | None = None,
    corpus: str = "wiki-summaries",
    overwrite: bool = False,
) -> Benchmark:
    """Build the benchmark into directory `out` (atomically: a crash leaves no half-written benchmark).
    `tasks` defaults to every task the builder makes; an imported task (nq, fever, ...) is refused: its
    items come from the user's files (`imprag data import`)."""
    config = config or BuildConfig()
    out = Path(out)
    tasks = list(tasks) if tasks is not None else built_tasks()
    for task in tasks:
        if get_task(task).splits == "imported":  # get_task: unknown names are errors before any work
            raise BenchmarkError(
                f"task {task!r} is not built from the data packages: its items come from the dataset's "
                f"own files; import them with `imprag data import FILE ... --out DIR`"
            )
    check_out(out, overwrite)  # before the lock, which creates the folder
    with writer_lock(out, "imprag data build"):  # one writer at a time: the swap of two would collide
        check_out(out, overwrite)  # again, now that no one else is writing it
        return _build_locked(out, tasks, config, corpus)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds a benchmark (unless `overwrite`) or anything that is not one.
    `imprag data import` writes its benchmarks under the same rule."""
    if (out / MANIFEST).exists() and not _is_benchmark_manifest(out / MANIFEST):
        raise BenchmarkError(
            f"{out / MANIFEST} is not a benchmark's manifest (`imprag eval --out` writes results under that "
            "name), so the folder is not an earlier benchmark: nothing was written; choose another --out"
        )
    if (out / MANIFEST).exists() and not overwrite:
        raise BenchmarkError(f"{out} already holds a benchmark; pass overwrite=True (--overwrite) to rebuild")
    check_output(out, replaces=MANIFEST)  # a folder of other files: refused before the build, never wiped


def _build_locked(out: Path, tasks: list[str], config: BuildConfig, corpus: str) -> Benchmark:
    passages = list(read_corpus(corpus))
    by_id = {p.id: p for p in passages}
    hasher = CorpusHash()
    for p in passages:
        hasher.add(p.id, p.digest)
    with tqdm(total=len(tasks), desc="building tasks", unit="task") as bar:

        def step(task: str) -> None:
            bar.set_postfix_str(task)
            bar.update(1)

        items, stats = build_items(by_id, tasks, config, progress=step)
    with atomic_directory(out, replaces=MANIFEST) as tmp:
        for split in SPLITS:
            for task in tasks:
                rows = [it.to_json() for it in items if it.task == task and it.split == split]
                if rows:
                    (tmp / split).mkdir(exist_ok=True)
                    (tmp / split / f"{task}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        manifest = {
            "format": 1,
            "seed": config.seed,
            "config": asdict(config),
            "corpus": {"name": corpus, "hash": hasher.value, "count": len(passages)},
            "counts": {t: {s: stats[t][s] for s in SPLITS} for t in tasks},
            "dropped": {t: stats[t]["dropped"] for t in tasks},
            "held_out": {t: stats[t]["held_out"] for t in tasks},
            "formats": {t: get_task(t).format for t in tasks},
            "packages": package_versions(),
            "imprag": importlib.metadata.version("imprag"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Benchmark.load(out)
