"""The passage index: build, search, resume after a crash, staleness, refresh, incremental updates, FAISS
factories, bad directories, and a 2-process torchrun build equal to a 1-process one."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close

from imprag import (
    ConfigError,
    ImpRAG,
    IndexConfig,
    InvalidIndexError,
    LayerSplit,
    Passage,
    PassageIndex,
    StaleIndexError,
    build_index,
)
from imprag.io import LOCK, LockedError, writer_lock
from imprag.retrieval.index import MANIFEST, hnsw_graph, mapped_bytes, read_manifest

TOPICS = ["capital", "river", "composer", "mountain", "novel", "currency", "bird", "festival"]
PASSAGES = [
    Passage(id=f"p{i}", title=f"Topic {i}", text=f"Passage {i} tells about the {TOPICS[i % 8]} number {i}.")
    for i in range(22)
]
PROMPTS = ["Q: Which capital is number 8?\nA:", "Is this statement true? The river 3 is long. A:"]


@pytest.fixture
def model(tokenizer) -> ImpRAG:
    return ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))


def small(**kw) -> IndexConfig:
    return IndexConfig(shard_size=4, batch_size=3, **kw)


def stored(index: PassageIndex, row: int) -> np.ndarray:
    """The vector `index` holds for store row `row`, as stored (centred if the index centres)."""
    if isinstance(index.faiss, faiss.IndexIDMap):  # at its position in the index under imprag's ID map
        position = faiss.vector_to_array(index.faiss.id_map).tolist().index(row)
        return index.faiss.index.reconstruct(position)
    faiss.extract_index_ivf(index.faiss).make_direct_map()  # an IVF holding the rows as its ids
    return index.faiss.reconstruct(row)


def vectors_of(index: PassageIndex) -> np.ndarray:
    return np.stack([stored(index, row) for row in range(index.store.max_row + 1)])


def test_build_search_and_generate(model: ImpRAG, tmp_path: Path) -> None:
    index = build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    assert len(index) == 22 and index.dim == model.dim
    m = index.manifest
    assert m["model"]["fingerprint"] == model.retrieval_fingerprint() and m["model"]["b"] == 1
    assert m["count"] == 22 and m["corpus_hash"] == index.store.corpus_hash
    assert not (tmp_path / "idx" / "shards").exists() and not (tmp_path / "idx" / "build.json").exists()
    # Search equals brute force over embed_passages of the passages' content (title + text).
    expected = model.embed_passages([p.content for p in PASSAGES])
    assert_close(torch.from_numpy(vectors_of(index)), expected)
    ids, scores = index.search(model.embed_queries(PROMPTS), 3)
    brute = (model.embed_queries(PROMPTS) @ expected.T).topk(3)
    assert ids.tolist() == brute.indices.tolist()
    assert_close(scores, brute.values, rtol=1e-5, atol=1e-4)
    # The model reads what it retrieves, with corpus ids and titles attached.
    res = model.generate(PROMPTS, index=index, k=3, max_new_tokens=2)
    assert [p.row for p in res[0].passages] == ids[0].tolist()
    assert [p.id for p in res[0].passages] == [PASSAGES[i].id for i in ids[0].tolist()]
    assert res[0].passages[0].title == PASSAGES[int(ids[0, 0])].title


def test_killed_build_resumes_and_equals_an_uninterrupted_one(model: ImpRAG, tmp_path: Path) -> None:
    reference = build_index(model, tmp_path / "ref", PASSAGES, small(), progress=False)
    calls = _interrupt_on_call(model, 3)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    with pytest.raises(InvalidIndexError, match="interrupted build"):
        PassageIndex.load(tmp_path / "idx", model)
    assert len(list((tmp_path / "idx" / "shards").glob("*.vectors.npy"))) == 2

    calls["n"] = -100  # no more failures; count what the resumed build encodes
    resumed = build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    assert calls["n"] == -100 + 4  # 6 shards in all, 2 were already done
    np.testing.assert_array_equal(vectors_of(resumed), vectors_of(reference))
    assert resumed.manifest["corpus_hash"] == reference.manifest["corpus_hash"]


def test_a_resumed_build_refuses_a_corpus_that_changed(model: ImpRAG, tmp_path: Path) -> None:
    """Killed after storing the passages; the corpus file is then edited (one text changed, one passage
    added). Resuming would index the old stored passages and say nothing (issue 16): it is refused, naming
    the change, and --overwrite builds the new corpus."""
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": p.id, "title": p.title, "text": p.text} for p in PASSAGES[:6]]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = model.embed_passages
    model.embed_passages = lambda texts, batch_size=32: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", corpus, small(), progress=False)
    model.embed_passages = real  # type: ignore[method-assign]
    rows[0]["text"] = "An edited text."
    rows.append({"id": "new", "title": "New", "text": "A passage added after the first attempt."})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidIndexError, match=r"corpus_signature.*the corpus changed since"):
        build_index(model, tmp_path / "idx", corpus, small(), progress=False)
    rebuilt = build_index(model, tmp_path / "idx", corpus, small(), overwrite=True, progress=False)
    assert (
        len(rebuilt) == 7
        and rebuilt.fetch(rebuilt.store.rows_of([PASSAGES[0].id]))[0].text == "An edited text."
    )


def test_overwrite_deletes_only_what_a_build_wrote(model: ImpRAG, tmp_path: Path) -> None:
    """--overwrite of a folder whose manifest.json is someone else's is refused with nothing deleted; of an
    interrupted build, it deletes the shard files but keeps a user's file put in shards/ (issue 16)."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({"name": "my web app", "version": 3}))
    (app / "shards").mkdir()
    (app / "shards" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidIndexError):
        build_index(model, app, PASSAGES, small(), overwrite=True, progress=False)
    assert sorted(p.name for p in app.rglob("*")) == ["keep.txt", "manifest.json", "shards"]
    real = model.embed_passages
    _interrupt_on_call(model, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    model.embed_passages = real  # type: ignore[method-assign]
    shards = tmp_path / "idx" / "shards"
    assert any(shards.glob("shard-*.npy"))
    (shards / "notes.txt").write_text("mine")
    build_index(model, tmp_path / "idx", PASSAGES, small(), overwrite=True, progress=False)
    assert [p.name for p in shards.iterdir()] == ["notes.txt"]


def test_resume_with_other_settings_is_refused(model: ImpRAG, tmp_path: Path) -> None:
    real = model.embed_passages
    model.embed_passages = lambda texts, batch_size=32: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore
    with pytest.raises(KeyboardInterrupt):  # killed after storing the passages, before any shard
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    model.embed_passages = real  # type: ignore[method-assign]
    with pytest.raises(
        InvalidIndexError, match=r"interrupted build with different settings \(index\.factory\);"
    ):
        build_index(model, tmp_path / "idx", PASSAGES, small(factory="HNSW8"), progress=False)
    # resumed where "auto" resolves to another dtype: the error says which dtype resumes it
    half = ImpRAG(copy.deepcopy(model.model).to(torch.bfloat16), model.tokenizer, model.split)
    with pytest.raises(
        InvalidIndexError, match=r"\(model\.dtype\) \(it was encoding in float32: pass --dtype float32"
    ):
        build_index(half, tmp_path / "idx", PASSAGES, small(), progress=False)
    index = build_index(
        model, tmp_path / "idx", PASSAGES, small(factory="HNSW8"), overwrite=True, progress=False
    )
    assert len(index) == 22 and index.manifest["index"]["factory"] == "HNSW8"


def test_resume_accepts_other_search_settings_and_builds_from_before_new_fields(
    model: ImpRAG, tmp_path: Path
) -> None:
    """Search-only fields (nprobe, ef_search, rerank, mmap) may change on resume; a build.json written
    before IndexConfig gained a field resumes as if it had the field's default."""
    _interrupt_on_call(model, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    del model.embed_passages  # the class's method again
    started = json.loads((tmp_path / "idx" / "build.json").read_text())
    for added in ("ef_construction", "mmap"):
        del started["index"][added]
    (tmp_path / "idx" / "build.json").write_text(json.dumps(started))
    index = build_index(model, tmp_path / "idx", PASSAGES, small(nprobe=3, mmap=True), progress=False)
    assert len(index) == 22 and index.manifest["index"]["nprobe"] == 3 and index.manifest["index"]["mmap"]


def test_a_different_model_is_a_stale_index_until_refreshed(model: ImpRAG, tokenizer, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    other = ImpRAG(tiny_model("llama", seed=1), tokenizer, LayerSplit(1, 3))
    with pytest.raises(StaleIndexError, match=r"stale.*imprag index --refresh"):
        PassageIndex.load(tmp_path / "idx", other)
    deeper = ImpRAG(model.model, tokenizer, LayerSplit(2, 3))
    with pytest.raises(StaleIndexError, match="b differ"):
        PassageIndex.load(tmp_path / "idx", deeper)
    # Same weights, only the top layers changed: still fresh (E_p depends on layers 0..b only).
    with torch.no_grad():
        model.model.model.layers[4].mlp.down_proj.weight.mul_(2.0)
    PassageIndex.load(tmp_path / "idx", model)
    # Training the bottom layers in place makes it stale (the fingerprint cache notices the change).
    with torch.no_grad():
        model.model.model.layers[0].self_attn.k_proj.weight.add_(0.01)
    with pytest.raises(StaleIndexError):
        PassageIndex.load(tmp_path / "idx", model)
    refreshed = build_index(model, tmp_path / "idx", None, small(), progress=False)
    assert refreshed.manifest["model"]["fingerprint"] == model.retrieval_fingerprint()
    assert_close(torch.from_numpy(vectors_of(refreshed)), model.embed_passages([p.content for p in PASSAGES]))


def test_an_index_is_valid_for_fp32_and_bf16_loads_of_the_same_weights(
    model: ImpRAG, tokenizer, tmp_path: Path
) -> None:
    """dtype "auto" differs by machine: an index built where it means fp32 serves a bf16 load, and back.
    The weights are rounded to bf16 first, so both loads hold the same values (as a checkpoint would)."""
    with torch.no_grad():
        for p in model.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    half = ImpRAG(copy.deepcopy(model.model).to(torch.bfloat16), tokenizer, model.split)
    for built, used in ((model, half), (half, model)):
        name = str(built.backbone.dtype)
        index = build_index(built, tmp_path / name, PASSAGES, small(), progress=False)
        assert index.manifest["model"]["dtype"] == name.removeprefix("torch.")
        loaded = PassageIndex.load(tmp_path / name, used)  # not stale
        stored = torch.from_numpy(vectors_of(loaded))
        fresh = used.embed_passages([p.content for p in PASSAGES])
        cosine = torch.nn.functional.cosine_similarity(stored, fresh, dim=1)
        assert cosine.min() > 0.99, cosine  # the same vectors up to bf16 rounding


def test_add_change_and_delete_in_place(model: ImpRAG, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES[:10], small(), progress=False)
    index = PassageIndex.load(tmp_path / "idx", model, writable=True)
    changed = Passage(id="p3", title="Topic 3", text="A completely different text about a festival.")
    counts = index.add(model, [PASSAGES[2], changed, PASSAGES[15]])
    assert counts == {"added": 1, "changed": 1, "unchanged": 1}
    assert index.store.rows_of(["p3", "p15"]) == [3, 10]
    assert_close(torch.from_numpy(stored(index, 3)), model.embed_passages([changed.content])[0])
    assert index.delete(["p0", "p15"]) == 2
    index.close()  # releases the write lock for the next writer
    again = PassageIndex.load(tmp_path / "idx", model)
    assert len(again) == 9 and again.manifest["count"] == 9
    hits = again.search(model.embed_queries(PROMPTS), 9)[0]
    assert set(hits.flatten().tolist()) == set(range(1, 10))
    assert again.fetch([3])[0].text == changed.text
    # An id given twice counts once, with its last content; its vector is that content's.
    twice = [Passage(id="p20", title="T", text="first"), Passage(id="p20", title="T", text="second")]
    index = PassageIndex.load(tmp_path / "idx", model, writable=True)
    assert index.add(model, twice) == {"added": 1, "changed": 0, "unchanged": 0}
    (row,) = index.store.rows_of(["p20"])
    assert index.fetch([row])[0].text == "second"
    assert_close(torch.from_numpy(stored(index, row)), model.embed_passages([twice[1].content])[0])


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8", "PQ4x4", "PQ4x4,Refine(Flat)"])
def test_other_faiss_factories(model: ImpRAG, tmp_path: Path, factory: str) -> None:
    config = small(factory=factory, nprobe=4, rerank=5)
    index = build_index(model, tmp_path / "idx", PASSAGES, config, progress=False)
    assert len(index) == 22 and index.manifest["index"]["factory"] == factory
    ids, _ = index.search(model.embed_queries(PROMPTS), 5)
    assert ids.shape == (2, 5) and bool((ids >= 0).all())
    exact = (model.embed_queries(PROMPTS) @ model.embed_passages([p.content for p in PASSAGES]).T).topk(5)
    if factory == "IVF4,Flat":  # probing every list makes IVF exact
        assert ids.tolist() == exact.indices.tolist()
    if factory.endswith("Refine(Flat)"):  # re-scoring 5 * 5 of 22 candidates exactly
        assert index.manifest["index"]["rerank"] == 5
        refine = faiss.downcast_index(index.faiss.index)
        assert isinstance(refine, faiss.IndexRefine) and refine.k_factor == 5
        _, scores = index.search(model.embed_queries(PROMPTS), 5)
        assert_close(scores, exact.values, rtol=1e-4, atol=1e-4)  # exact scores from the refine codes
    if factory == "HNSW8":  # no vector removal: refused before the store changes, the index stays whole
        writable = PassageIndex.load(tmp_path / "idx", model, writable=True)
        with pytest.raises(InvalidIndexError, match=r"cannot remove vectors.*nothing was changed"):
            writable.delete(["p1"])
        with pytest.raises(InvalidIndexError, match=r"cannot remove vectors.*nothing was changed"):
            writable.add(model, [Passage(id="p1", title="Topic 1", text="changed")])
        again = PassageIndex.load(tmp_path / "idx", model)
        assert again.store.rows_of(["p1"]) == [1] and again.fetch([1])[0].text == PASSAGES[1].text
        # Adding new passages needs no removal and works.
        assert writable.add(model, [Passage(id="new", title="N", text="a new one")])["added"] == 1
        assert len(PassageIndex.load(tmp_path / "idx", model)) == 23


def exact_top(model: ImpRAG, passages: list[Passage], rows: list[int], k: int) -> list[list[int]]:
    """The store rows of the exact top-k over `passages` (held at `rows`) for PROMPTS."""
    scores = model.embed_queries(PROMPTS) @ model.embed_passages([p.content for p in passages]).T
    return torch.tensor(rows)[scores.topk(k).indices].tolist()


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,PQ4x4", "PCAR8,IVF4,SQ8"])
def test_deleting_from_an_ivf_keeps_every_hit_on_its_own_row(
    model: ImpRAG, tmp_path: Path, factory: str
) -> None:
    """An IVF holds the store rows as its own ids. Under an ID map (what imprag built before) a removal
    leaves the IVF's positions as they were while the map compacts, so every later hit came back as
    another row: every top-6 below differed from exact search (measured with the ID map)."""
    build_index(model, tmp_path / "idx", PASSAGES, small(factory=factory, nprobe=4), progress=False)
    with PassageIndex.load(tmp_path / "idx", model, writable=True) as index:
        assert not isinstance(index.faiss, faiss.IndexIDMap)
        assert index.delete(["p0", "p3", "p4"]) == 3
    index = PassageIndex.load(tmp_path / "idx", model)
    kept = [i for i in range(len(PASSAGES)) if i not in (0, 3, 4)]
    ids = index.search(model.embed_queries(PROMPTS), 6)[0].tolist()
    expected = exact_top(model, [PASSAGES[i] for i in kept], kept, 6)
    if factory == "IVF4,Flat":  # every list probed: exact
        assert ids == expected
    else:  # compressed codes may swap near ties, never name a deleted or foreign row
        assert all(len(set(got) & set(want)) >= 4 for got, want in zip(ids, expected, strict=True))
        assert not {row for top in ids for row in top} & {0, 3, 4}


def legacy_ivf(model: ImpRAG, directory: Path, removed: int | None = None) -> None:
    """Replace `directory`'s vectors by what imprag built before `new_faiss_index`: IDMap2 over the IVF,
    the rows added in a shuffled order (as a refresh over a store with gaps adds them), so the IVF's
    positions are not the rows; `removed`: one row taken out the old way (the map compacted, the IVF's
    positions left as they were), with the manifest's count following it as the old update wrote it."""
    old = faiss.index_factory(model.dim, "IDMap2,IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    vectors = model.embed_passages([p.content for p in PASSAGES]).numpy()
    mean = np.asarray(read_manifest(directory)["index"]["mean"], dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(PASSAGES))
    old.train(vectors - mean)
    old.add_with_ids(vectors[order] - mean, order)
    if removed is not None:
        old.remove_ids(np.asarray([removed]))
        manifest = json.loads((directory / MANIFEST).read_text())
        manifest["count"] = int(old.ntotal)
        (directory / MANIFEST).write_text(json.dumps(manifest))
    faiss.write_index(old, str(directory / "vectors.faiss"))


def test_an_id_map_over_an_ivf_is_repaired_before_its_first_removal(model: ImpRAG, tmp_path: Path) -> None:
    """An index built before `new_faiss_index` (IDMap2 over an IVF) searches correctly until a removal;
    `delete` first writes the map's ids into the IVF's lists, then removes, and saves the repaired form.
    One that an old update already removed from is refused with the command that rebuilds it."""
    build_index(model, tmp_path / "idx", PASSAGES, small(factory="IVF4,Flat", nprobe=4), progress=False)
    legacy_ivf(model, tmp_path / "idx")
    with PassageIndex.load(tmp_path / "idx", model, writable=True) as index:
        assert isinstance(index.faiss, faiss.IndexIDMap2)
        everything = list(range(len(PASSAGES)))
        assert index.search(model.embed_queries(PROMPTS), 6)[0].tolist() == exact_top(
            model, PASSAGES, everything, 6
        )
        index.delete(["p1", "p2"])
    index = PassageIndex.load(tmp_path / "idx", model)
    assert isinstance(index.faiss, faiss.IndexIVF)
    kept = [i for i in range(len(PASSAGES)) if i not in (1, 2)]
    assert index.search(model.embed_queries(PROMPTS), 6)[0].tolist() == exact_top(
        model, [PASSAGES[i] for i in kept], kept, 6
    )

    build_index(model, tmp_path / "hit", PASSAGES, small(factory="IVF4,Flat", nprobe=4), progress=False)
    legacy_ivf(model, tmp_path / "hit", removed=5)
    refused = pytest.raises(InvalidIndexError, match=r"lost the mapping .*--refresh --out .*nothing was")
    with PassageIndex.load(tmp_path / "hit", model, writable=True) as damaged, refused:
        damaged.delete(["p1"])
    assert PassageIndex.load(tmp_path / "hit", model).store.rows_of(["p1"]) == [1]


def test_ivf_kmeans_runs_on_the_gpus_when_faiss_has_them(
    model: ImpRAG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faiss-gpu: the IVF's k-means assigns through `index_cpu_to_all_gpus` of an exact index of the
    quantizer's metric. No GPU here: a stand-in records the call and returns the CPU index, and the build
    equals the one without it (the same k-means), the stand-in detached after training."""
    config = small(factory="IVF4,Flat", nprobe=4)
    cpu = build_index(model, tmp_path / "cpu", PASSAGES, config, progress=False)
    cloned: list[faiss.Index] = []

    def to_gpus(index: faiss.Index) -> faiss.Index:
        cloned.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus)
    gpu = build_index(model, tmp_path / "gpu", PASSAGES, config, progress=False)
    [flat] = cloned
    assert isinstance(flat, faiss.IndexFlat) and flat.metric_type == faiss.METRIC_INNER_PRODUCT
    assert flat.ntotal == 4  # the centroids k-means assigned against
    assert faiss.extract_index_ivf(gpu.faiss).clustering_index is None
    queries = model.embed_queries(PROMPTS)
    for got, want in zip(gpu.search(queries, 6), cpu.search(queries, 6), strict=True):
        assert_close(got, want)


def test_hnsw_is_built_with_the_configured_breadth(model: ImpRAG, tmp_path: Path) -> None:
    """IndexConfig.ef_construction reaches FAISS's graph (and its file): the default is FAISS's 40."""
    for factory, breadth in (("HNSW8", 40), ("HNSW8", 17), ("PCAR8,HNSW8", 17)):
        config = small(factory=factory, ef_construction=breadth)
        out = tmp_path / f"{factory}-{breadth}"
        built = build_index(model, out, PASSAGES, config, progress=False)
        assert built.manifest["index"]["ef_construction"] == breadth
        loaded = PassageIndex.load(out, model)  # owns what `graph` points into: kept alive
        graph = hnsw_graph(loaded.faiss)
        assert graph is not None and graph.hnsw.efConstruction == breadth
    with pytest.raises(ConfigError, match="ef_construction must be >= 1"):
        small(factory="HNSW8", ef_construction=0)


def mapped(index: faiss.Index) -> float:
    """Bytes per vector of the arrays `index` reads from its file (not owned: memory-mapped): the codes of
    flat-code indexes and an HNSW's links."""
    index = faiss.downcast_index(index)
    total = 0.0
    for name in ("index", "base_index", "refine_index", "storage"):
        inner = getattr(index, name, None)
        if isinstance(inner, faiss.Index):
            total += mapped(inner)
    if isinstance(index, faiss.IndexFlatCodes) and not index.codes.is_owned:
        total += index.code_size
    if isinstance(index, faiss.IndexHNSW) and not index.hnsw.neighbors.is_owned:
        total += index.hnsw.neighbors.size() * 4 / index.ntotal
    return total


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF2,PQ4x4fs,Refine(Flat)"])
def test_mmap_leaves_the_uncompressed_codes_in_the_file(model: ImpRAG, tmp_path: Path, factory: str) -> None:
    """IndexConfig.mmap: searches read the Flat / HNSW storage and links / Refine(Flat) codes from
    vectors.faiss memory-mapped (the bytes `mapped_bytes` counts; HNSW's links approximately) and return
    what the index loaded into RAM returns; a writable open loads everything, and a read-only one refuses
    changes. (IVF lists other than fast-scan ones are mapped too: measured by RSS, not asserted here.)"""
    config = small(factory=factory, nprobe=2, rerank=8)
    build_index(model, tmp_path / "ram", PASSAGES, config, progress=False)
    built = build_index(model, tmp_path / "mmap", PASSAGES, replace(config, mmap=True), progress=False)
    assert built.manifest["index"]["mmap"] is True
    ram, mm = PassageIndex.load(tmp_path / "ram", model), PassageIndex.load(tmp_path / "mmap", model)
    assert mapped(ram.faiss) == 0
    assert mapped(mm.faiss) == pytest.approx(mapped_bytes(model.dim, factory), rel=0.1)
    assert mapped(mm.faiss) >= model.dim * 4  # the exact vectors at least
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert str(tmp_path / "mmap" / "vectors.faiss") in maps.read_text()
    queries = model.embed_queries(PROMPTS)
    for got, want in zip(mm.search(queries, 5), ram.search(queries, 5), strict=True):
        assert_close(got, want)
    with pytest.raises(InvalidIndexError, match=r"open for reading .*writable=True"):
        mm.delete(["p1"])
    with pytest.raises(InvalidIndexError, match=r"open for reading .*writable=True"):
        mm.add(model, [Passage(id="new", title="N", text="a new one")])
    with PassageIndex.load(tmp_path / "mmap", model, writable=True) as writable:
        assert mapped(writable.faiss) == 0
        writable.add(model, [Passage(id="new", title="N", text="a new one")])
    assert len(PassageIndex.load(tmp_path / "mmap", model)) == len(PASSAGES) + 1


def test_approximate_indexes_store_centred_vectors_and_report_uncentred_scores(
    model: ImpRAG, tmp_path: Path
) -> None:
    """IndexConfig.center: every stored vector is E_p minus the mean, the search adds E_q . mean back, so
    the ids and scores are those of exact search over the uncentred E_p (ranking is invariant to
    subtracting one vector from every passage); Flat stays uncentred unless asked; `add` centres too."""
    queries = model.embed_queries(PROMPTS)
    e_p = model.embed_passages([p.content for p in PASSAGES])
    exact = (queries @ e_p.T).topk(6)
    hnsw = build_index(
        model, tmp_path / "hnsw", PASSAGES, small(factory="HNSW8", ef_search=64), progress=False
    )
    mean = np.asarray(hnsw.manifest["index"]["mean"], dtype=np.float32)
    assert hnsw.manifest["index"]["center"] == "auto" and mean.shape == (e_p.shape[1],)
    centred = vectors_of(hnsw)
    assert_close(torch.from_numpy(centred + mean), e_p, rtol=1e-5, atol=1e-5)
    assert float(np.abs(centred.mean(0)).max()) < 0.05 * float(np.abs(mean).max())  # centred
    ids, scores = hnsw.search(queries, 6)
    assert ids.tolist() == exact.indices.tolist()
    assert_close(scores, exact.values, rtol=1e-4, atol=1e-4)

    flat = build_index(model, tmp_path / "flat", PASSAGES, small(), progress=False)
    assert flat.manifest["index"]["mean"] is None and flat.mean is None
    forced = build_index(model, tmp_path / "forced", PASSAGES, small(center=True), progress=False)
    assert forced.mean is not None
    assert_close(forced.vectors()[1], flat.vectors()[1], rtol=1e-5, atol=1e-5)  # exact vectors come back
    for index in (flat, forced):
        ids, scores = index.search(queries, 6)
        assert ids.tolist() == exact.indices.tolist()
        assert_close(scores, exact.values, rtol=1e-4, atol=1e-4)

    ivf = build_index(model, tmp_path / "ivf", PASSAGES, small(factory="IVF2,Flat", nprobe=2), progress=False)
    ivf.close()
    new = Passage(id="new", title="New", text="The capital number 8 is new.")
    with PassageIndex.load(tmp_path / "ivf", model, writable=True) as writable:
        writable.add(model, [new])
    ivf = PassageIndex.load(tmp_path / "ivf", model)
    row = ivf.store.rows_of(["new"])[0]
    added = stored(ivf, row) + ivf.mean
    assert_close(torch.from_numpy(added), model.embed_passages([new.content])[0], rtol=1e-5, atol=1e-5)
    everything = torch.cat([e_p, model.embed_passages([new.content])])
    ids, scores = ivf.search(queries, 6)
    assert ids.tolist() == (queries @ everything.T).topk(6).indices.tolist()
    assert_close(scores, (queries @ everything.T).topk(6).values, rtol=1e-4, atol=1e-4)


def test_untrainable_factory_is_explained(model: ImpRAG, tmp_path: Path) -> None:
    with pytest.raises(InvalidIndexError, match="could not train 'IVF64,PQ4' on 22 vectors"):
        build_index(model, tmp_path / "idx", PASSAGES, small(factory="IVF64,PQ4"), progress=False)


def test_a_factory_faiss_cannot_build_is_refused_before_any_work(model: ImpRAG, tmp_path: Path) -> None:
    """FAISS builds the factory only after every shard is encoded; a typo used to surface there, hours in,
    as a C++ RuntimeError. It is checked first, with FAISS's own reason in one line."""
    with pytest.raises(InvalidIndexError, match=r"'Bogus99' for 32-d vectors \(could not parse index string"):
        build_index(model, tmp_path / "idx", PASSAGES, small(factory="Bogus99"), progress=False)
    with pytest.raises(InvalidIndexError, match=r"'PQ5'.*a multiple of the number of subquantizers"):
        build_index(model, tmp_path / "idx", PASSAGES, small(factory="PQ5"), progress=False)
    assert not (tmp_path / "idx").exists()


def test_bad_directories(model: ImpRAG, tmp_path: Path) -> None:
    with pytest.raises(InvalidIndexError, match="no such index directory"):
        PassageIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidIndexError, match="not an imprag index"):
        PassageIndex.load(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidIndexError, match="exists and is not an imprag index"):
        build_index(model, tmp_path / "other", PASSAGES, small(), progress=False)
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    with pytest.raises(InvalidIndexError, match="already holds a complete index"):
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    (tmp_path / "idx" / "vectors.faiss").unlink()
    with pytest.raises(InvalidIndexError, match=r"vectors\.faiss is missing"):
        PassageIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / MANIFEST).write_text("{oops")
    with pytest.raises(InvalidIndexError, match="not valid JSON"):
        read_manifest(tmp_path / "idx")
    index = build_index(model, tmp_path / "ok", PASSAGES, small(), progress=False)
    with pytest.raises(InvalidIndexError, match="k=30 passages requested but the index holds only 22"):
        index.search(model.embed_queries(PROMPTS), 30)


def test_two_processes_build_the_same_index_as_one(model: ImpRAG, tmp_path: Path) -> None:
    checkpoint = model.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in PASSAGES)
    )
    args = ["index", str(corpus), "--model", str(checkpoint), "--shard-size", "4", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "imprag.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, "-m", "imprag.cli", *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    a, b = PassageIndex.load(tmp_path / "one"), PassageIndex.load(tmp_path / "two")
    assert b.manifest["build"]["processes"] == 2 and a.manifest["build"]["processes"] == 1
    assert a.manifest["corpus_hash"] == b.manifest["corpus_hash"] and len(a) == len(b) == 22
    np.testing.assert_allclose(vectors_of(a), vectors_of(b), rtol=1e-5, atol=1e-6)


def _interrupt_on_call(model: ImpRAG, call: int) -> dict[str, int]:
    """Make the model's `call`-th embed_passages call raise KeyboardInterrupt (as if the process were killed
    mid-build); returns the call counter, which a test may reset to count what a resumed build encodes."""
    real, calls = model.embed_passages, {"n": 0}

    def dies(texts, batch_size=32):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(texts, batch_size=batch_size)

    model.embed_passages = dies  # type: ignore[method-assign]
    return calls


def test_refresh_never_reuses_shards_of_another_model(model: ImpRAG, tokenizer, tmp_path: Path) -> None:
    _interrupt_on_call(model, 3)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    other = ImpRAG(tiny_model("llama", seed=5), tokenizer, LayerSplit(1, 3))
    refreshed = build_index(other, tmp_path / "idx", None, small(), progress=False)
    assert_close(torch.from_numpy(vectors_of(refreshed)), other.embed_passages([p.content for p in PASSAGES]))


def test_an_update_interrupted_while_encoding_changes_nothing(model: ImpRAG, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    index = PassageIndex.load(tmp_path / "idx", model, writable=True)
    _interrupt_on_call(model, 1)
    with pytest.raises(KeyboardInterrupt):
        index.add(
            model, [Passage(id="p0", title="Topic 0", text="New text."), Passage(id="x", title="", text="y")]
        )
    del model.embed_passages
    again = PassageIndex.load(tmp_path / "idx", model)
    assert (
        len(again) == 22
        and again.fetch([0])[0].text == PASSAGES[0].text
        and again.store.rows_of(["x"]) == [None]
    )


def test_interrupted_update_is_detected_and_refresh_repairs_it(
    model: ImpRAG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    index = PassageIndex.load(tmp_path / "idx", model, writable=True)
    changed = Passage(id="p0", title="Topic 0", text="New text for passage zero.")

    def dies(*args, **kwargs):  # killed after the store committed, before the vectors were written
        raise KeyboardInterrupt

    monkeypatch.setattr(PassageIndex, "_commit", dies)
    with pytest.raises(KeyboardInterrupt):
        index.add(model, [changed])
    index.close()  # what the killed process's exit does to its lock
    monkeypatch.undo()
    with pytest.raises(InvalidIndexError, match="disagree"):
        PassageIndex.load(tmp_path / "idx", model)
    repaired = build_index(model, tmp_path / "idx", None, small(), progress=False)
    assert_close(torch.from_numpy(stored(repaired, 0)), model.embed_passages([changed.content])[0])


def test_manifest_without_required_keys_is_damaged(model: ImpRAG, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(InvalidIndexError, match="lacks"):
        read_manifest(tmp_path / "idx")
    with pytest.raises(InvalidIndexError, match="lacks"):
        build_index(model, tmp_path / "idx", None, small(), progress=False)


def test_one_writer_at_a_time(model: ImpRAG, tmp_path: Path) -> None:
    """While a writer holds an index's lock (here: one open writable), a build or a second writable open
    is refused before any work; readers are not; closing releases it (issue 16: two concurrent
    `update --add` runs lost one's vectors while both reported success)."""
    built = build_index(model, tmp_path / "idx", PASSAGES[:10], small(), progress=False)
    assert len(built) == 10
    writer = PassageIndex.load(tmp_path / "idx", model, writable=True)
    with pytest.raises(LockedError, match=r"idx is being written by another imprag process; imprag update"):
        PassageIndex.load(tmp_path / "idx", model, writable=True)
    with pytest.raises(LockedError, match="imprag index waits for no one"):
        build_index(model, tmp_path / "idx", PASSAGES, small(), overwrite=True, progress=False)
    reader = PassageIndex.load(tmp_path / "idx", model)  # readers take no lock
    assert len(reader) == 10 and (tmp_path / "idx" / MANIFEST).is_file()  # the refused build did nothing
    writer.add(model, PASSAGES[10:12])
    writer.close()
    writer.close()  # idempotent
    with PassageIndex.load(tmp_path / "idx", model, writable=True) as again:  # released
        assert len(again) == 12
    with writer_lock(tmp_path / "fresh", "a test"):  # a build into a locked new folder writes nothing
        with pytest.raises(LockedError):
            build_index(model, tmp_path / "fresh", PASSAGES, small(), progress=False)
        assert [p.name for p in (tmp_path / "fresh").iterdir()] == [LOCK]
    build_index(model, tmp_path / "fresh", PASSAGES, small(), progress=False)  # the lock file is not foreign
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidIndexError, match="exists and is not an imprag index"):
        build_index(model, tmp_path / "mine", PASSAGES, small(), progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # refused before the lock file
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidIndexError, match="is a file, not an index directory"):
        build_index(model, tmp_path / "afile", PASSAGES, small(), progress=False)


def test_a_writer_killed_by_sigkill_releases_its_lock(model: ImpRAG, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    build_index(model, tmp_path / "idx", PASSAGES[:4], small(), progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from imprag.io import writer_lock\n"
         "with writer_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path / "idx")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError):
            PassageIndex.load(tmp_path / "idx", model, writable=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with PassageIndex.load(tmp_path / "idx", model, writable=True) as index:  # the OS released it
        assert len(index) == 4


def test_an_index_that_lost_its_manifest_names_the_command_that_repairs_it(
    model: ImpRAG, tmp_path: Path
) -> None:
    built = build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    expected = torch.from_numpy(stored(built, 0))
    (tmp_path / "idx" / MANIFEST).unlink()
    with pytest.raises(InvalidIndexError, match=r"--refresh --out") as info:
        PassageIndex.load(tmp_path / "idx", model)
    assert "no manifest.json" in str(info.value)
    repaired = build_index(model, tmp_path / "idx", None, small(), progress=False)  # what it names
    assert len(repaired) == len(PASSAGES)
    assert_close(torch.from_numpy(stored(repaired, 0)), expected)


def test_damaged_manifests_and_vectors_get_one_line_each(model: ImpRAG, tmp_path: Path) -> None:
    """Random bytes, a `model` record without `b` or of the wrong type, and vectors of another dimension:
    each an InvalidIndexError naming the file (no UnicodeDecodeError, KeyError, AttributeError or faiss
    AssertionError)."""
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    path = tmp_path / "idx" / MANIFEST
    good = json.loads(path.read_text())
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(InvalidIndexError, match=r"manifest\.json is not valid JSON"):
        PassageIndex.load(tmp_path / "idx", model)
    cases = [
        ({**good, "model": {k: v for k, v in good["model"].items() if k != "b"}}, r"lacks \['model\.b'\]"),
        ({**good, "model": "smollm2-135m"}, r"wrong type for \['model'\]"),
        ({**good, "dim": "192"}, r"wrong type for \['dim'\]"),
    ]
    for manifest, message in cases:
        path.write_text(json.dumps(manifest))
        with pytest.raises(InvalidIndexError, match=message) as info:
            PassageIndex.load(tmp_path / "idx", model)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.write_text(json.dumps({**good, "dim": good["dim"] + 1}))
    with pytest.raises(InvalidIndexError, match=rf"{good['dim']}-dimensional vectors but the manifest says"):
        PassageIndex.load(tmp_path / "idx")


def test_a_refresh_resumed_with_another_shard_size_starts_over(model: ImpRAG, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    with torch.no_grad():
        model.model.model.layers[0].self_attn.k_proj.weight.add_(0.01)
    _interrupt_on_call(model, 3)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", None, small(), progress=False)  # shards of 4 rows kept
    del model.embed_passages
    refreshed = build_index(
        model, tmp_path / "idx", None, IndexConfig(shard_size=6, batch_size=3), progress=False
    )
    assert len(refreshed) == 22
    assert_close(torch.from_numpy(vectors_of(refreshed)), model.embed_passages([p.content for p in PASSAGES]))


def test_an_index_loaded_without_a_model_is_checked_when_generating(
    model: ImpRAG, tokenizer, tmp_path: Path
) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    index = PassageIndex.load(tmp_path / "idx")  # no model to check against yet
    model.generate(PROMPTS[:1], index=index, k=2, max_new_tokens=1)
    other = ImpRAG(tiny_model("llama", seed=7), tokenizer, LayerSplit(1, 3))
    with pytest.raises(StaleIndexError, match="stale"):
        other.generate(PROMPTS[:1], index=index, k=2, max_new_tokens=1)


def test_a_damaged_vectors_file_is_an_index_error(model: ImpRAG, tmp_path: Path) -> None:
    build_index(model, tmp_path / "idx", PASSAGES, small(), progress=False)
    vectors = tmp_path / "idx" / "vectors.faiss"
    vectors.write_bytes(vectors.read_bytes()[:100])
    with pytest.raises(InvalidIndexError, match=r"vectors\.faiss cannot be read.*--refresh"):
        PassageIndex.load(tmp_path / "idx")
    assert build_index(model, tmp_path / "idx", None, small(), progress=False) is not None


def test_an_index_of_layer_b_inputs_serves_every_trained_retrieval_key(model: ImpRAG, tmp_path: Path) -> None:
    """retrieval_key=trained: the index holds f_p (hidden-size), a model whose W_ret changed still loads it
    (not stale), search ranks by E_q . W_ret f_p, and a base-key model is refused with the settings named."""
    from dataclasses import replace

    keyed = ImpRAG(model.model, model.tokenizer, LayerSplit(1, 3), passages="frozen")
    embedding = replace(keyed.config.embedding, pooling="mean", retrieval_key="trained")
    keyed.config = replace(keyed.config, embedding=embedding)
    index = build_index(keyed, tmp_path / "idx", PASSAGES, small(), progress=False)
    assert index.dim == keyed.index_dim == model.model.config.hidden_size
    assert index.manifest["model"]["embedding"]["retrieval_key"] == "trained"
    with torch.no_grad():
        keyed.retrieval_key.add_(torch.randn_like(keyed.retrieval_key), alpha=0.3)  # as training moves it
    index = PassageIndex.load(tmp_path / "idx", keyed)
    f_p = keyed.embed_passages([p.content for p in PASSAGES])
    assert_close(torch.from_numpy(vectors_of(index)), f_p)
    want = (keyed.embed_queries(PROMPTS) @ keyed.retrieval_key @ f_p.T).topk(3).indices.tolist()
    assert [[p.row for p in row] for row in keyed.retrieve(PROMPTS, index, k=3)] == want
    base = ImpRAG(model.model, model.tokenizer, LayerSplit(1, 3), passages="frozen")
    base.config = replace(base.config, embedding=replace(base.config.embedding, pooling="mean"))
    with pytest.raises(StaleIndexError, match="retrieval_key"):
        PassageIndex.load(tmp_path / "idx", base)


def test_overwrite_of_a_complete_index_keeps_it_whole_until_the_new_one_is_done(
    model: ImpRAG, tmp_path: Path
) -> None:
    """--overwrite builds aside: a corpus that fails while being read, or a build killed while encoding,
    leaves the old index searchable and bit-identical; the resumed rebuild swaps in the new one and leaves
    no staging folder (issue 16: the old files were deleted before the new corpus was read)."""
    from imprag.retrieval.index import REBUILD

    old = build_index(model, tmp_path / "idx", PASSAGES[:10], small(), progress=False)
    before, manifest = vectors_of(old), (tmp_path / "idx" / MANIFEST).read_text()
    old.store.close()

    def unchanged() -> None:
        again = PassageIndex.load(tmp_path / "idx", model)
        assert len(again) == 10 and (tmp_path / "idx" / MANIFEST).read_text() == manifest
        np.testing.assert_array_equal(vectors_of(again), before)
        ids, _ = again.search(model.embed_queries(PROMPTS), 2)
        assert ids.shape == (2, 2)

    def broken():  # a corpus that fails after its first passages
        yield from PASSAGES[10:13]
        raise ValueError("line 4: not valid JSON")

    with pytest.raises(ValueError, match="line 4"):
        build_index(model, tmp_path / "idx", broken(), small(), overwrite=True, progress=False)
    unchanged()
    real = model.embed_passages
    calls = _interrupt_on_call(model, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, tmp_path / "idx", PASSAGES[5:], small(), overwrite=True, progress=False)
    unchanged()
    calls["n"] = -100
    new = build_index(model, tmp_path / "idx", PASSAGES[5:], small(), overwrite=True, progress=False)
    model.embed_passages = real  # type: ignore[method-assign]
    assert calls["n"] == -100 + 4  # 17 passages in 5 shards of 4, the first kept from before: resumed
    assert len(new) == 17 and not (tmp_path / "idx" / REBUILD).exists()
    reference = build_index(model, tmp_path / "ref", PASSAGES[5:], small(), progress=False)
    np.testing.assert_array_equal(vectors_of(new), vectors_of(reference))
    assert (
        new.manifest["corpus_hash"]
        == reference.manifest["corpus_hash"]
        != json.loads(manifest)["corpus_hash"]
    )
