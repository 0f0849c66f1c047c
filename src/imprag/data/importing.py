"""`imprag data import`: the paper's task files, read into a benchmark directory `Benchmark.load` accepts.

Three streaming passes, so neither the task files (millions of lines) nor the corpus (33M passages) is
ever held whole:
  1. every task file, line by line: each line is checked (the first bad one stops the import before the
     corpus is read), lines and answerless lines are counted, ids are checked unique per task and split,
     and the pages the provenance cites are collected (`EvidenceMap.want`);
  2. the corpus, once: the passages of cited pages are kept, every passage is hashed (`EvidenceMap.scan`);
  3. every task file again: each item gets its evidence (`EvidenceMap.resolve`) and is appended to
     `{split}/{task}.jsonl` of a temporary directory that replaces `out` in one step when all is written.
Memory: 8 bytes a line for the uniqueness check (a 64-bit hash of each id of one task and split, sorted at
the end of the pass; only on a collision are the files read again to name the repeating line). The cited
page keys and their passages go to a temporary SQLite file (`EvidenceMap`). Nothing else grows with the
files (`benchmarks/bench_import.py` measures peak RSS at 100k and 1M lines).

Splits are the files' own (`Task.splits == "imported"`): nothing is re-split, sampled or held out.
Items whose provenance is not in the corpus, and items of formats without provenance (NQ-open, FlashRAG),
are kept with empty evidence -- they count for EM and answer recall; gold-article recall cannot be
measured for them -- and are counted in the manifest's `no_evidence`.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import json
from array import array
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from imprag.data.benchmark import MANIFEST, SPLITS, Benchmark
from imprag.data.build import check_out
from imprag.data.evidence import CorpusSpec, EvidenceMap
from imprag.data.importers import TaskFile, TaskFileError, open_task_file, read_task_file
from imprag.data.tasks import get_task
from imprag.io import atomic_directory, writer_lock

__all__ = ["ImportConfig", "import_benchmark"]

EVIDENCE_NOTE = (
    "evidence: KILT provenance mapped to the corpus' passage ids (by wikipedia_id, else by title; KILT "
    "paragraph ids narrow a chunked KILT page to the chunks that overlap them). Items in no_evidence have "
    "empty evidence and are kept for EM (and answer recall) only: not_in_corpus, their provenance names no "
    "page of this corpus; no_provenance, their file gives none (NQ-open, FlashRAG)."
)


@dataclass(frozen=True)
class ImportConfig:
    """What `imprag data import` reads: the files' task and split where their names do not say them, and
    the corpus whose passage ids the evidence uses."""

    task: str | None = None
    """The task of every file (default: from each file's name, folder or format)."""
    split: str | None = None
    """The split of every file (default: from each file's name)."""
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    """The corpus that evidence is mapped to (the one `imprag index` indexes for eval and train)."""


@dataclass
class _Source:
    """A task file with what the import counted in it."""

    file: TaskFile
    stat: tuple[int, int] = (0, 0)
    lines: int = 0
    items: int = 0
    dropped: int = 0
    not_in_corpus: int = 0
    no_provenance: int = 0
    sha256: str = ""

    def record(self) -> dict[str, Any]:
        f = self.file
        return {
            "path": str(f.path.resolve()), "format": f.format, "task": f.task, "split": f.split,
            "bytes": self.stat[0], "sha256": self.sha256, "lines": self.lines, "items": self.items,
            "dropped": self.dropped, "not_in_corpus": self.not_in_corpus, "no_provenance": self.no_provenance,
        }  # fmt: skip


def import_benchmark(
    files: Iterable[str | Path],
    out: str | Path,
    config: ImportConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Benchmark:
    """Import task files into the benchmark directory `out` (atomically, under its writer lock)."""
    config = config or ImportConfig()
    out = Path(out)
    sources = [_Source(open_task_file(f, config.task, config.split)) for f in files]  # errors before work
    if not sources:
        raise TaskFileError("no task file given: pass one or more KILT, NQ-open or FlashRAG files")
    paths = collections.Counter(s.file.path.resolve() for s in sources)
    if twice := [str(p) for p, n in paths.items() if n > 1]:
        raise TaskFileError(f"{', '.join(twice)} given more than once: import each file once")
    config.corpus.check()
    check_out(out, overwrite)  # before the lock, which creates the folder
    with writer_lock(out, "imprag data import"):
        check_out(out, overwrite)  # again, now that no one else is writing it
        return _import_locked(out, sources, config, progress)


def _import_locked(out: Path, sources: list[_Source], config: ImportConfig, progress: bool) -> Benchmark:
    with EvidenceMap() as evidence:
        return _import_with(out, sources, config, evidence, progress)


def _import_with(
    out: Path, sources: list[_Source], config: ImportConfig, evidence: EvidenceMap, progress: bool
) -> Benchmark:
    _first_pass(sources, evidence, progress)
    if not any(s.items for s in sources):
        raise TaskFileError(
            f"nothing to import: no line of {', '.join(str(s.file.path) for s in sources)} has an answer "
            "(KILT's test files carry none); import the train or dev files"
        )
    with tqdm(desc=f"corpus {config.corpus.name}", unit=" passages", disable=not progress) as bar:
        corpus_hash, count = evidence.scan(config.corpus.passages(), bar.update)
    with atomic_directory(out, replaces=MANIFEST) as tmp:
        counts = _write_items(tmp, sources, evidence, progress)
        tasks = list(counts)
        manifest = {
            "format": 1,
            "kind": "imported",
            "seed": None,  # nothing is sampled or split: the files say which split an item is in
            "corpus": {"name": config.corpus.name, "hash": corpus_hash, "count": count, **_reading(config)},
            "counts": counts,
            "dropped": {t: sum(s.dropped for s in sources if s.file.task == t) for t in tasks},
            "no_evidence": {
                t: {
                    "not_in_corpus": sum(s.not_in_corpus for s in sources if s.file.task == t),
                    "no_provenance": sum(s.no_provenance for s in sources if s.file.task == t),
                }
                for t in tasks
            },
            "formats": {t: get_task(t).format for t in tasks},
            "sources": [s.record() for s in sources],
            "notes": [
                "dropped: lines without an answer (KILT's test files have none); nothing else is dropped",
                EVIDENCE_NOTE,
            ],
            "imprag": importlib.metadata.version("imprag"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Benchmark.load(out)


def _reading(config: ImportConfig) -> dict[str, Any]:
    """How the corpus was read: `imprag index` must read it the same way to give the same passage ids."""
    c = config.corpus
    return {"format": c.resolved_format, "chunk_size": c.chunk_size, "chunk_overlap": c.chunk_overlap}


def _first_pass(sources: list[_Source], evidence: EvidenceMap, progress: bool) -> None:
    """Check every line, count, and collect the cited pages; ids must be unique per task and split."""
    total = sum(s.file.path.stat().st_size for s in sources)
    with tqdm(total=total, desc="reading task files", unit="B", unit_scale=True, disable=not progress) as bar:
        for group in _by_task_split(sources):
            hashes = array("Q")  # one 64-bit hash per id of this task and split
            for source in group:
                _scan_source(source, hashes, evidence, bar.update)
            _check_unique(group, hashes)


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def _check_unique(group: list[_Source], hashes: array) -> None:
    """Refuse an id that repeats within a task and split, naming the line that repeats it. Sorting the
    hashes finds whether any repeats; only then are the group's files read again, remembering the ids
    whose hash repeats (a 64-bit hash collision of two different ids is told apart there, not refused)."""
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.zeros(0, np.uint64)
    values.sort()  # in place: the hashes are not needed in line order any more
    repeated = set(values[1:][values[1:] == values[:-1]].tolist())
    if not repeated:
        return
    seen: set[str] = set()
    for source in group:
        f = source.file
        for row in read_task_file(f):
            if row.item is None or _id_hash(row.item.id) not in repeated:
                continue
            if row.item.id in seen:
                raise TaskFileError(
                    f'{f.path}:{row.number}: field "id": {row.item.id!r} repeats an earlier line\'s '
                    f"({f.task} {f.split}); ids must be unique per task and split: remove the duplicate "
                    "line, or import each file once"
                )
            seen.add(row.item.id)


def _scan_source(
    source: _Source, hashes: array, evidence: EvidenceMap, advance: Callable[[int], Any]
) -> None:
    stat = source.file.path.stat()
    source.stat = (stat.st_size, stat.st_mtime_ns)
    digest = hashlib.sha256()

    def read(raw: bytes) -> None:
        digest.update(raw)
        advance(len(raw))

    for row in read_task_file(source.file, read):
        source.lines += 1
        if row.item is None:
            source.dropped += 1
            continue
        hashes.append(_id_hash(row.item.id))
        source.items += 1
        evidence.want(row.provenance)
    source.sha256 = digest.hexdigest()


def _by_task_split(sources: list[_Source]) -> list[list[_Source]]:
    groups: dict[tuple[str, str], list[_Source]] = {}
    for s in sources:
        groups.setdefault((s.file.task, s.file.split), []).append(s)
    return list(groups.values())


def _write_items(
    tmp: Path, sources: list[_Source], evidence: EvidenceMap, progress: bool
) -> dict[str, dict[str, int]]:
    """Append every item, with its evidence, to `tmp/{split}/{task}.jsonl` (a file only where a task and
    split has items); counts per task and split (every task given, even one whose lines all dropped)."""
    counts = {s.file.task: dict.fromkeys(SPLITS, 0) for s in sources}
    total = sum(s.items for s in sources)
    bar = tqdm(total=total, desc="writing items", unit=" items", disable=not progress)
    with ExitStack() as stack:
        stack.enter_context(bar)
        handles: dict[tuple[str, str], IO[str]] = {}
        for source in sources:
            f = source.file
            stat = f.path.stat()
            if (stat.st_size, stat.st_mtime_ns) != source.stat:
                raise TaskFileError(f"{f.path} changed while it was being imported; import it again")
            for row in read_task_file(f):
                if row.item is None:
                    continue
                row.item.evidence = evidence.resolve(row.provenance)
                if not row.provenance:
                    source.no_provenance += 1
                elif not row.item.evidence:
                    source.not_in_corpus += 1
                if (f.split, f.task) not in handles:
                    (tmp / f.split).mkdir(exist_ok=True)
                    path = tmp / f.split / f"{f.task}.jsonl"
                    handles[f.split, f.task] = stack.enter_context(path.open("a", encoding="utf-8"))
                handles[f.split, f.task].write(row.item.to_json() + "\n")
                counts[f.task][f.split] += 1
                bar.update(1)
    return counts
