"""The passage store: passages on disk in SQLite, random access by integer row and by corpus id.

Rows are the int64 ids the vector index stores, so a search hit maps straight to a row. The corpus is
streamed in and read back in bounded chunks; it is never held whole in memory. A store is written into a
temporary file and renamed into place when complete, so a crash never leaves a half-written store that
looks finished.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imprag.retrieval.corpus import CorpusError, CorpusHash, Passage

__all__ = ["PassageStore", "UpsertResult"]

SCHEMA = """
CREATE TABLE passages (
    row INTEGER PRIMARY KEY,
    pid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BATCH = 2048


@dataclass
class UpsertResult:
    added: list[int]
    """Rows of passages whose id was new."""
    changed: list[int]
    """Rows of existing ids whose title or text changed (same row, new content)."""
    unchanged: int
    """Passages skipped because their content hash was already stored."""


class PassageStore:
    """Read (and incrementally update) a SQLite passage store."""

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"{self.path}: no passage store here; build one with `imprag index`")
        uri = f"{self.path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}"  # escapes '#', '?', '%'
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            self._db.execute("SELECT count(*) FROM passages").fetchone()
        except sqlite3.DatabaseError as err:
            raise CorpusError(
                f"{self.path}: not a passage store ({err}); rebuild it with `imprag index`"
            ) from err

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        path: str | Path,
        passages: Iterable[Passage],
        progress: Callable[[int], None] | None = None,
    ) -> PassageStore:
        """Write `passages` (streamed, rows 0..N-1 in order) to a new store at `path`, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(SCHEMA)
            corpus = CorpusHash()
            batch: list[tuple] = []
            row = 0
            for passage in passages:
                batch.append(_row(row, passage))
                corpus.add(passage.id, passage.digest)
                row += 1
                if len(batch) == BATCH:
                    _insert(db, batch)
                    db.commit()
                    if progress:
                        progress(len(batch))
                    batch = []
            _insert(db, batch)
            if progress and batch:
                progress(len(batch))
            if row == 0:
                raise CorpusError("the corpus has no passages")
            db.execute("INSERT INTO info VALUES ('corpus_hash', ?)", (corpus.value,))
            db.commit()
            db.close()
            os.replace(tmp, path)
        except BaseException:
            db.close()
            tmp.unlink(missing_ok=True)
            raise
        return cls(path)

    # -- reading ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM passages").fetchone()[0]

    def text_bytes(self) -> int:
        """Bytes of title and text over every passage (`imprag index --refresh --estimate` scales the store by
        it); one pass over the whole table."""
        sql = (
            "SELECT coalesce(sum(length(CAST(title AS BLOB)) + length(CAST(text AS BLOB))), 0) FROM passages"
        )
        return int(self._db.execute(sql).fetchone()[0])

    @property
    def corpus_hash(self) -> str:
        """Hash of (id, content hash) of every passage in row order; changes when any passage does."""
        return self._db.execute("SELECT value FROM info WHERE key = 'corpus_hash'").fetchone()[0]

    @property
    def max_row(self) -> int:
        return self._db.execute("SELECT coalesce(max(row), -1) FROM passages").fetchone()[0]

    def get(self, rows: Sequence[int]) -> list[Passage]:
        """Passages at the given rows, in the given order."""
        found: dict[int, Passage] = {}
        unique = sorted({int(r) for r in rows})
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for r, pid, title, text, meta in self._db.execute(
                f"SELECT row, pid, title, text, meta FROM passages WHERE row IN ({marks})", chunk
            ):
                found[r] = Passage(pid, title, text, json.loads(meta))
        missing = [r for r in unique if r not in found]
        if missing:
            raise KeyError(f"rows {missing[:5]} are not in the passage store {self.path}")
        return [found[int(r)] for r in rows]

    def rows_of(self, ids: Sequence[str]) -> list[int | None]:
        """Row of each corpus id (None where absent)."""
        out = []
        for pid in ids:
            hit = self._db.execute("SELECT row FROM passages WHERE pid = ?", (str(pid),)).fetchone()
            out.append(None if hit is None else hit[0])
        return out

    def count_rows(self, start: int, stop: int) -> int:
        """Number of passages with rows in [start, stop)."""
        return self._db.execute(
            "SELECT count(*) FROM passages WHERE row >= ? AND row < ?", (start, stop)
        ).fetchone()[0]

    def iter_rows(self, start: int = 0, stop: int | None = None, batch: int = BATCH) -> Iterator[list[int]]:
        """Row ids in [start, stop), ascending, in chunks of at most `batch` (keyset pagination)."""
        last = start - 1
        stop = self.max_row + 1 if stop is None else stop
        while True:
            rows = [
                r
                for (r,) in self._db.execute(
                    "SELECT row FROM passages WHERE row > ? AND row < ? ORDER BY row LIMIT ?",
                    (last, stop, batch),
                )
            ]
            if not rows:
                return
            yield rows
            last = rows[-1]

    def iter_passages(self, batch: int = BATCH) -> Iterator[tuple[list[int], list[Passage]]]:
        for rows in self.iter_rows(batch=batch):
            yield rows, self.get(rows)

    # -- updating -----------------------------------------------------------------------------------

    def diff(self, passages: Sequence[Passage]) -> tuple[list[Passage], list[tuple[int, Passage]]]:
        """What `upsert(passages)` would do, without doing it: the passages with new ids, and (row, passage)
        for known ids whose content changed. Give each id once."""
        fresh: list[Passage] = []
        changed: list[tuple[int, Passage]] = []
        for passage in passages:
            hit = self._db.execute("SELECT row, digest FROM passages WHERE pid = ?", (_checked(passage).id,))
            hit = hit.fetchone()
            if hit is None:
                fresh.append(passage)
            elif hit[1] != passage.digest:
                changed.append((hit[0], passage))
        return fresh, changed

    def upsert(self, passages: Iterable[Passage]) -> UpsertResult:
        """Add new ids, update changed ones in place (same row), skip unchanged content."""
        added: dict[int, None] = {}  # ordered sets: an id repeated in one call is reported once
        changed: dict[int, None] = {}
        unchanged = 0
        next_row = self.max_row + 1
        with self._db:
            for passage in passages:
                hit = self._db.execute(
                    "SELECT row, digest FROM passages WHERE pid = ?", (passage.id,)
                ).fetchone()
                if hit is None:
                    self._db.execute("INSERT INTO passages VALUES (?,?,?,?,?,?)", _row(next_row, passage))
                    added[next_row] = None
                    next_row += 1
                elif hit[1] == passage.digest:
                    unchanged += 1
                else:
                    self._db.execute("DELETE FROM passages WHERE row = ?", (hit[0],))
                    self._db.execute("INSERT INTO passages VALUES (?,?,?,?,?,?)", _row(hit[0], passage))
                    if hit[0] not in added:
                        changed[hit[0]] = None
            self._rehash()
        return UpsertResult(list(added), list(changed), unchanged)

    def delete(self, ids: Sequence[str]) -> list[int]:
        """Remove passages by corpus id; returns their rows (unknown ids are an error)."""
        ids = list(dict.fromkeys(ids))
        rows = self.rows_of(ids)
        unknown = [pid for pid, r in zip(ids, rows, strict=True) if r is None]
        if unknown:
            raise CorpusError(f"unknown passage id(s) {unknown[:5]}: nothing was deleted")
        with self._db:
            self._db.executemany("DELETE FROM passages WHERE row = ?", [(r,) for r in rows])
            self._rehash()
        return [r for r in rows if r is not None]

    def _rehash(self) -> None:
        corpus = CorpusHash()
        for pid, digest in self._db.execute("SELECT pid, digest FROM passages ORDER BY row"):
            corpus.add(pid, digest)
        self._db.execute("UPDATE info SET value = ? WHERE key = 'corpus_hash'", (corpus.value,))

    def close(self) -> None:
        self._db.close()


def _checked(p: Passage) -> Passage:
    if not p.text.strip():
        raise CorpusError(f"passage {p.id!r} has an empty text; every passage needs one (nothing was stored)")
    return p


def _row(row: int, p: Passage) -> tuple:
    _checked(p)
    return (row, p.id, p.title, p.text, json.dumps(p.meta, ensure_ascii=False), p.digest)


def _insert(db: sqlite3.Connection, batch: list[tuple]) -> None:
    try:
        db.executemany("INSERT INTO passages VALUES (?,?,?,?,?,?)", batch)
    except sqlite3.IntegrityError:
        db.rollback()  # undo this batch only (earlier batches are committed)
        seen: set[str] = set()
        for row in batch:
            if row[1] in seen or db.execute("SELECT 1 FROM passages WHERE pid = ?", (row[1],)).fetchone():
                raise CorpusError(
                    f"duplicate passage id {row[1]!r} (passage #{row[0]} of the corpus repeats an earlier "
                    "id); ids must be unique"
                ) from None
            seen.add(row[1])
        raise
