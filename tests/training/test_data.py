"""Training data: the step schedule is a pure function of (seed, step), follows the mix and walks every
item once per pass; loading refuses what cannot be trained on."""

from __future__ import annotations

from collections import Counter

import pytest
from synthetic import examples as synthetic_examples
from synthetic import passage_store

from imprag.data.benchmark import Item
from imprag.retrieval.store import PassageStore
from imprag.training.config import DataConfig
from imprag.training.data import (
    Example,
    TrainingData,
    TrainingDataError,
    _retrieval_example,
    answer_text,
    evaluated_rows,
    load_training_data,
    readers_first,
)
from imprag.training.targets import PseudoLabel


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PassageStore:
    return passage_store(tmp_path_factory.mktemp("store") / "p.sqlite", 30)


def examples(n_ret: int = 7, n_ins: int = 5) -> dict[str, list[Example]]:
    return synthetic_examples(n_ret, n_ins)


def ids(batch: list[Example]) -> list[str]:
    return [e.id for e in batch]


def test_batches_are_a_pure_function_of_seed_and_step(store) -> None:
    a = TrainingData(examples(), store, (0.5, 0.3, 0.2), seed=3)
    b = TrainingData(examples(), store, (0.5, 0.3, 0.2), seed=3)
    walked = [a.batch(s, 3) for s in range(12)]
    # a fresh instance asked for a late step first gives what the walking one gave
    assert b.batch(7, 3) == walked[7]
    assert b.batch(11, 3) == walked[11]
    assert [b.batch(s, 3) for s in reversed(range(12))] == walked[::-1]
    assert a.batch(7, 3) == walked[7]  # asking again changes nothing
    assert {kind for kind, _ in walked} == {"retrieval", "instruction", "lm"}
    # another seed gives another schedule
    other = TrainingData(examples(), store, (0.5, 0.3, 0.2), seed=4)
    assert [other.batch(s, 3) for s in range(12)] != walked


def test_kinds_follow_the_mix(store) -> None:
    data = TrainingData(examples(), store, (0.6, 0.3, 0.1), seed=0)
    counts = Counter(data.kind_of(s) for s in range(2000))
    assert abs(counts["retrieval"] / 2000 - 0.6) < 0.05
    assert abs(counts["instruction"] / 2000 - 0.3) < 0.05
    assert abs(counts["lm"] / 2000 - 0.1) < 0.03
    no_lm = TrainingData(examples(), store, (0.5, 0.5, 0.0), seed=0)
    kinds = Counter(no_lm.batch(s, 2)[0] for s in range(300))
    assert set(kinds) == {"retrieval", "instruction"}
    only = TrainingData(examples(), store, (0.0, 1.0, 0.0), seed=0)
    assert {only.batch(s, 2)[0] for s in range(100)} == {"instruction"}
    # a kind with a share but no examples is dropped; nothing at all left is an error
    empty = TrainingData(examples(n_ins=0), store, (0.5, 0.5, 0.0), seed=0)
    assert {empty.kind_of(s) for s in range(100)} == {"retrieval"}
    with pytest.raises(TrainingDataError, match="no training examples"):
        TrainingData(examples(n_ret=0), store, (1.0, 0.0, 0.0))


def test_every_item_appears_once_per_pass_before_any_repeats(store) -> None:
    data = TrainingData(examples(n_ret=7), store, (0.5, 0.5, 0.0), seed=1)
    seen: list[str] = []
    step = 0
    while len(seen) < 4 * 7:
        kind, batch = data.batch(step, 3)
        if kind == "retrieval":
            assert all(e.kind == "retrieval" for e in batch)
            seen += ids(batch)
        step += 1
    passes = [seen[i : i + 7] for i in range(0, 4 * 7, 7)]
    for p in passes:
        assert sorted(p) == sorted(f"r{i}" for i in range(7))
    assert len({tuple(p) for p in passes}) > 1  # each pass is its own permutation


def test_lm_batches_are_store_passages_given_their_titles(store) -> None:
    data = TrainingData(examples(), store, (0.0, 0.0, 1.0), seed=0)
    kind, batch = data.batch(0, 4)
    assert kind == "lm" and len(batch) == 4
    rows = store.rows_of([e.id.removeprefix("lm:") for e in batch])
    for e, passage in zip(batch, store.get(rows), strict=True):  # type: ignore[arg-type]
        assert e.kind == "lm" and e.prompt == passage.title and e.answer == "\n" + passage.text
    assert data.batch(1, 4) != data.batch(0, 4) and TrainingData(examples(), store, (0, 0, 1)).batch(
        0, 4
    ) == (kind, batch)


def test_lm_batches_never_read_the_articles_dev_and_test_items_are_about(store) -> None:
    class Bench:  # the two things evaluated_rows reads of a Benchmark
        tasks = ("describe", "entity-linking")
        counts = {"describe": {"train": 1, "dev": 1, "test": 1}, "entity-linking": {"test": 1}}  # noqa: RUF012

        def items(self, task: str, split: str) -> list[Item]:
            evidence = {("describe", "dev"): ["p3"], ("describe", "test"): ["p5", "p7"],
                        ("describe", "train"): ["p9"], ("entity-linking", "test"): ["p11"]}  # fmt: skip
            meta = {"source": "p13"} if task == "entity-linking" else {}
            return [
                Item(f"{task}-{split}", task, split, {}, ["a"], ev, meta=meta)
                for ev in [evidence.get((task, split))]
                if ev
            ]

    protected = evaluated_rows(Bench(), store)
    assert protected == set(store.rows_of(["p3", "p5", "p7", "p11", "p13"]))  # not the train item's p9
    data = TrainingData(examples(), store, (0.0, 0.0, 1.0), seed=0, lm_exclude=protected)
    read = {e.id.removeprefix("lm:") for step in range(60) for e in data.batch(step, 4)[1]}
    assert len(read) > 20 and not read & {"p3", "p5", "p7", "p11", "p13"}
    unrestricted = {
        e.id for step in range(60) for e in TrainingData(examples(), store, (0, 0, 1)).batch(step, 4)[1]
    }
    assert unrestricted & {"lm:p3", "lm:p5", "lm:p7", "lm:p11", "lm:p13"}  # they would be read otherwise
    with pytest.raises(TrainingDataError, match="every kind with a share"):
        TrainingData(examples(0, 0), store, (0.0, 0.0, 1.0), lm_exclude=range(len(store)))


