"""The SQLite passage store: atomic builds, random access, keyset pagination, upsert/delete, corpus hash."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imprag.retrieval.corpus import CorpusError, Passage
from imprag.retrieval.store import BATCH, PassageStore, UpsertResult

PASSAGES = [
    Passage("paris", "Paris", "Paris is the capital of France.", {"lang": "en", "n": 1}),
    Passage("nile", "Nile", "The Nile flows into the Mediterranean.", {}),
    Passage("zurich", "Zürich", "Grüezi 世界 🌍", {"tags": ["a", "b"], "nested": {"x": None}}),
    Passage("untitled", "", "A passage without a title.", {}),
    Passage("mozart", "Mozart", "Mozart was a composer from Salzburg.", {"born": 1756}),
    Passage("rome", "Rome", "Rome is the capital of Italy.", {}),
    Passage("veloria", "Veloria", "The capital of Veloria is Quantum City.", {}),
]


def expected_hash(passages: list[Passage]) -> str:
    """The documented corpus hash, recomputed independently: sha256 over (id, digest) in row order."""
    h = hashlib.sha256()
    for p in passages:
        h.update(f"{p.id}\x00{p.digest}\n".encode())
    return h.hexdigest()[:32]


def many(n: int, prefix: str = "p") -> list[Passage]:
    return [Passage(f"{prefix}{i}", f"T{i}", f"text number {i}") for i in range(n)]


@pytest.fixture
def store_path(tmp_path) -> Path:
    store = PassageStore.build(tmp_path / "store.db", PASSAGES)
    store.close()
    return tmp_path / "store.db"


@pytest.fixture
def store(store_path) -> Iterator[PassageStore]:
    s = PassageStore(store_path, writable=True)
    yield s
    s.close()


def only_store_file(directory: Path, name: str = "store.db") -> None:
    assert sorted(p.name for p in directory.iterdir()) == [name]  # no temp or journal files left


# -- building and reading -------------------------------------------------------------------------------


def test_build_round_trips_passages_and_metadata(tmp_path):
    store = PassageStore.build(tmp_path / "sub" / "dir" / "store.db", PASSAGES)
    try:
        assert len(store) == len(PASSAGES)
        assert store.max_row == len(PASSAGES) - 1
        got = store.get(range(len(PASSAGES)))
        assert got == PASSAGES
        assert [p.meta for p in got] == [p.meta for p in PASSAGES]
        assert [p.digest for p in got] == [p.digest for p in PASSAGES]
        assert store.corpus_hash == expected_hash(PASSAGES)
    finally:
        store.close()
    only_store_file(tmp_path / "sub" / "dir")


def test_reopening_reads_the_same_store(store_path):
    store = PassageStore(store_path)
    try:
        assert store.get([0, 6]) == [PASSAGES[0], PASSAGES[6]]
        assert store.corpus_hash == expected_hash(PASSAGES)
    finally:
        store.close()


def test_build_accepts_a_generator_and_reports_progress(tmp_path):
    n = 2 * BATCH + 5
    seen: list[int] = []
    store = PassageStore.build(tmp_path / "store.db", iter(many(n)), progress=seen.append)
    try:
        assert seen == [BATCH, BATCH, 5]
        assert len(store) == n and store.max_row == n - 1
        assert store.get([0, BATCH, n - 1]) == [many(n)[0], many(n)[BATCH], many(n)[n - 1]]
        assert store.corpus_hash == expected_hash(many(n))
    finally:
        store.close()


def test_corpus_hash_depends_on_ids_contents_and_order(tmp_path):
    def hash_of(name: str, passages: list[Passage]) -> str:
        s = PassageStore.build(tmp_path / name, passages)
        try:
            return s.corpus_hash
        finally:
            s.close()

    base = hash_of("a.db", PASSAGES)
    assert hash_of("same.db", list(PASSAGES)) == base
    meta_only = [Passage(p.id, p.title, p.text, {"other": True}) for p in PASSAGES]
    assert hash_of("meta.db", meta_only) == base  # metadata is not content
    assert hash_of("order.db", PASSAGES[::-1]) != base
    assert hash_of("id.db", [Passage("PARIS", "Paris", PASSAGES[0].text), *PASSAGES[1:]]) != base
    assert hash_of("title.db", [Passage("paris", "PARIS", PASSAGES[0].text), *PASSAGES[1:]]) != base
    assert hash_of("text.db", [Passage("paris", "Paris", "changed"), *PASSAGES[1:]]) != base


def test_get_preserves_requested_order_and_duplicates(store):
    assert store.get([3, 0, 3, 6, 0]) == [PASSAGES[3], PASSAGES[0], PASSAGES[3], PASSAGES[6], PASSAGES[0]]
    assert store.get([]) == []


def test_get_accepts_numpy_rows(store):
    rows = np.array([[5, 1]], dtype=np.int64)[0]
    assert store.get(rows) == [PASSAGES[5], PASSAGES[1]]


def test_get_unknown_row_is_a_key_error_naming_it(store):
    with pytest.raises(KeyError, match=r"\[7, 99\]"):
        store.get([0, 99, 7])
    with pytest.raises(KeyError, match=r"\[-1\]"):
        store.get([-1])


def test_get_more_rows_than_one_sql_query_takes(tmp_path):
    n = 2000  # > 2 chunks of SQLite's 900 bound parameters
    passages = many(n)
    store = PassageStore.build(tmp_path / "store.db", passages)
    try:
        rows = [*range(n - 1, -1, -1), 0, 1999, 900, 899]
        assert [p.id for p in store.get(rows)] == [passages[r].id for r in rows]
    finally:
        store.close()


def test_rows_of_maps_ids_to_rows_and_none(store):
    assert store.rows_of(["mozart", "nope", "paris", "mozart"]) == [4, None, 0, 4]
    assert store.rows_of([]) == []


def test_rows_of_converts_ids_to_strings(tmp_path):
    store = PassageStore.build(tmp_path / "store.db", [Passage("0", "", "zero"), Passage("12", "", "twelve")])
    try:
        assert store.rows_of([12, 0, 3]) == [1, 0, None]
    finally:
        store.close()


# -- iteration ------------------------------------------------------------------------------------------


def test_iter_rows_batches_and_ranges(store):
    assert list(store.iter_rows(batch=3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(store.iter_rows(batch=7)) == [[0, 1, 2, 3, 4, 5, 6]]
    assert list(store.iter_rows(batch=100)) == [[0, 1, 2, 3, 4, 5, 6]]
    assert list(store.iter_rows(start=2, stop=5, batch=2)) == [[2, 3], [4]]
    assert list(store.iter_rows(start=5, batch=1)) == [[5], [6]]
    assert list(store.iter_rows(stop=2)) == [[0, 1]]
    assert list(store.iter_rows(start=7)) == []
    assert list(store.iter_rows(start=4, stop=4)) == []
    assert list(store.iter_rows(start=-10, stop=1)) == [[0]]


def test_iter_rows_skips_gaps_left_by_deletes(store):
    assert store.delete(["nile", "zurich", "rome"]) == [1, 2, 5]
    assert list(store.iter_rows(batch=2)) == [[0, 3], [4, 6]]
    assert list(store.iter_rows(start=1, stop=5, batch=10)) == [[3, 4]]
    assert list(store.iter_rows(start=1, stop=3)) == []
    assert list(store.iter_rows(start=5, batch=1)) == [[6]]


def test_iter_rows_after_deleting_the_last_rows(store):
    store.delete(["veloria", "rome"])
    assert store.max_row == 4
    assert list(store.iter_rows(batch=10)) == [[0, 1, 2, 3, 4]]


def test_iter_passages_yields_rows_with_their_passages(store):
    store.delete(["nile"])
    got = list(store.iter_passages(batch=4))
    assert [rows for rows, _ in got] == [[0, 2, 3, 4], [5, 6]]
    flat = [p for _, ps in got for p in ps]
    assert flat == [p for p in PASSAGES if p.id != "nile"]
    assert flat[1].meta == PASSAGES[2].meta


def test_iter_rows_over_several_default_batches(tmp_path):
    n = BATCH + 10
    store = PassageStore.build(tmp_path / "store.db", many(n))
    try:
        chunks = list(store.iter_rows())
        assert [len(c) for c in chunks] == [BATCH, 10]
        assert [r for c in chunks for r in c] == list(range(n))
    finally:
        store.close()


# -- upsert ---------------------------------------------------------------------------------------------


def test_upsert_adds_changes_in_place_and_skips_unchanged(store):
    changed_nile = Passage("nile", "Nile", "The Nile is the longest river.", {"v": 2})
    retitled = Passage("rome", "Roma", PASSAGES[5].text)
    new = [Passage("oslo", "Oslo", "Oslo is in Norway."), Passage("lima", "Lima", "Lima is in Peru.")]
    same_content_new_meta = Passage("paris", "Paris", PASSAGES[0].text, {"lang": "fr"})
    result = store.upsert([new[0], changed_nile, PASSAGES[3], retitled, same_content_new_meta, new[1]])
    assert result == UpsertResult(added=[7, 8], changed=[1, 5], unchanged=2)
    assert len(store) == 9 and store.max_row == 8
    assert store.get([1, 5, 7, 8]) == [changed_nile, retitled, *new]
    assert store.get([1])[0].meta == {"v": 2}
    assert store.rows_of(["nile", "rome", "oslo", "lima"]) == [1, 5, 7, 8]
    rows = [*PASSAGES]
    rows[1], rows[5] = changed_nile, retitled
    assert store.get(range(9)) == [*rows, *new]
    assert store.corpus_hash == expected_hash([*rows, *new])


def test_upsert_of_unchanged_content_keeps_the_hash(store):
    before = store.corpus_hash
    assert store.upsert(PASSAGES) == UpsertResult([], [], len(PASSAGES))
    assert store.upsert([]) == UpsertResult([], [], 0)
    assert store.corpus_hash == before
    assert len(store) == len(PASSAGES)


def test_corpus_hash_is_restored_when_content_is_restored(store):
    before = store.corpus_hash
    store.upsert([Passage("mozart", "Mozart", "Changed.")])
    assert store.corpus_hash != before
    assert store.upsert([PASSAGES[4]]).changed == [4]
    assert store.corpus_hash == before


def test_upsert_persists_across_reopen(store, store_path):
    store.upsert([Passage("oslo", "Oslo", "Oslo is in Norway.")])
    reopened = PassageStore(store_path)
    try:
        assert len(reopened) == len(PASSAGES) + 1
        assert reopened.get([7]) == [Passage("oslo", "Oslo", "Oslo is in Norway.")]
        assert reopened.corpus_hash == store.corpus_hash == expected_hash([*PASSAGES, reopened.get([7])[0]])
    finally:
        reopened.close()


def test_upsert_after_a_middle_delete_appends_after_the_last_row(store):
    store.delete(["zurich"])
    assert store.upsert([Passage("oslo", "Oslo", "x")]).added == [7]
    assert store.rows_of(["zurich", "oslo"]) == [None, 7]


def test_read_only_store_refuses_writes(store_path):
    store = PassageStore(store_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.upsert([Passage("oslo", "Oslo", "x")])
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.delete(["paris"])
        assert len(store) == len(PASSAGES)
        assert store.corpus_hash == expected_hash(PASSAGES)
    finally:
        store.close()


def test_upsert_reports_each_row_once_when_an_id_repeats_in_one_call(store):
    result = store.upsert(
        [
            Passage("oslo", "Oslo", "first"),
            Passage("oslo", "Oslo", "second"),
            Passage("nile", "Nile", "changed once"),
            Passage("nile", "Nile", "changed twice"),
        ]
    )
    assert store.get(store.rows_of(["oslo", "nile"])) == [
        Passage("oslo", "Oslo", "second"),
        Passage("nile", "Nile", "changed twice"),
    ]
    rows = result.added + result.changed
    assert sorted(rows) == sorted(set(rows)) == [1, 7]


# -- delete ---------------------------------------------------------------------------------------------


def test_delete_removes_rows_and_updates_the_hash(store):
    assert store.delete(["rome", "paris"]) == [5, 0]
    assert len(store) == len(PASSAGES) - 2
    assert store.rows_of(["rome", "paris", "nile"]) == [None, None, 1]
    with pytest.raises(KeyError):
        store.get([0])
    remaining = [p for p in PASSAGES if p.id not in ("rome", "paris")]
    assert store.get([1, 2, 3, 4, 6]) == remaining
    assert store.corpus_hash == expected_hash(remaining)


def test_delete_with_an_unknown_id_deletes_nothing(store):
    before = store.corpus_hash
    with pytest.raises(CorpusError) as err:
        store.delete(["paris", "atlantis", "nile", "el-dorado"])
    assert "atlantis" in str(err.value) and "el-dorado" in str(err.value)
    assert "paris" not in str(err.value)
    assert "nothing was deleted" in str(err.value)
    assert len(store) == len(PASSAGES)
    assert store.rows_of(["paris", "nile"]) == [0, 1]
    assert store.corpus_hash == before


def test_delete_then_readd_gets_a_new_row_and_same_content_hash_is_order_sensitive(store):
    store.delete(["paris"])
    assert store.upsert([PASSAGES[0]]).added == [7]
    assert store.corpus_hash == expected_hash([*PASSAGES[1:], PASSAGES[0]])
    assert store.corpus_hash != expected_hash(PASSAGES)


# -- failures leave nothing behind ----------------------------------------------------------------------


def test_duplicate_id_in_the_first_batch_names_the_id(tmp_path):
    passages = [*PASSAGES[:3], Passage("nile", "Other", "dup")]
    with pytest.raises(CorpusError) as err:
        PassageStore.build(tmp_path / "store.db", passages)
    assert "duplicate passage id 'nile'" in str(err.value)
    assert "passage #3" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("duplicate_at", "of"),
    [(BATCH + 100, 5), (BATCH + 100, BATCH + 50), (2 * BATCH + 3, BATCH - 1)],
    ids=["later-batch-repeats-earlier-batch", "repeat-within-later-batch", "third-batch"],
)
def test_duplicate_id_in_a_later_batch_names_the_id_and_leaves_no_file(tmp_path, duplicate_at, of):
    passages = many(2 * BATCH + 10)
    passages[duplicate_at] = Passage(f"p{of}", "Dup", "a repeated id")
    target = tmp_path / "out" / "store.db"
    with pytest.raises(CorpusError) as err:
        PassageStore.build(target, passages)
    assert f"duplicate passage id 'p{of}'" in str(err.value)
    assert f"passage #{duplicate_at}" in str(err.value)
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_empty_corpus_is_an_error_and_leaves_no_file(tmp_path):
    with pytest.raises(CorpusError, match="no passages"):
        PassageStore.build(tmp_path / "store.db", [])
    assert list(tmp_path.iterdir()) == []


class Boom(RuntimeError):
    pass


def failing(n: int) -> Iterator[Passage]:
    yield from many(n)
    raise Boom(f"reader failed after {n}")


@pytest.mark.parametrize("n", [0, 3, BATCH, BATCH + 3])
def test_exception_from_the_passages_iterator_leaves_no_store(tmp_path, n):
    with pytest.raises(Boom):
        PassageStore.build(tmp_path / "store.db", failing(n))
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_previous_store(store_path):
    for bad in (failing(BATCH + 3), [Passage("a", "", "x"), Passage("a", "", "y")], []):
        with pytest.raises((Boom, CorpusError)):
            PassageStore.build(store_path, bad)
        only_store_file(store_path.parent)
        store = PassageStore(store_path)
        try:
            assert len(store) == len(PASSAGES)
            assert store.corpus_hash == expected_hash(PASSAGES)
        finally:
            store.close()


def test_successful_rebuild_replaces_the_store(store_path):
    store = PassageStore.build(store_path, many(3))
    try:
        assert len(store) == 3
        assert store.rows_of(["paris", "p2"]) == [None, 2]
        assert store.corpus_hash == expected_hash(many(3))
    finally:
        store.close()
    only_store_file(store_path.parent)


# -- opening --------------------------------------------------------------------------------------------


def test_opening_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="no passage store here"):
        PassageStore(tmp_path / "missing.db")
    with pytest.raises(CorpusError, match="no passage store here"):
        PassageStore(tmp_path)  # a folder
    assert list(tmp_path.iterdir()) == []


def test_opening_a_non_store_file_is_an_error(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("this is not sqlite at all, just some text that is long enough " * 20)
    with pytest.raises(CorpusError, match="not a passage store"):
        PassageStore(text)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(CorpusError, match="not a passage store"):
        PassageStore(other)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="not a passage store"):
        PassageStore(empty)


@pytest.mark.parametrize("folder", ["run#1", "what?", "100%41"])
def test_store_in_a_folder_with_uri_special_characters(tmp_path, folder):
    store = PassageStore.build(tmp_path / folder / "store.db", PASSAGES)
    try:
        assert len(store) == len(PASSAGES)
        assert store.corpus_hash == expected_hash(PASSAGES)
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # no stray file created beside it


def test_a_passage_without_text_is_refused_by_id_before_anything_is_stored(tmp_path, store):
    blank = Passage(id="blank", title="A title", text="   ")
    with pytest.raises(CorpusError, match="passage 'blank' has an empty text"):
        PassageStore.build(tmp_path / "new.db", [*many(3), blank])
    assert not (tmp_path / "new.db").exists()
    before = (len(store), store.corpus_hash)
    with pytest.raises(CorpusError, match="passage 'blank' has an empty text"):
        store.upsert([Passage(id="fresh", title="", text="fine"), blank])
    with pytest.raises(CorpusError, match="passage 'blank' has an empty text"):
        store.diff([blank])
    assert (len(store), store.corpus_hash) == before and store.rows_of(["fresh"]) == [None]
