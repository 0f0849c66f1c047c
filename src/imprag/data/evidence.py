"""Gold evidence of imported items: KILT provenance mapped to the corpus' own passage ids, streaming.

A provenance entry names a Wikipedia page by `wikipedia_id` and/or `title`, and often the paragraphs of
it that hold the answer. A corpus passage says which page it belongs to in its reader's terms
(`retrieval/corpus.py`):
  kilt            id "{wikipedia_id}-{n}", meta["wikipedia_id"], title = the page title; and, from
                  `read_kilt_chunks`, the paragraphs [first, last] the chunk covers
  atlas           its own id; meta["page_title"] = the article (the shown title adds ": section")
  wiki-summaries  id = title = the article (one passage a page)
  jsonl, dpr      their own id; meta["wikipedia_id"] when the jsonl file has that field; the title
Rules, in order:
  1. the page: passages whose wikipedia_id is the provenance's; if none, passages whose page title is
     its title (compared after `page_key`: Unicode NFC, "_" as a space, single spaces, the first letter
     upper case, as MediaWiki does);
  2. the paragraphs: where both the provenance and a passage know paragraphs (a chunked KILT page), only
     the passages overlapping [start_paragraph_id, end_paragraph_id]; if none overlaps (the range is the
     title or a section heading), the page's first passage, its lead; otherwise every passage of the page;
  3. an item's evidence is the union over its provenance entries, deduplicated in corpus order per entry.
An item whose provenance matches nothing keeps empty evidence (counted by the importer).

Two passes, in flat memory: `want` collects the page keys of every provenance entry (the first pass over
the task files), `scan` streams the corpus once, keeping (id, paragraphs) of the passages on wanted pages
only and hashing every passage in order (the corpus hash an index of the same corpus records, which
`imprag eval` and `imprag train` compare). Keys and kept passages go to a temporary SQLite file, so neither
the task files' size nor the corpus' grows the process.
"""

from __future__ import annotations

import sqlite3
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imprag.data.importers import Provenance
from imprag.retrieval.corpus import (
    CorpusHash,
    Format,
    Passage,
    check_corpus,
    corpus_format,
    read_corpus,
    read_kilt_chunks,
)

__all__ = ["CorpusSpec", "EvidenceMap", "page_key"]

Span = tuple[int, int] | None
"""The KILT paragraphs [first, last] a passage covers (None: the reader does not know)."""