def test_random_rows_are_seeded_per_step_and_rank(store) -> None:
    data = TrainingData(examples(), store, (1.0, 0.0, 0.0), seed=0)
    rows = data.random_rows(5, 0, 50)
    assert rows == data.random_rows(5, 0, 50) and all(0 <= r < len(store) for r in rows)
    assert rows != data.random_rows(5, 1, 50) and rows != data.random_rows(6, 0, 50)
    assert data.random_rows(5, 0, 0) == []


def test_answer_text_continues_a_prompt_and_ends_with_a_newline() -> None:
    assert answer_text("  Paris ") == " Paris\n"
    assert answer_text("New York City") == " New York City\n"


def test_load_training_data_needs_a_benchmark_and_an_index(tmp_path) -> None:
    with pytest.raises(TrainingDataError, match=r"data\.benchmark and data\.index are required"):
        load_training_data(DataConfig(), tmp_path)
    with pytest.raises(TrainingDataError, match=r"data\.index"):
        load_training_data(DataConfig(benchmark=str(tmp_path / "bench")), tmp_path)
    with pytest.raises(TrainingDataError, match=r"data\.benchmark"):
        load_training_data(DataConfig(index=str(tmp_path / "index")), tmp_path)


def item(evidence: list[str]) -> Item:
    return Item("describe/0", "describe", "train", {"question": "what is p3?"}, ["  thing 3 "], evidence)


def test_retrieval_example_maps_pseudo_labels_to_store_rows(store) -> None:
    label = PseudoLabel("describe/0", ["p3", "p4"], ["p20"])
    example = _retrieval_example(item(["p3", "gone"]), label, store)
    assert example == Example(
        "describe/0", "retrieval", "Q: what is p3? A:", " thing 3\n", (3, 4), (20,), (3,), task="describe"
    )
    assert example.candidates == (3, 4, 20)


def test_readers_first_takes_the_read_tasks_in_turn_then_the_rest() -> None:
    tasks = ["x", "b", "a", "b", "b", "x", "a"]
    batch = [Example(f"{t}{i}", "retrieval", "Q", " A\n", task=t) for i, t in enumerate(tasks)]
    ids = lambda order: [e.id for e in order]  # noqa: E731
    assert ids(readers_first(batch, [])) == ids(batch)
    assert ids(readers_first(batch, ["a", "b"])) == ["a2", "b1", "a6", "b3", "b4", "x0", "x5"]
    assert ids(readers_first(batch, ["b"])) == ["b1", "b3", "b4", "x0", "a2", "x5", "a6"]
    assert ids(readers_first(batch, ["gone", "a"])) == ["a2", "a6", "x0", "b1", "b3", "b4", "x5"]
    assert sorted(ids(readers_first(batch, ["x", "a", "b"]))) == sorted(ids(batch))  # a permutation


@pytest.mark.parametrize("where", ["positives", "negatives"])
def test_pseudo_labels_naming_passages_missing_from_the_store_are_refused(store, where: str) -> None:
    label = (
        PseudoLabel("describe/0", ["p3", "p99"], ["p20"])
        if where == "positives"
        else PseudoLabel("describe/0", ["p3"], ["p20", "p98"])
    )
    missing = "p99" if where == "positives" else "p98"
    with pytest.raises(TrainingDataError, match=rf"describe/0.*{missing}.*label cache"):
        _retrieval_example(item(["p3"]), label, store)


def test_calibration_prompts_stride_through_the_trained_kinds(store) -> None:
    data = TrainingData(examples(n_ret=20, n_ins=6), store, (0.5, 0.4, 0.1), seed=0)
    picked = data.calibration_prompts(8)
    # 4 per kind, evenly spread over each pool (every 5th retrieval prompt, then the instruction ones),
    # interleaved, in a fixed order
    assert picked == [
        "Q: what is 0? A:", "Recover 0 A:", "Q: what is 5? A:", "Recover 1 A:",
        "Q: what is 10? A:", "Recover 2 A:", "Q: what is 15? A:", "Recover 3 A:",
    ]  # fmt: skip
    assert data.calibration_prompts(8) == picked
    assert len(data.calibration_prompts(100)) == 26  # all of them, no repeats
    retrieval_only = TrainingData(examples(n_ret=20, n_ins=6), store, (1.0, 0.0, 0.0), seed=0)
    assert all(p.startswith("Q:") for p in retrieval_only.calibration_prompts(8))
    lm_only = TrainingData(examples(), store, (0.0, 0.0, 1.0), seed=0)
    with pytest.raises(TrainingDataError, match=r"model\.center needs retrieval or instruction prompts"):
        lm_only.calibration_prompts(8)
