"""The passage index: a directory holding the passage store, the FAISS vectors and a manifest.

    DIR/passages.sqlite   the passages (random access by row)
    DIR/vectors.faiss     E_p of every passage under an ID map (ids = store rows), inner-product metric
    DIR/manifest.json     written last: model fingerprint, b, embedding settings, dim, corpus hash, count,
                          index and build settings. No manifest = not a complete index.
    DIR/build.json        only while building: the settings a resumed build must match
    DIR/shards/           only while building: encoded shards (see encode.py)

Loading with a model checks the fingerprint: a model whose layers 0..b (or b, or embedding settings) differ
from the ones that encoded the corpus gets a StaleIndexError, never silently meaningless scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from imprag.config import IndexConfig, differing_fields
from imprag.distributed import Dist
from imprag.errors import ImpragError
from imprag.io import LOCK, atomic_write_text, writer_lock
from imprag.model.imprag import ImpRAG
from imprag.retrieval.corpus import Passage, check_corpus, corpus_signature, read_corpus
from imprag.retrieval.encode import encode_shards, read_shards, shard_count, shards_done
from imprag.retrieval.store import PassageStore

__all__ = [
    "InvalidIndexError",
    "PassageIndex",
    "StaleIndexError",
    "build_index",
    "describe_plan",
    "estimate",
    "plan_build",
]

log = logging.getLogger(__name__)

MANIFEST, STORE, VECTORS = "manifest.json", "passages.sqlite", "vectors.faiss"
BUILD, SHARDS = "build.json", "shards"
REBUILD = ".rebuild"
"""Where `--overwrite` builds the new index before it replaces a complete one."""
SHARD_FILE = re.compile(r"^\.?shard-\d{6}\.(rows|vectors)\.npy(\.tmp.*)?$")
FORMAT_VERSION = 1


class InvalidIndexError(ImpragError, ValueError):
    """A missing, partial or malformed index directory; the message says how to fix it."""


class StaleIndexError(InvalidIndexError):
    """The index was encoded by a different model (or b, or embedding settings) than the one using it."""


MODEL_KEYS = ("source", "fingerprint", "b", "embedding", "l_max")
"""Keys of a manifest's `model` record that loading and the stale check read (`_model_record` writes more)."""


def _model_record(model: ImpRAG) -> dict[str, Any]:
    return {
        "source": model.source,
        "name": str(model.model.config.name_or_path),
        "model_type": model.model.config.model_type,
        "fingerprint": model.retrieval_fingerprint(),
        "b": model.split.b,
        "t": model.split.t,
        "embedding": model.config.embedding.passage_side(),
        "l_max": model.config.reader.l_max,
        "dtype": str(model.backbone.dtype).removeprefix("torch."),
        "passages": model.config.passages,  # frozen: the fingerprint (and every vector) is the base's
    }


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty FAISS index of `factory` over inner product whose ids are store rows, as every build makes
    it. An IVF index (under any transform) keeps each vector's id in its inverted lists and is used as it
    is; every other type is wrapped in an IndexIDMap (no IndexIDMap2: its reverse map costs 43.4 bytes of
    RAM a vector for a reconstruct-by-id imprag never calls). Never an ID map over an IVF: removing from
    an IVF leaves the positions of the remaining vectors as they were, while the ID map compacts its
    table as if they had moved up, so after one deletion every hit came back as another row's id (how
    imprag built IVF indexes before; the first removal from one repairs it: `_ids_into_ivf`)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if _keeps_ids(index):
        return index
    return faiss.index_factory(dim, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)


def _keeps_ids(index: faiss.Index) -> bool:
    """An IVF, under any number of transforms (and under an ID map: what imprag built before): stores the
    ids it is given with each vector."""
    return isinstance(_core(index), faiss.IndexIVF)