@dataclass(frozen=True)
class CorpusSpec:
    """The corpus that evidence is mapped to, read exactly as `imprag index` reads it: the same options
    give the same passage ids and the same corpus hash."""

    name: str = "wiki-summaries"
    """A corpus file or folder, or an embedded corpus name."""
    format: Format = "auto"
    chunk_size: int = 100
    """Words per passage for KILT and text corpora (`imprag index --chunk-size`)."""
    chunk_overlap: int = 0
    skip_bad_lines: bool = False
    """Skip malformed corpus lines, as `imprag index --skip-bad-lines` does."""

    @property
    def resolved_format(self) -> str:
        return corpus_format(self.name, self.format)

    def check(self) -> None:
        """Refuse a corpus that does not exist or an unknown format, before any work."""
        check_corpus(self.name)
        corpus_format(self.name, self.format)

    def passages(self) -> Iterator[tuple[Passage, Span]]:
        """Every passage in corpus order, with the paragraphs it covers where the format has them."""
        options = {"chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap}
        if self.resolved_format == "kilt":
            yield from read_kilt_chunks(self.name, skip_bad_lines=self.skip_bad_lines, **options)
        else:
            for passage in read_corpus(self.name, self.format, skip_bad_lines=self.skip_bad_lines, **options):
                yield passage, None


def page_key(title: str) -> str:
    """A title as MediaWiki compares it: NFC, underscores as spaces, single spaces, first letter upper."""
    text = " ".join(unicodedata.normalize("NFC", title).replace("_", " ").split())
    return text[:1].upper() + text[1:]


class EvidenceMap:
    """Provenance -> passage ids: `want` every entry, `scan` the corpus once, then `resolve` items.

    The wanted page keys and the passages kept for them live in a temporary SQLite file, not in Python
    objects, so memory stays flat however many lines and pages a task file has (a 1M-line file cites up
    to a million pages; `benchmarks/bench_import.py` measures the peak). Use it as a context manager or
    `close()` it: the file is deleted then."""

    _BATCH = 900  # keys per `IN (...)` query, under SQLite's oldest limit of 999 variables

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="imprag-evidence-")
        self._db = sqlite3.connect(Path(self._folder.name) / "evidence.sqlite")
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -32000;
            CREATE TABLE wanted (key TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE chunks (key TEXT, seq INTEGER, id TEXT, first INTEGER, last INTEGER);
            """
        )
        self._pending: list[tuple[str]] = []
        self._indexed = False

    def close(self) -> None:
        self._db.close()
        self._folder.cleanup()

    def __enter__(self) -> EvidenceMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def want(self, provenance: Iterable[Provenance]) -> None:
        for entry in provenance:
            if entry.wikipedia_id:
                self._pending.append((_id_key(entry.wikipedia_id),))
            if entry.title:
                self._pending.append((_title_key(entry.title),))
        if len(self._pending) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", self._pending)
        self._pending.clear()

    @property
    def pages_wanted(self) -> int:
        self._flush()
        return int(self._db.execute("SELECT COUNT(*) FROM wanted").fetchone()[0])

    def scan(
        self, passages: Iterable[tuple[Passage, Span]], progress: Callable[[int], None] | None = None
    ) -> tuple[str, int]:
        """Keep the passages of wanted pages; return the corpus hash and the number of passages."""
        self._flush()
        hasher, count = CorpusHash(), 0
        batch: list[tuple[str, int, str, Span]] = []
        for passage, span in passages:
            hasher.add(passage.id, passage.digest)
            page_id = passage.meta.get("wikipedia_id")
            if page_id is not None:
                batch.append((_id_key(str(page_id)), count, passage.id, span))
            title = passage.meta.get("page_title") or passage.title
            if title:
                batch.append((_title_key(title), count, passage.id, span))
            count += 1
            if progress is not None and count % 1000 == 0:
                progress(1000)
            if len(batch) >= self._BATCH:
                self._keep(batch)
        self._keep(batch)
        if progress is not None:
            progress(count % 1000)
        self._db.execute("CREATE INDEX IF NOT EXISTS by_key ON chunks (key, seq)")
        self._indexed = True
        return hasher.value, count

    def _keep(self, batch: list[tuple[str, int, str, Span]]) -> None:
        """Store the rows of `batch` whose key is wanted; empty `batch`."""
        if not batch:
            return
        keys = list({key for key, *_ in batch})
        marks = ",".join("?" * len(keys))
        wanted = {k for (k,) in self._db.execute(f"SELECT key FROM wanted WHERE key IN ({marks})", keys)}
        rows = [
            (key, seq, pid, *(span if span is not None else (None, None)))
            for key, seq, pid, span in batch
            if key in wanted
        ]
        if rows:
            with self._db:
                self._db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", rows)
        batch.clear()

    def resolve(self, provenance: Iterable[Provenance]) -> list[str]:
        """The passage ids of an item's provenance (empty: none of its pages is in the corpus)."""
        if not self._indexed:
            raise RuntimeError("EvidenceMap.resolve before scan: scan the corpus first")
        ids: list[str] = []
        for entry in provenance:
            ids += self._passages(entry)
        return list(dict.fromkeys(ids))

    def _chunks(self, key: str) -> list[tuple[str, Span]]:
        rows = self._db.execute("SELECT id, first, last FROM chunks WHERE key = ? ORDER BY seq", (key,))
        return [(pid, None if first is None else (first, last)) for pid, first, last in rows]

    def _passages(self, entry: Provenance) -> list[str]:
        chunks = self._chunks(_id_key(entry.wikipedia_id)) if entry.wikipedia_id else []
        if not chunks and entry.title:
            chunks = self._chunks(_title_key(entry.title))
        if not chunks or entry.start is None or entry.end is None:
            return [pid for pid, _ in chunks]
        start, end = entry.start, entry.end
        hits = [pid for pid, span in chunks if span is None or (span[0] <= end and start <= span[1])]
        return hits or [chunks[0][0]]


def _id_key(wikipedia_id: str) -> str:
    return f"i:{wikipedia_id}"


def _title_key(title: str) -> str:
    return f"t:{page_key(title)}"