def _inner(index: faiss.Index) -> faiss.Index:
    """The index under imprag's ID map (or the index itself when it keeps its own ids)."""
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def _core(index: faiss.Index) -> faiss.Index:
    """The index under imprag's ID map and any transforms: the one that holds the vectors. A view into
    `index`: keep `index` alive while using it."""
    index = _inner(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def _ids_into_ivf(index: faiss.IndexIDMap, directory: Path) -> faiss.Index:
    """The index under an ID map over an IVF, with each vector's id from the map written into the IVF's
    inverted lists in place of its position: the same search results, and removal that keeps them.
    Refused (InvalidIndexError, nothing changed) when the positions are not exactly 0..n-1, as after a
    removal or change made before this repair existed: then the map and the lists already disagree and
    only re-encoding restores them."""
    table = faiss.vector_to_array(index.id_map)
    ivf = faiss.extract_index_ivf(index.index)
    lists = [
        faiss.rev_swig_ptr(ivf.invlists.get_ids(no), size)  # views of each list's ids
        for no in range(ivf.nlist)
        if (size := ivf.invlists.list_size(no))
    ]
    positions = np.sort(np.concatenate(lists)) if lists else np.zeros(0, dtype=np.int64)
    if not np.array_equal(positions, np.arange(len(table))):
        raise InvalidIndexError(
            f"{directory}: this IVF index lost the mapping from its vectors to passages in an earlier "
            "update (imprag removed from IVF indexes wrongly before this was fixed, and searches since "
            f"returned wrong passages); re-encode its passages with `imprag index --refresh --out "
            f"{directory}` (nothing was changed)"
        )
    for ids in lists:
        ids[:] = table[ids]
    # A copy Python owns: handing the map's own IVF over (own_fields/thisown) crashed later tests. It
    # holds the index twice, once, for an update; the map is dropped with the old index.
    return faiss.deserialize_index(faiss.serialize_index(index.index))


def hnsw_graph(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index under imprag's ID map and any transforms, or None: where build settings go (`_core`:
    keep `index` alive while using it)."""
    return graph if isinstance(graph := _core(index), faiss.IndexHNSW) else None


def vector_bytes(dim: int, factory: str) -> int:
    """Bytes one vector takes in the assembled FAISS index (in memory and in its file): the factory's
    code size (FAISS knows it before training), 8 bytes of id in imprag's ID map or in an IVF's inverted
    lists, ~8.5*M bytes of graph links for HNSW{M} (2M level-0 links of 4 bytes, plus the upper levels),
    and a Refine's own codes. tests/retrieval/test_estimate.py checks it against serialized indexes."""
    return _bytes(dim, factory)[0]


def mapped_bytes(dim: int, factory: str) -> int:
    """Of `vector_bytes`, those an index built with `IndexConfig.mmap` leaves in its file when loaded: every
    array FAISS memory-maps (IO_FLAG_MMAP_IFC): the codes of Flat/PQ/SQ indexes (an HNSW's storage, a
    Refine's codes), an HNSW's links, an IVF's lists (codes and ids) except a fast-scan IVF's; not
    imprag's ID map."""
    return _bytes(dim, factory)[1]


def _bytes(dim: int, factory: str) -> tuple[int, int]:
    index = new_faiss_index(dim, factory)
    ids = 8 if isinstance(index, faiss.IndexIDMap) else 0  # an IVF counts its own in _code_bytes
    total, mapped = _code_bytes(index)
    return ids + total, mapped


def _code_bytes(index: faiss.Index) -> tuple[int, int]:
    """(bytes a vector takes in `index`, of which memory-mappable), recursively."""
    index = _core(index)
    if isinstance(index, faiss.IndexRefine):
        base = _code_bytes(faiss.downcast_index(index.base_index))
        refine = _code_bytes(faiss.downcast_index(index.refine_index))
        return base[0] + refine[0], base[1] + refine[1]
    if isinstance(index, faiss.IndexHNSW):
        storage = _code_bytes(faiss.downcast_index(index.storage))
        links = round(8.5 * index.hnsw.nb_neighbors(1))
        return storage[0] + links, storage[1] + links
    if isinstance(index, faiss.IndexIVF):  # the ids beside the codes in the inverted lists
        size = int(index.code_size) + 8
        return size, 0 if isinstance(index, faiss.IndexIVFFastScan) else size  # blocks stay in RAM
    mappable = isinstance(index, faiss.IndexFlatCodes)
    return int(index.code_size), int(index.code_size) if mappable else 0


def estimate(count: int, dim: int, factory: str) -> dict[str, int]:
    """Bytes of the encoded shards on disk and of the FAISS index (printed before a build starts)."""
    return {"shards_bytes": count * (dim * 4 + 8), "index_bytes": count * vector_bytes(dim, factory)}


def plan_build(
    model: ImpRAG, passages: int, text_bytes: int, cfg: IndexConfig, store_bytes: int | None = None
) -> dict[str, int]:
    """What building an index of `passages` passages (`text_bytes` of title and text in all) with `model`
    and `cfg` needs, in bytes: the passage store and the shards on disk, the index (memory and disk), the
    peak memory of an encoding process and of rank 0 assembling the index, and the RAM of the loaded
    index. `store_bytes`: the store's size when it is already written (a build logs the plan after storing
    the corpus), else estimated from `text_bytes`. `imprag index --estimate` prints it; every build logs
    it first."""
    dim = model.index_dim
    est = estimate(passages, dim, cfg.factory)
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    hidden = model.model.config.hidden_size * model.backbone.dtype.itemsize
    # One batch's activations: a few hidden-size tensors per token plus the attention scores.
    batch = cfg.batch_size * model.config.reader.l_max
    working = batch * (16 * hidden + 4 * model.backbone.num_heads * model.config.reader.l_max)
    shard = cfg.shard_size * dim * 4
    trained = not faiss.index_factory(dim, cfg.factory, faiss.METRIC_INNER_PRODUCT).is_trained
    sample = min(cfg.train_size, passages) * dim * 4 if trained else 0
    return {
        "passages": passages,
        "dim": dim,
        # SQLite: the text, the id twice (row and unique index), the 64-hex digest, ~40 bytes of row
        # overhead, the meta JSON; measured 7.35 MB for the embedded corpus (10,033 passages, 5.1 MB of text)
        "store_bytes": int(text_bytes * 1.05) + passages * 200 if store_bytes is None else store_bytes,
        "shards_bytes": est["shards_bytes"],
        "index_bytes": est["index_bytes"],
        "encode_peak_bytes": weights + working + shard,
        "assemble_peak_bytes": est["index_bytes"] + sample + shard,
        # what a loaded index holds in RAM (IndexConfig.mmap leaves what FAISS maps in the file)
        "search_ram_bytes": est["index_bytes"]
        - (passages * mapped_bytes(dim, cfg.factory) if cfg.mmap else 0),
        "weights_bytes": weights,
    }


def describe_plan(plan: dict[str, int]) -> str:
    """One line of `plan_build`'s numbers, in MB/GB."""

    def size(n: int) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"

    return (
        f"{plan['passages']:,} passages, dim {plan['dim']}: disk {size(plan['store_bytes'])} store + "
        f"{size(plan['shards_bytes'])} shards while building + {size(plan['index_bytes'])} index; memory "
        f"~{size(plan['encode_peak_bytes'])} per encoding process (weights {size(plan['weights_bytes'])}), "
        f"~{size(plan['assemble_peak_bytes'])} for rank 0 assembling the index, "
        f"~{size(plan['search_ram_bytes'])} for the loaded index"
    )


class PassageIndex:
    """Search E_q against the corpus' E_p vectors and fetch the passages behind the hits."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        vectors: faiss.Index,
        store: PassageStore,
        writer: contextlib.ExitStack | None = None,
    ):
        self.directory = directory
        self.manifest = manifest
        self.faiss = vectors
        self.store = store
        self._writer = writer  # holds the directory's write lock while open writable
        mean = manifest["index"].get("mean")
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        """What every stored vector had subtracted (IndexConfig.center), or None."""
        settings = manifest["index"]
        self.set_search_params(settings.get("nprobe"), settings.get("ef_search"), settings.get("rerank"))

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, model: ImpRAG | None = None, writable: bool = False) -> PassageIndex:
        """Open a complete index; with `model`, refuse it if stale. `writable` (for `add`/`delete`) takes the
        directory's write lock first, held until `close()`: a second writer is refused (LockedError)."""
        directory = Path(directory)
        writer = contextlib.ExitStack()
        if writable:
            read_manifest(directory)  # a missing index is reported as such, not locked into existence
            writer.enter_context(writer_lock(directory, "imprag update"))
        try:
            return cls._load(directory, model, writable, writer)
        except BaseException:
            writer.close()
            raise

    @classmethod
    def _load(
        cls, directory: Path, model: ImpRAG | None, writable: bool, writer: contextlib.ExitStack
    ) -> PassageIndex:
        manifest = read_manifest(directory)
        for name in (STORE, VECTORS):
            if not (directory / name).is_file():
                raise InvalidIndexError(f"{directory / name} is missing; the index is damaged: rebuild it")
        if model is not None:
            check_model(manifest, model, directory)
        store = PassageStore(directory / STORE, writable=writable)
        if store.corpus_hash != manifest["corpus_hash"]:
            raise InvalidIndexError(
                f"{directory}: the passage store and the vectors disagree (an update was interrupted?); "
                f"re-encode the stored passages with `imprag index --refresh --out {directory}`"
            )
        # Memory-mapped codes are read-only: a writable index is loaded whole
        mmap = manifest["index"].get("mmap", False) and not writable
        if mmap and not hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            raise InvalidIndexError(
                f"{directory} was built with --mmap, which this faiss ({faiss.__version__}) cannot load "
                "memory-mapped (no IO_FLAG_MMAP_IFC): `pip install -U faiss-cpu`"
            )
        try:
            vectors = faiss.read_index(str(directory / VECTORS), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except RuntimeError as err:
            raise InvalidIndexError(
                f"{directory / VECTORS} cannot be read ({str(err).splitlines()[-1]}); the index is damaged: "
                f"re-encode its passages with `imprag index --refresh --out {directory}`"
            ) from err
        if vectors.d != manifest["dim"]:
            raise InvalidIndexError(
                f"{directory / VECTORS} holds {vectors.d}-dimensional vectors but the manifest says "
                f"{manifest['dim']}; the index is damaged: re-encode its passages with "
                f"`imprag index --refresh --out {directory}`"
            )
        if vectors.ntotal != manifest["count"]:
            raise InvalidIndexError(
                f"{directory}: {vectors.ntotal} vectors but the manifest says {manifest['count']}; rebuild it"
            )
        return cls(directory, manifest, vectors, store, writer if writable else None)

    def close(self) -> None:
        """Close the passage store and release the write lock (if writable). Idempotent."""
        self.store.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> PassageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Retriever interface --------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k rows by inner product for each query (B, D): ids (B, k) and scores (B, k)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidIndexError(
                f"queries have shape {tuple(queries.shape)} but this index holds {self.dim}-d vectors"
            )
        if k > len(self):
            raise InvalidIndexError(f"k={k} passages requested but the index holds only {len(self)}")
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        scores, ids = self.faiss.search(q, k)
        if self.mean is not None:  # E_q . (E_p - mean) + E_q . mean: the uncentred score
            scores = np.where(ids >= 0, scores + (q @ self.mean)[:, None], scores)
        return torch.from_numpy(ids), torch.from_numpy(scores)

    def fetch(self, ids: Sequence[int]) -> list[Passage]:
        return self.store.get(ids)

    def vectors(self) -> tuple[Tensor, Tensor]:
        """Every stored E_p exactly, as (rows (N,) int64, vectors (N, D) float32) in the index's own order:
        what exact whole-corpus scoring (frozen-passage training, full-corpus health) multiplies against.
        Only a Flat index keeps the vectors exactly; others are refused rather than approximated."""
        factory = self.manifest["index"]["factory"]
        if factory != "Flat":
            raise InvalidIndexError(
                f"{self.directory} is a {factory} index, whose vectors are compressed; exact scoring needs "
                f"a Flat index: `imprag index CORPUS --out NEW_DIR --factory Flat`"
            )
        inner = faiss.downcast_index(self.faiss.index)
        n = int(inner.ntotal)
        vectors = inner.reconstruct_n(0, n) if n else np.zeros((0, self.dim), dtype=np.float32)
        if self.mean is not None:
            vectors = vectors + self.mean
        rows = faiss.vector_to_array(self.faiss.id_map).astype(np.int64)
        return torch.from_numpy(rows), torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    def check_model(self, model: ImpRAG) -> None:
        check_model(self.manifest, model, self.directory)

    def set_search_params(
        self, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None
    ) -> None:
        """Set IVF `nprobe` / HNSW `efSearch` / a Refine's candidates per hit `rerank` (each ignored by
        index types without it)."""
        space = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", rerank)):
            if value is None:
                continue
            with contextlib.suppress(RuntimeError):  # this index type has no such parameter
                space.set_index_parameter(self.faiss, name, int(value))

    # -- incremental updates ------------------------------------------------------------------------

    def add(self, model: ImpRAG, passages: Iterable[Passage], batch_size: int = 32) -> dict[str, int]:
        """Add new passages and re-encode changed ones (same id, new content); unchanged ones are skipped.
        An id given twice counts once, with its last content.

        Everything that can fail slowly (encoding) or refuse (an index type that cannot remove vectors)
        happens before the store is touched; the store, the vectors and the manifest are then written back
        to back, so an interruption almost never leaves them disagreeing (if it does, loading says so)."""
        self._check_writable()
        self.check_model(model)
        latest = list({p.id: p for p in passages}.values())
        fresh, changed = self.store.diff(latest)
        if changed:
            self._repair_ids()
            self._check_removable()
        todo = fresh + [p for _, p in changed]
        vectors = model.embed_passages([p.content for p in todo], batch_size=batch_size) if todo else None
        result = self.store.upsert(latest)
        if result.changed:
            self._remove(result.changed)
        if vectors is not None:
            rows = self.store.rows_of([p.id for p in todo])
            added = vectors.numpy().astype(np.float32)
            if self.mean is not None:
                added = added - self.mean
            self.faiss.add_with_ids(added, np.asarray(rows, dtype=np.int64))
        self._commit()
        return {"added": len(result.added), "changed": len(result.changed), "unchanged": result.unchanged}

    def delete(self, ids: Sequence[str]) -> int:
        """Remove passages by corpus id."""
        self._check_writable()
        self._repair_ids()
        self._check_removable()
        rows = self.store.delete(ids)
        self._remove(rows)
        self._commit()
        return len(rows)

    def _check_writable(self) -> None:
        """Refuse a change to an index opened for reading (whose codes may be memory-mapped read-only)."""
        if self._writer is None:
            raise InvalidIndexError(
                f"{self.directory} is open for reading (or closed); open it with "
                "`PassageIndex.load(directory, model, writable=True)` to change it"
            )

    def _repair_ids(self) -> None:
        """An ID map over an IVF (what imprag built before `new_faiss_index`), whose removal would map every
        later hit to another row's id, becomes the IVF holding those ids itself (`_ids_into_ivf`)."""
        if isinstance(self.faiss, faiss.IndexIDMap) and _keeps_ids(self.faiss):
            self.faiss = _ids_into_ivf(self.faiss, self.directory)

    def _check_removable(self) -> None:
        """Refuse, before anything is changed, on an index type without vector removal (HNSW, Refine)."""
        try:
            self.faiss.remove_ids(np.asarray([], dtype=np.int64))
        except RuntimeError as err:
            raise InvalidIndexError(
                f"this index type ({self.manifest['index']['factory']}) cannot remove vectors, so it cannot "
                "delete or change passages (nothing was changed); rebuild it from the new corpus with "
                "`imprag index CORPUS --out DIR --overwrite`, or choose a factory that can (Flat, IVF..)"
            ) from err

    def _remove(self, rows: Sequence[int]) -> None:
        self.faiss.remove_ids(np.asarray(rows, dtype=np.int64))

    def _commit(self) -> None:
        _write_faiss(self.faiss, self.directory / VECTORS)
        self.manifest["count"] = int(self.faiss.ntotal)
        self.manifest["corpus_hash"] = self.store.corpus_hash
        atomic_write_text(self.directory / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a complete index, or a clear error for a missing, partial or damaged one."""
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise InvalidIndexError(
            f"{directory}: no such index directory; build one with `imprag index CORPUS --out {directory}`"
        )
    if not manifest_path.is_file():
        if (directory / BUILD).is_file():
            corpus = (_read_build(directory) or {}).get("corpus") or "CORPUS"
            if not (directory / STORE).is_file():  # it never got past reading its corpus
                raise InvalidIndexError(
                    f"{directory} holds a build that stopped before its passages were stored (its corpus "
                    f"could not be read, or it was killed): check {corpus}, then run `imprag index {corpus} "
                    f"--out {directory} --overwrite`"
                )
            raise InvalidIndexError(
                f"{directory} holds an interrupted build (passages stored, no manifest yet); resume it by "
                f"running the same `imprag index {corpus} --out {directory}` command again"
            )
        if (directory / STORE).is_file():  # passages stored, manifest lost: the store can be re-encoded
            raise InvalidIndexError(
                f"{directory} has its passage store but no {MANIFEST} (deleted or damaged); re-encode the "
                f"stored passages with `imprag index --refresh --out {directory}`"
            )
        raise InvalidIndexError(
            f"{directory} is not an imprag index (no {MANIFEST}); build one with `imprag index`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidIndexError(f"{manifest_path} is not valid JSON ({err}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise InvalidIndexError(f"{manifest_path}: unsupported index format {version!r}; rebuild it")
    missing = [key for key in ("model", "dim", "count", "corpus_hash", "index") if key not in manifest]
    model = manifest.get("model")
    if isinstance(model, dict):
        missing += [f"model.{key}" for key in MODEL_KEYS if key not in model]
    kinds = {"model": dict, "dim": int, "count": int, "corpus_hash": str, "index": dict}
    wrong = [key for key, kind in kinds.items() if key in manifest and not isinstance(manifest[key], kind)]
    if missing or wrong:
        what = [f"lacks {missing}"] * bool(missing) + [f"has a wrong type for {wrong}"] * bool(wrong)
        what = ", ".join(what)
        raise InvalidIndexError(f"{manifest_path} {what}; the index is damaged: rebuild it")
    return manifest


def check_model(manifest: dict[str, Any], model: ImpRAG, directory: Path) -> None:
    built, now = manifest["model"], _model_record(model)
    if built["fingerprint"] != now["fingerprint"]:
        built = {"passages": "shared", **built}  # manifests written before the setting existed
        diffs = [k for k in ("name", "b", "l_max", "passages") if built.get(k) != now[k]]
        if isinstance(built.get("embedding"), dict) and isinstance(now["embedding"], dict):
            diffs += [f"embedding.{k}" for k, _, _ in differing_fields(built["embedding"], now["embedding"])]
        elif built.get("embedding") != now["embedding"]:
            diffs.append("embedding")
        differ = ", ".join(diffs or ["weights"])
        if now["passages"] == "frozen":
            key = " --retrieval-key trained" if model.retrieval_key is not None else ""
            raise StaleIndexError(
                f"index {directory} is stale for this adapter: it was encoded by another base model "
                f"(passages frozen: the adapter reads the E_p of its base; {differ} differ; fingerprint "
                f"{built['fingerprint']} vs the base's {now['fingerprint']}). Index the corpus with the "
                "base model and the adapter's pooling (`imprag index CORPUS --out NEW_DIR --model BASE "
                f"--pooling {model.config.embedding.pooling}{key}`), or `imprag index --refresh --out "
                f"{directory}` with this model (which encodes with the base weights)"
            )
        raise StaleIndexError(
            f"index {directory} is stale: it was encoded by a different model ({differ} "
            f"differ; fingerprint {built['fingerprint']} vs {now['fingerprint']}). Rebuild it with "
            f"`imprag index --refresh --out {directory}` (re-encodes the same passages with this model)"
        )


def _write_faiss(index: faiss.Index, path: Path) -> None:
    """Write atomically and durably: a temporary file, fsync, rename (the shards it was built from may be
    deleted right after)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- building ---------------------------------------------------------------------------------------


def build_index(
    model: ImpRAG,
    out: str | Path,
    corpus: str | Path | Iterable[Passage] | None = None,
    config: IndexConfig | None = None,
    corpus_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: Dist | None = None,
) -> PassageIndex | None:
    """Build (or resume, or refresh) an index over `corpus` at `out`; returns it on rank 0.

    `corpus` is a path or embedded corpus name read with `read_corpus(**corpus_options)`, an iterable of
    Passages, or None to re-encode the passages already in `out` with this model (refresh).

    `overwrite` over a complete index builds the new one aside (`out/.rebuild`, resumable like any build)
    while the old one stays whole and searchable, then swaps the files in (the manifest last): a corpus that
    turns out to be unreadable, or a build that dies, costs the old index nothing.
    """
    out, cfg, dist = Path(out), config or IndexConfig(), dist or Dist()
    check_factory(cfg.factory, model.index_dim)  # before any work: the factory is built only at the end
    if isinstance(corpus, (str, Path)):
        check_corpus(corpus)  # before `out` is created or touched
    settings = {
        "model": _model_record(model),
        "corpus": str(corpus) if isinstance(corpus, (str, Path)) else None,
        "corpus_signature": corpus_signature(corpus) if isinstance(corpus, (str, Path)) else None,
        "corpus_options": corpus_options or {},
        "index": dataclasses.asdict(cfg),
    }
    if overwrite and corpus is not None and (out / MANIFEST).is_file():  # every rank sees the same
        return _rebuild_aside(model, out, corpus, cfg, corpus_options, progress, dist, settings)
    with contextlib.ExitStack() as lock:  # rank 0 holds the write lock for the whole build
        return _build(model, out, corpus, cfg, corpus_options, overwrite, progress, dist, settings, lock)


def _rebuild_aside(
    model: ImpRAG,
    out: Path,
    corpus: str | Path | Iterable[Passage],
    cfg: IndexConfig,
    corpus_options: dict[str, Any] | None,
    progress: bool,
    dist: Dist,
    settings: dict[str, Any],
) -> PassageIndex | None:
    """`--overwrite` of a complete index: build into `out/.rebuild` under `out`'s lock, then swap."""
    staging = out / REBUILD
    with contextlib.ExitStack() as lock:
        error: BaseException | None = None
        if dist.is_main:
            try:
                _refuse_foreign(out)
                lock.enter_context(writer_lock(out, "imprag index"))
                read_manifest(out)  # a manifest.json that is not an index's: refused, not replaced
                started = _read_build(staging)
                if started is None or _build_key(started) != _build_key(settings):  # resume the same build
                    shutil.rmtree(staging, ignore_errors=True)  # our own folder: an older attempt
            except Exception as err:
                error = err
        if dist.broadcast_error(error is not None):
            raise error or InvalidIndexError("rank 0 could not prepare the rebuild (see its error)")
        with contextlib.ExitStack() as inner:  # _build locks the staging folder too, until it is done
            built = _build(
                model, staging, corpus, cfg, corpus_options, False, progress, dist, settings, inner
            )
        if not dist.is_main:
            return None
        assert built is not None
        built.store.close()
        (out / MANIFEST).unlink()  # from here until the new manifest lands, `out` reads as a build
        for name in (STORE, VECTORS):
            os.replace(staging / name, out / name)
        os.replace(staging / MANIFEST, out / MANIFEST)
        shutil.rmtree(staging, ignore_errors=True)
        return PassageIndex.load(out, model)


def _build(
    model: ImpRAG,
    out: Path,
    corpus: str | Path | Iterable[Passage] | None,
    cfg: IndexConfig,
    corpus_options: dict[str, Any] | None,
    overwrite: bool,
    progress: bool,
    dist: Dist,
    settings: dict[str, Any],
    lock: contextlib.ExitStack,
) -> PassageIndex | None:
    started = time.time()
    error: BaseException | None = None
    if dist.is_main:
        try:
            _refuse_foreign(out)  # before the lock file is put into a folder that is not ours
            lock.enter_context(writer_lock(out, "imprag index"))
            _prepare(out, settings, corpus is None, overwrite)
            if not (out / STORE).is_file():
                _store_corpus(out / STORE, corpus, corpus_options or {}, progress)
        except Exception as err:  # every rank must learn of it, or the others wait forever
            error = err
    if dist.broadcast_error(error is not None):
        raise error or InvalidIndexError("rank 0 could not prepare the index (see its error)")
    store = PassageStore(out / STORE)
    count = shard_count(store, cfg.shard_size)
    if dist.is_main:
        written = (out / STORE).stat().st_size
        log.info(
            "encoding with layers 0..%d (%s) in %d process(es): %s",
            model.split.b,
            settings["model"]["dtype"],
            dist.world,
            describe_plan(plan_build(model, len(store), 0, cfg, store_bytes=written)),
        )
    error = None
    try:
        encode_shards(
            model, store, out / SHARDS, cfg.shard_size, cfg.batch_size, dist.rank, dist.world, progress
        )
    except Exception as err:  # e.g. out of memory on one rank: the others must not wait at the barrier
        error = err
    if dist.broadcast_error(error is not None):  # also the barrier before rank 0 assembles the shards
        raise error or InvalidIndexError("another process failed while encoding (see its error); run again")
    error = None
    if dist.is_main:
        try:
            _finish(out, store, count, settings, model.index_dim, cfg, dist.world, started, progress)
        except Exception as err:  # as above: let the other ranks stop too
            error = err
    if dist.broadcast_error(error is not None):
        raise error or InvalidIndexError("rank 0 could not assemble the index (see its error)")
    return PassageIndex.load(out, model) if dist.is_main else None


def _finish(
    out: Path,
    store: PassageStore,
    count: int,
    settings: dict[str, Any],
    dim: int,
    cfg: IndexConfig,
    processes: int,
    started: float,
    progress: bool,
) -> None:
    """Rank 0: check every shard is there, build the FAISS index, write the manifest last, clean up."""
    done = set(shards_done(out / SHARDS, count))
    size = cfg.shard_size
    missing = [i for i in range(count) if i not in done and store.count_rows(i * size, (i + 1) * size)]
    if missing:
        raise InvalidIndexError(
            f"shards {missing[:5]} were not encoded; run the same command again to resume"
        )
    vectors, mean = _assemble(out / SHARDS, count, dim, len(store), cfg, progress)
    if vectors.ntotal != len(store):
        raise InvalidIndexError(
            f"{out}: the shards hold {vectors.ntotal} vectors for {len(store)} stored passages (left by "
            f"another build?); delete {out / SHARDS} and run the same command again"
        )
    _write_faiss(vectors, out / VECTORS)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": settings["model"],
        "dim": dim,
        "count": int(vectors.ntotal),
        "corpus_hash": store.corpus_hash,
        "corpus": settings["corpus"],
        "corpus_signature": settings["corpus_signature"],
        "corpus_options": settings["corpus_options"],
        "index": {
            "factory": cfg.factory,
            "metric": "inner_product",
            "train_size": cfg.train_size,
            "nprobe": cfg.nprobe,
            "ef_search": cfg.ef_search,
            "ef_construction": cfg.ef_construction,
            "rerank": cfg.rerank,
            "center": cfg.center,
            "mmap": cfg.mmap,
            "mean": None if mean is None else [float(v) for v in mean],
        },
        "build": {
            "shard_size": cfg.shard_size,
            "batch_size": cfg.batch_size,
            "processes": processes,
            "seconds": round(time.time() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _remove_shards(out / SHARDS)
    (out / BUILD).unlink(missing_ok=True)


def _store_corpus(
    path: Path, corpus: str | Path | Iterable[Passage] | None, options: dict[str, Any], progress: bool
) -> None:
    passages = read_corpus(corpus, **options) if isinstance(corpus, (str, Path)) else corpus
    if passages is None:
        raise InvalidIndexError(
            f"{path.parent}: no passage store to refresh; build the index from a corpus first"
        )
    with tqdm(unit="passage", desc="storing passages", disable=not progress, dynamic_ncols=True) as bar:
        PassageStore.build(path, passages, progress=bar.update)


def _read_build(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / BUILD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _remove_shards(shards: Path) -> None:
    """Delete the shard files a build wrote (`shard-NNNNNN.rows.npy` / `.vectors.npy` and their temporary
    files), and the folder only if nothing else is left in it."""
    if not shards.is_dir():
        return
    for f in shards.iterdir():
        if f.is_file() and SHARD_FILE.match(f.name):
            f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone else's files stay
        shards.rmdir()


def _refuse_foreign(out: Path) -> None:
    """Refuse an `--out` that is a file, or a folder with contents but no sign of an index: its store, its
    vectors, a build record, the lock, or a manifest.json that is an index's (another program's file of
    that name is not)."""
    if out.is_file():
        raise InvalidIndexError(f"{out} is a file, not an index directory; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if any((out / name).exists() for name in (STORE, VECTORS, BUILD, LOCK)) or _index_manifest(out):
        return
    raise InvalidIndexError(f"{out} exists and is not an imprag index; choose another --out or empty it")


def _index_manifest(out: Path) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and "model" in manifest


def _prepare(out: Path, settings: dict[str, Any], refresh: bool, overwrite: bool) -> None:
    """Decide between a fresh build, a resume, a refresh and an error; leave `out` ready for encoding."""
    complete = (out / MANIFEST).is_file()
    if refresh:
        if not (out / STORE).is_file():
            raise InvalidIndexError(
                f"{out}: nothing to refresh (no passage store); build it with `imprag index CORPUS`"
            )
        previous = read_manifest(out) if complete else _read_build(out)
        if previous:
            settings["corpus"] = previous.get("corpus")
            settings["corpus_signature"] = previous.get("corpus_signature")
            settings["corpus_options"] = previous.get("corpus_options", {})
        reusable = {k: (previous or {}).get(k) for k in ("model", "index")}
        wanted = json.loads(json.dumps({k: settings[k] for k in ("model", "index")}))
        if complete or reusable["model"] != wanted["model"] or _shard_size(reusable) != _shard_size(wanted):
            # Shards encoded by another model, cut at another size, or of a finished index: not reused.
            (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is a build in progress
            _remove_shards(out / SHARDS)
    elif complete and not overwrite:
        raise InvalidIndexError(
            f"{out} already holds a complete index; pass --overwrite to rebuild it, or --refresh to "
            "re-encode its passages with this model"
        )
    elif overwrite:
        _refuse_foreign(out)
        if complete:
            read_manifest(out)  # a manifest.json that is not an index's: refused, not deleted
        for name in (MANIFEST, BUILD, STORE, VECTORS):
            (out / name).unlink(missing_ok=True)
        _remove_shards(out / SHARDS)
    elif (out / BUILD).is_file():
        previous = json.loads((out / BUILD).read_text(encoding="utf-8"))
        started = (out / STORE).is_file() or any((out / SHARDS).glob("*.npy"))
        previous, wanted = _build_key(previous), _build_key(settings)
        if started and previous != wanted:
            differ = [name for name, _, _ in differing_fields(previous, wanted)]
            was = previous.get("model", {}).get("dtype")
            hint = (
                f" (it was encoding in {was}: pass --dtype {was} to resume)"
                if differ == ["model.dtype"]
                else " (the corpus changed since: the passages stored are the old ones)"
                if "corpus_signature" in differ
                else ""
            )
            raise InvalidIndexError(
                f"{out} holds an interrupted build with different settings ({', '.join(differ)}){hint}; pass "
                "--overwrite to start over"
            )
        log.info("resuming the interrupted build in %s", out)
    else:
        _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / BUILD, json.dumps(settings, indent=2) + "\n")


SEARCH_ONLY = ("nprobe", "ef_search", "rerank", "mmap")
"""IndexConfig fields that only the manifest and searches read: a resumed build may change them."""


def _build_key(settings: dict[str, Any]) -> dict[str, Any]:
    """What a resumed build must match: `settings` as JSON, with IndexConfig fields added since a build
    started filled in with their defaults and the search-only fields left out."""
    key = json.loads(json.dumps(settings))
    index = {**json.loads(json.dumps(dataclasses.asdict(IndexConfig()))), **(key.get("index") or {})}
    key["index"] = {k: v for k, v in index.items() if k not in SEARCH_ONLY}
    return key


def _shard_size(settings: dict[str, Any]) -> int | None:
    return (settings.get("index") or {}).get("shard_size")


def check_factory(factory: str, dim: int) -> None:
    """Refuse (InvalidIndexError) a FAISS factory string FAISS cannot build for `dim`-d vectors."""
    try:
        new_faiss_index(dim, factory)
    except RuntimeError as err:
        found = re.search(r"\.cpp:\d+: (.*)", str(err))  # FAISS's reason, after its C++ source location
        reason = (found.group(1) if found else str(err)).strip().splitlines()[0]
        raise InvalidIndexError(
            f"FAISS cannot build the index factory {factory!r} for {dim}-d vectors ({reason}); use one "
            "such as 'Flat', 'IVF1024,PQ32' or 'HNSW32'"
        ) from None


def skip_polysemous_training(index: faiss.Index) -> None:
    """Turn off the polysemous PQ training FAISS's factory turns on (for IVF-PQ and plain PQ, also under a
    transform or a Refine): search never uses it (polysemous_ht = 0), and it was ~90% of IVF-PQ training
    time in benchmarks/bench_index.py."""
    index = faiss.downcast_index(index)
    for inner in ("index", "base_index"):  # IDMap, IndexPreTransform / IndexRefine
        if hasattr(index, inner) and isinstance(getattr(index, inner), faiss.Index):
            skip_polysemous_training(getattr(index, inner))
    if getattr(index, "do_polysemous_training", False):
        index.do_polysemous_training = False


@contextlib.contextmanager
def _kmeans_on_gpus(index: faiss.Index) -> Iterator[None]:
    """With faiss-gpu and a GPU: an IVF's k-means (the costly part of training at millions of vectors)
    assigns points to centroids on every GPU, by FAISS's `clustering_index` (an exact index of the
    quantizer's metric); the trained index is the CPU one either way. Untested on a GPU here (no GPU on the
    project's machines); the wiring is tested with a stand-in (tests/retrieval/test_index.py). Adding
    vectors stays on the CPU. Without faiss-gpu (`faiss-cpu`'s get_num_gpus() is 0) this does nothing."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    ivf = faiss.try_extract_index_ivf(index) if gpus else None
    if ivf is None:
        yield
        return
    log.info("IVF k-means on %d GPU(s)", gpus)
    on_gpus = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type))
    ivf.clustering_index = on_gpus  # not owned: `on_gpus` lives until training is over
    try:
        yield
    finally:
        ivf.clustering_index = None


def _assemble(
    shards: Path, count: int, dim: int, total: int, cfg: IndexConfig, progress: bool
) -> tuple[faiss.Index, np.ndarray | None]:
    """Stream the shards into a FAISS index (training it on a sample spread over the corpus if needed);
    returns it and the mean subtracted from every vector (IndexConfig.center), or None."""
    index = new_faiss_index(dim, cfg.factory)
    skip_polysemous_training(index)
    if (graph := hnsw_graph(index)) is not None:
        graph.hnsw.efConstruction = cfg.ef_construction
    center = cfg.factory != "Flat" if cfg.center == "auto" else cfg.center
    mean = None
    if center or not index.is_trained:
        per_shard = max(1, cfg.train_size // max(1, count))
        sample = np.concatenate([np.asarray(v[:per_shard]) for _, v in read_shards(shards, count)])
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if center:  # any fixed vector would keep every ranking; the mean makes the rest informative
            mean = sample.mean(0).astype(np.float32)
            sample -= mean
    if not index.is_trained:
        log.info("training %s on %d vectors", cfg.factory, len(sample))
        try:
            with _kmeans_on_gpus(index):
                index.train(sample)
        except RuntimeError as err:
            raise InvalidIndexError(
                f"FAISS could not train {cfg.factory!r} on {len(sample)} vectors "
                f"({str(err).splitlines()[-1]}); use fewer lists/centroids, a larger --train-size, or 'Flat' "
                "for a small corpus"
            ) from err
    with tqdm(total=total, unit="vector", desc="indexing", disable=not progress, dynamic_ncols=True) as bar:
        for rows, vectors in read_shards(shards, count):
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            index.add_with_ids(vectors - mean if mean is not None else vectors, rows)
            bar.update(len(rows))
    return index, mean
