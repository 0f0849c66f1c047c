"""The harness: exact metrics from a scripted fake system, resuming after crashes, refusing mixed runs, and
the `imprag eval` command (errors, and a real run with a tiny saved model)."""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_model

from imprag import ImpRAG, LayerSplit
from imprag.cli import build_parser, main
from imprag.config import DecodeConfig
from imprag.data import SPLITS, Benchmark, BenchmarkError, Item, get_task
from imprag.evaluation.harness import STOP, EvalError, evaluate, score_item, summarize
from imprag.evaluation.metrics import exact_match, true_false_accuracy
from imprag.evaluation.systems import SYSTEMS, Prediction
from imprag.model.generation import RetrievedPassage as RP

# -- a hand-built benchmark and a scripted system ------------------------------------------------------


def _item(task: str, key: str, fields: dict[str, str], answers: list[str], evidence: list[str]) -> Item:
    return Item(
        id=f"{task}/{key}", task=task, split="test", fields=fields, answers=answers, evidence=evidence,
        oracle_query=f"oracle {key}",
    )  # fmt: skip


def _question(key: str) -> dict[str, str]:
    return {"question": f"Which article is described by: {key}?"}


ITEMS = [
    _item("describe", "d0", _question("d0"), ["Alpha"], ["A0"]),
    _item("describe", "d1", _question("d1"), ["Beta"], ["A1"]),
    _item("describe", "d2", _question("d2"), ["Gamma"], ["A2"]),
    _item("describe", "d3", _question("d3"), ["Delta"], ["A3"]),
    _item("fact-check", "f0", {"statement": "f0 holds."}, ["True"], ["F0"]),
    _item("fact-check", "f1", {"statement": "f1 holds."}, ["False"], ["F1"]),
    _item(
        "slot-filling",
        "s0",
        {"entity": "France", "relation": "capital"},
        ["Paris", "City of Light"],
        ["France"],
    ),
]
TASK_NAMES = ["describe", "fact-check", "slot-filling"]

# What the scripted system answers and reads for each item, and the scores that follow (by hand):
SCRIPT = {
    # exact, the answer in the passage read, which is the gold article: em 1, f1 1, recall 1, article 1
    "describe/d0": Prediction("Alpha", [RP("Alpha is a letter.", id="A0", title="Alpha")]),
    # wrong; the answer is only in the passage's title (content = title + text), not gold: 0, 0, 1, 0
    "describe/d1": Prediction("wrong", [RP("nothing here", id="X", title="Beta")]),
    # "the Gamma." normalises to "gamma"; the gold article read, without the answer: 1, 1, 0, 1
    "describe/d2": Prediction("the Gamma.", [RP("unrelated", id="A2", title="Other")]),
    # [delta force] vs [delta]: P 1/2, R 1 -> F1 2/3; nothing read: 0, 2/3, 0, 0
    "describe/d3": Prediction("Delta Force", []),
    # True/False accuracy; no answer recall for verdicts: em 1, article 1
    "fact-check/f0": Prediction("True.", [RP("f0 text", id="F0")]),
    "fact-check/f1": Prediction("yes", []),  # gold False: em 0, article 0
    # the second gold answer matches; "Paris" is in the passage, which is not the gold article: 1, 1, 1, 0
    "slot-filling/s0": Prediction("City of Light", [RP("Paris is the capital.", id="Y")]),
}
BY_PROMPT = {it.prompt: it.id for it in ITEMS}


def expected_rows(system: str = "fake", shots: int = 0) -> list[dict[str, Any]]:
    def row(task: str, fmt: str, n: int, em: float, recall, f1, article, hub) -> dict[str, Any]:
        return {"system": system, "task": task, "format": fmt, "split": "test", "shots": shots, "n": n,
                "em": em, "recall": recall, "f1": f1, "article_recall": article,
                "hub_share": hub[0], "distinct_top1": hub[1]}  # fmt: skip

    # hubness over the items that read something: describe's top-1s A0, X, A2 are all different (1/3, 3)
    return [
        row(
            "describe",
            "seen",
            4,
            0.5,
            0.5,
            pytest.approx((1 + 0 + 1 + 2 / 3) / 4),
            0.5,
            (pytest.approx(1 / 3), 3),
        ),
        row("fact-check", "unseen", 2, 0.5, None, None, 0.5, (1.0, 1)),
        row("slot-filling", "unseen", 1, 1.0, 1.0, 1.0, 0.0, (1.0, 1)),
    ]


EXPECTED_AVERAGES = {
    "seen": {"em": 0.5, "recall": 0.5, "article_recall": 0.5},
    "unseen": {"em": 0.75, "recall": 1.0, "article_recall": 0.25},
    "all": {"em": pytest.approx(2 / 3), "recall": 0.75, "article_recall": pytest.approx(1 / 3)},
}


def write_benchmark(directory: Path, items: Sequence[Item]) -> Path:
    counts: dict[str, dict[str, int]] = {}
    rows: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for it in items:
        counts.setdefault(it.task, dict.fromkeys(SPLITS, 0))[it.split] += 1
        rows[it.split, it.task].append(it.to_json())
    for (split, task), lines in rows.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        (directory / split / f"{task}.jsonl").write_text("".join(line + "\n" for line in lines))
    manifest = {"seed": 0, "corpus": {"name": "hand", "hash": "abc"}, "counts": counts}
    (directory / "benchmark.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def bench(tmp_path) -> Benchmark:
    return Benchmark.load(write_benchmark(tmp_path / "bench", ITEMS))


class FakeSystem:
    """Answers from SCRIPT; records every call; raises after `fail_after` calls (a crash)."""

    def __init__(
        self,
        name: str = "fake",
        retrieves: bool = True,
        fail_after: int | None = None,
        script: Callable[[str], Prediction] | None = None,
    ) -> None:
        self.name, self.retrieves, self.fail_after = name, retrieves, fail_after
        self.script = script or (lambda prompt: SCRIPT[BY_PROMPT[prompt]])
        self.calls: list[tuple[list[str], list[str], DecodeConfig]] = []
        self.demos: list[str] = []

    def answer(
        self, prompts: Sequence[str], queries: Sequence[str], decode: DecodeConfig, demos: str = ""
    ) -> list[Prediction]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("the system crashed")
        self.calls.append((list(prompts), list(queries), decode))
        self.demos.append(demos)
        return [self.script(p) for p in prompts]

    def describe(self) -> dict[str, Any]:
        return {"system": self.name, "reads": "a script"}

    def asked(self) -> list[str]:
        return [BY_PROMPT[p] for prompts, _, _ in self.calls for p in prompts]


def predictions(out: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]


# -- scores --------------------------------------------------------------------------------------------


def test_metrics_are_exact(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    system = FakeSystem()
    summary = evaluate(system, bench, TASK_NAMES, "test", out, batch_size=3, seed=7, record={"note": "x"})
    assert summary["rows"] == expected_rows()
    assert summary["averages"] == EXPECTED_AVERAGES
    written = json.loads((out / "metrics.json").read_text())
    assert written["rows"] == expected_rows() and written["averages"] == EXPECTED_AVERAGES
    assert set(written["seconds"]) == {"wall", "cpu"}
    run = json.loads((out / "run.json").read_text())
    assert run["system"] == {"system": "fake", "reads": "a script"}
    assert (run["split"], run["tasks"], run["limit"], run["seed"], run["note"]) == (
        "test",
        TASK_NAMES,
        None,
        7,
        "x",
    )
    assert run["shots"] == 0 and run["demonstrations"] == {task: [] for task in TASK_NAMES}
    assert run["benchmark"]["corpus"] == {"name": "hand", "hash": "abc"}
    assert written["run"]["seed"] == 7
    # the per-item records
    rec = {r["id"]: r for task in TASK_NAMES for r in predictions(out, task)}
    assert rec["describe/d1"] == {
        "id": "describe/d1", "prompt": "Q: Which article is described by: d1? A:", "prediction": "wrong",
        "answers": ["Beta"], "read": ["X"], "em": 0.0, "f1": 0.0, "recall": 1.0, "article_recall": 0.0,
        "retrieved": True,
    }  # fmt: skip
    assert rec["describe/d3"]["f1"] == pytest.approx(2 / 3) and rec["describe/d3"]["read"] == []
    assert (rec["fact-check/f0"]["em"], rec["fact-check/f0"]["f1"], rec["fact-check/f0"]["recall"]) == (
        1.0,
        None,
        None,
    )


def test_system_gets_prompts_oracle_queries_and_task_budgets(bench: Benchmark, tmp_path) -> None:
    system = FakeSystem()
    evaluate(system, bench, TASK_NAMES, "test", tmp_path / "run", batch_size=3)
    # batches of at most 3, per task, in benchmark order
    assert [len(prompts) for prompts, _, _ in system.calls] == [3, 1, 2, 1]
    assert system.asked() == [it.id for it in ITEMS]
    assert [q for _, queries, _ in system.calls for q in queries] == [it.oracle_query for it in ITEMS]
    budgets = [(d.max_new_tokens, d.stop, d.do_sample) for _, _, d in system.calls]
    describe, fact, slot = (get_task(t).max_new_tokens for t in TASK_NAMES)
    assert budgets == [(describe, STOP, False)] * 2 + [(fact, STOP, False), (slot, STOP, False)]
    assert (describe, fact, slot) == (16, 3, 12)
    assert system.demos == [""] * 4  # zero-shot: no demonstrations


def test_closed_book_scores_have_no_recall(bench: Benchmark, tmp_path) -> None:
    summary = evaluate(FakeSystem(retrieves=False), bench, TASK_NAMES, "test", tmp_path / "run")
    rows = {r["task"]: r for r in summary["rows"]}
    assert [(r["em"], r["recall"], r["article_recall"]) for r in rows.values()] == [
        (0.5, None, None), (0.5, None, None), (1.0, None, None),
    ]  # fmt: skip
    assert summary["averages"]["all"] == {"em": pytest.approx(2 / 3), "recall": None, "article_recall": None}


def test_limit_takes_the_first_items(bench: Benchmark, tmp_path) -> None:
    system = FakeSystem()
    summary = evaluate(system, bench, ["describe", "slot-filling"], "test", tmp_path / "run", limit=2)
    assert system.asked() == ["describe/d0", "describe/d1", "slot-filling/s0"]
    assert [(r["task"], r["n"], r["em"]) for r in summary["rows"]] == [
        ("describe", 2, 0.5),
        ("slot-filling", 1, 1.0),
    ]
    assert summary["averages"]["seen"]["recall"] == 1.0


def test_score_item_applicability() -> None:
    item = Item("denoise/x", "denoise", "train", {"context": "a [START] _ [END] c"}, ["b"], ["x"])
    pred = Prediction("b", [RP("b", id="x")])
    rec = score_item(item, get_task("denoise"), pred, retrieves=True)
    assert (rec["em"], rec["f1"], rec["recall"], rec["article_recall"]) == (1.0, 1.0, None, 1.0)
    rec = score_item(item, get_task("denoise"), pred, retrieves=False)
    assert (rec["recall"], rec["article_recall"], rec["read"]) == (None, None, ["x"])


def test_items_without_evidence_have_no_article_recall_but_their_hubness_counts() -> None:
    """An imported item whose pages are not in the corpus (empty evidence) cannot be scored for gold-article
    recall: it is left out of the mean (not counted as a miss), while what it read still counts."""
    task = get_task("nq")
    with_evidence = Item("nq/1", "nq", "dev", {"question": "q1"}, ["b"], ["x"])
    without = Item("nq/2", "nq", "dev", {"question": "q2"}, ["b"], [])
    recs = [
        score_item(it, task, Prediction("b", [RP("b", id="x")]), retrieves=True)
        for it in (with_evidence, without)
    ]
    assert [r["article_recall"] for r in recs] == [1.0, None]
    row = summarize("s", "dev", {"nq": recs})["rows"][0]
    assert row["article_recall"] == 1.0 and (row["hub_share"], row["distinct_top1"]) == (1.0, 1)
    alone = summarize("s", "dev", {"nq": recs[1:]})["rows"][0]
    assert alone["article_recall"] is None and alone["hub_share"] == 1.0


def test_summarize_without_seen_or_unseen_tasks() -> None:
    records = {
        "reading": [{"em": 1.0, "recall": None, "f1": 1.0, "article_recall": None}, {"em": 0.0, "f1": 0.5}]
    }
    summary = summarize("s", "train", records, shots=2)
    assert summary["rows"] == [
        {"system": "s", "task": "reading", "format": "no-retrieval", "split": "train", "shots": 2, "n": 2,
         "em": 0.5, "recall": None, "f1": 0.75, "article_recall": None, "hub_share": None,
         "distinct_top1": None},
    ]  # fmt: skip
    assert summary["averages"] == {}


def test_few_shot_demonstrations(tmp_path) -> None:
    """QA-format tasks take describe's first train items; other tasks their own first dev items, which are
    then never asked as questions."""
    train = [_item("describe", f"t{i}", _question(f"t{i}"), [f"T{i}"], [f"A{i}"]) for i in range(3)]
    dev = [_item("fact-check", f"v{i}", {"statement": f"v{i} holds."}, ["True"], ["F9"]) for i in range(3)]
    for it in train:
        it.split = "train"
    for it in dev:
        it.split = "dev"
    bench = Benchmark.load(write_benchmark(tmp_path / "bench", [*ITEMS, *train, *dev]))
    system = FakeSystem(script=lambda prompt: Prediction("True"))
    summary = evaluate(system, bench, ["describe", "fact-check"], "test", tmp_path / "run", shots=2)
    describe_demos = (
        "Q: Which article is described by: t0? A: T0\n\nQ: Which article is described by: t1? A: T1\n\n"
    )
    fact_demos = "Is this statement true? v0 holds. A: True\n\nIs this statement true? v1 holds. A: True\n\n"
    assert system.demos == [describe_demos, fact_demos]
    assert system.asked() == [it.id for it in ITEMS if it.task in ("describe", "fact-check")]
    assert [(r["task"], r["shots"], r["n"]) for r in summary["rows"]] == [
        ("describe", 2, 4),
        ("fact-check", 2, 2),
    ]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["shots"] == 2
    assert run["demonstrations"] == {
        "describe": ["describe/t0", "describe/t1"],
        "fact-check": ["fact-check/v0", "fact-check/v1"],
    }
    # on the dev split, the demonstrations are not asked again
    on_dev = FakeSystem(script=lambda prompt: Prediction("True"))
    summary = evaluate(on_dev, bench, ["fact-check"], "dev", tmp_path / "dev-run", shots=2)
    assert [p for prompts, _, _ in on_dev.calls for p in prompts] == ["Is this statement true? v2 holds. A:"]
    assert summary["rows"][0]["n"] == 1 and summary["rows"][0]["em"] == 1.0
    with pytest.raises(EvalError, match="4 demonstrations asked for describe but describe train has 3"):
        evaluate(FakeSystem(), bench, ["describe"], "test", tmp_path / "r4", shots=4)
    with pytest.raises(EvalError, match="shots must be >= 0, got -1"):
        evaluate(FakeSystem(), bench, ["describe"], "test", tmp_path / "r5", shots=-1)
    assert not (tmp_path / "r4").exists() and not (tmp_path / "r5").exists()


# -- bad requests --------------------------------------------------------------------------------------


def test_bad_limit_and_unknown_task(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(EvalError, match="limit must be a positive number of items per task, got 0"):
        evaluate(FakeSystem(), bench, ["describe"], "test", out, limit=0)
    with pytest.raises(BenchmarkError, match="task 'trivia' was not built"):
        evaluate(FakeSystem(), bench, ["describe", "trivia"], "test", out)
    with pytest.raises(BenchmarkError, match="has no dev items"):
        evaluate(FakeSystem(), bench, ["describe"], "dev", out)
    assert not out.exists()  # refused before anything was written


# -- resuming ------------------------------------------------------------------------------------------


def test_resume_after_a_crash(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    crashing = FakeSystem(fail_after=1)
    with pytest.raises(RuntimeError, match="crashed"):
        evaluate(crashing, bench, TASK_NAMES, "test", out, batch_size=2)
    assert crashing.asked() == ["describe/d0", "describe/d1"]
    assert [r["id"] for r in predictions(out, "describe")] == ["describe/d0", "describe/d1"]
    assert not (out / "metrics.json").exists()
    healthy = FakeSystem()
    summary = evaluate(healthy, bench, TASK_NAMES, "test", out, batch_size=2)
    assert healthy.asked() == [
        "describe/d2",
        "describe/d3",
        "fact-check/f0",
        "fact-check/f1",
        "slot-filling/s0",
    ]
    for task in TASK_NAMES:
        ids = [r["id"] for r in predictions(out, task)]
        assert sorted(ids) == sorted(it.id for it in ITEMS if it.task == task)  # each exactly once
    assert summary["rows"] == expected_rows() and summary["averages"] == EXPECTED_AVERAGES
    # a third run has nothing left to do and gives the same numbers
    idle = FakeSystem()
    assert evaluate(idle, bench, TASK_NAMES, "test", out, batch_size=2)["rows"] == expected_rows()
    assert idle.calls == []


def test_truncated_last_line_is_redone(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    evaluate(FakeSystem(), bench, TASK_NAMES, "test", out)
    path = out / "predictions" / "describe.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # a crash cut the last record (describe/d3) mid-line
    again = FakeSystem()
    summary = evaluate(again, bench, TASK_NAMES, "test", out)
    assert again.asked() == ["describe/d3"]
    assert path.read_bytes() == whole
    assert summary["rows"] == expected_rows()


def test_resume_with_more_tasks(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    evaluate(FakeSystem(), bench, ["describe"], "test", out)
    more = FakeSystem()
    summary = evaluate(more, bench, TASK_NAMES, "test", out)
    assert more.asked() == ["fact-check/f0", "fact-check/f1", "slot-filling/s0"]
    assert summary["rows"] == expected_rows()
    assert json.loads((out / "run.json").read_text())["tasks"] == TASK_NAMES


# The index facts `imprag eval` records (its manifest's model, corpus_hash, count and index settings)
INDEX = {
    "model": {"fingerprint": "f0", "b": 1},
    "corpus_hash": "h0",
    "count": 7,
    "index": {"factory": "Flat"},
}


@pytest.mark.parametrize(
    "change, word",
    [
        ({"limit": 2}, "limit"),
        ({"seed": 1}, "seed"),
        ({"split": "dev"}, "split"),
        ({"name": "other"}, "system"),
        ({"record": {"model": {"source": "another"}, "index": INDEX}}, "model"),
        # the index refreshed with another model (imprag index --refresh): other vectors, other passages read
        (
            {
                "record": {
                    "model": {"source": "m"},
                    "index": {**INDEX, "model": {"fingerprint": "f1", "b": 1}},
                }
            },
            "index",
        ),
        # the index updated (imprag update): another corpus
        (
            {"record": {"model": {"source": "m"}, "index": {**INDEX, "corpus_hash": "h1", "count": 8}}},
            "index",
        ),
        ({"shots": 1}, "shots"),
        ({"batch_size": 2}, "batch_size"),
    ],
)
def test_other_settings_need_overwrite(bench: Benchmark, tmp_path, change: dict, word: str) -> None:
    dev = Item("describe/dev0", "describe", "dev", _question("d0"), ["Alpha"], ["A0"])
    train = Item("describe/train0", "describe", "train", _question("t0"), ["Omega"], ["A9"])
    bench = Benchmark.load(write_benchmark(tmp_path / "bench2", [*ITEMS, dev, train]))
    out = tmp_path / "run"
    base = {"limit": None, "seed": 0, "split": "test", "name": "fake"}
    base["record"] = {"model": {"source": "m"}, "index": INDEX}
    base["shots"], base["batch_size"] = 0, 8
    evaluate(FakeSystem(), bench, ["describe"], base["split"], out, limit=None, seed=0, record=base["record"])
    settings = {**base, **change}

    def run(overwrite: bool) -> FakeSystem:
        system = FakeSystem(name=settings["name"], script=lambda p: Prediction("Alpha"))
        evaluate(
            system, bench, ["describe"], settings["split"], out, limit=settings["limit"],
            seed=settings["seed"], record=settings["record"], overwrite=overwrite, shots=settings["shots"],
            batch_size=settings["batch_size"],
        )  # fmt: skip
        return system

    with pytest.raises(EvalError, match=f"holds a run with other {word}; .* or pass --overwrite"):
        run(overwrite=False)
    assert len(predictions(out, "describe")) == 4  # untouched
    fresh = run(overwrite=True)
    expected = [it.id for it in bench.items("describe", settings["split"])][: settings["limit"]]
    assert [i for prompts, _, _ in fresh.calls for i in prompts] == [
        it.prompt for it in bench.items("describe", settings["split"])
    ][: settings["limit"]]
    # the old predictions are gone: the file holds exactly the new run's items
    assert [r["id"] for r in predictions(out, "describe")] == expected
    assert json.loads((out / "run.json").read_text())["seed"] == settings["seed"]


def test_time_is_kept_across_resumes_and_reset_by_overwrite(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crashed"):
        evaluate(FakeSystem(fail_after=1), bench, TASK_NAMES, "test", out, batch_size=2)
    spent = json.loads((out / "seconds.json").read_text())  # written per batch: survives the crash
    assert spent["wall"] > 0 and spent["cpu"] >= 0
    (out / "seconds.json").write_text(json.dumps({"wall": 1000.0, "cpu": 500.0}))  # as if it had been long
    summary = evaluate(FakeSystem(), bench, TASK_NAMES, "test", out, batch_size=2)
    assert 1000.0 <= summary["seconds"]["wall"] < 1100 and 500.0 <= summary["seconds"]["cpu"] < 600
    fresh = evaluate(FakeSystem(), bench, TASK_NAMES, "test", out, batch_size=2, overwrite=True)
    assert fresh["seconds"]["wall"] < 100  # the old run's time is not carried into a new one


def test_damaged_run_json(bench: Benchmark, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{oops")
    with pytest.raises(EvalError, match="is damaged"):
        evaluate(FakeSystem(), bench, ["describe"], "test", out)
    system = FakeSystem()
    evaluate(system, bench, ["describe"], "test", out, overwrite=True)
    assert len(system.asked()) == 4


# -- the command line ----------------------------------------------------------------------------------


def test_eval_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["eval", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imprag eval" in out and "--data" in out and "--limit" in out
    words = set(re.findall(r"[\w-]+", re.sub(r"-\s+", "-", out)))  # argparse wraps lines, also at hyphens
    assert [name for name in SYSTEMS if name not in words] == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--system", "nope"], "unknown system(s) 'nope'; known systems: closed-book, bm25, minilm"),
        (["--system", "closed-book,bm25"], "retrieval systems need --index DIR"),
        (
            ["--tasks", "describe,trivia"],
            "unknown task(s) 'trivia'; known tasks: describe, fact-check, slot-filling",
        ),
        (
            ["--data", "MISSING"],
            "is not a built benchmark (no benchmark.json); build it with `imprag data build",
        ),
    ],
)
def test_eval_errors_are_one_line(bench: Benchmark, tmp_path, capsys, extra: list[str], message: str) -> None:
    argv = ["eval", "--data", str(bench.directory), "--out", str(tmp_path / "out"), *extra]
    argv = [str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imprag eval: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture
def saved(tmp_path, tokenizer) -> str:
    path = tmp_path / "model"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(path)
    return str(path)


def test_eval_dev_split_defaults_to_tasks_that_have_it(saved: str, tmp_path) -> None:
    dev = Item("describe/dev0", "describe", "dev", _question("d0"), ["Alpha"], ["A0"])
    bench = Benchmark.load(write_benchmark(tmp_path / "bench2", [*ITEMS, dev]))
    out = tmp_path / "out"
    argv = ["eval", "--data", str(bench.directory), "--out", str(out), "--split", "dev", "--model", saved]
    assert main(argv) == 0  # fact-check and slot-filling have no dev items here: left out, not an error
    run = json.loads((out / "closed-book" / "run.json").read_text())
    assert run["tasks"] == ["describe"]


def test_eval_merges_rows_into_a_results_file(bench: Benchmark, saved: str, tmp_path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"system": "other", "task": "describe", "split": "test", "shots": 0}]))
    argv = ["eval", "--data", str(bench.directory), "--out", str(tmp_path / "out"), "--model", saved]
    argv += ["--limit", "1", "--tasks", "describe", "--merge-into", str(results)]
    assert main(argv) == 0
    assert main(argv) == 0  # again: the same rows are replaced, not duplicated
    rows = json.loads(results.read_text())
    assert [(r["system"], r["task"], r.get("n")) for r in rows] == [
        ("other", "describe", None), ("closed-book", "describe", 1),
    ]  # fmt: skip


def test_eval_refuses_an_out_folder_that_is_not_an_earlier_evaluation(
    bench: Benchmark, saved: str, tmp_path, capsys
) -> None:
    """A folder with the user's own results.md is refused before the model loads, and kept as it was; an
    earlier evaluation's folder is reused (issue 16)."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "results.md").write_text("my results")
    argv = ["eval", "--data", str(bench.directory), "--model", saved, "--limit", "1", "--tasks", "describe"]
    assert main([*argv, "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "holds files but no earlier evaluation" in err and err.count("\n") == 1
    assert [p.name for p in mine.iterdir()] == ["results.md"]
    assert (mine / "results.md").read_text() == "my results"
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--overwrite"]) == 0  # reused
    assert "item/s" not in capsys.readouterr().err  # --no-progress: no bar


def test_eval_closed_book_end_to_end(saved: str, tmp_path, capsys) -> None:
    # The untrained model's answer to describe/d0 is made gold, so that not every score is 0.
    describe = DecodeConfig(max_new_tokens=get_task("describe").max_new_tokens, stop=STOP)
    said = ImpRAG.from_pretrained(saved).generate([ITEMS[0].prompt], decode_config=describe)[0].text
    items = [dataclasses.replace(ITEMS[0], answers=["Alpha", said]), *ITEMS[1:]]
    bench = Benchmark.load(write_benchmark(tmp_path / "bench", items))
    out = tmp_path / "out"
    argv = ["eval", "--data", str(bench.directory), "--system", "closed-book", "--out", str(out)]
    argv += ["--limit", "2", "--model", saved, "--tasks", "describe,fact-check"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| closed-book |" in printed and f"chart.png in {out}" in printed
    run_dir = out / "closed-book"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [(r["task"], r["n"], r["recall"], r["article_recall"]) for r in metrics["rows"]] == [
        ("describe", 2, None, None), ("fact-check", 2, None, None),
    ]  # fmt: skip
    for row in metrics["rows"]:  # each reported score is the mean of its predictions' scores, recomputed
        score = exact_match if get_task(row["task"]).scoring == "em" else true_false_accuracy
        written = predictions(run_dir, row["task"])
        assert row["em"] == pytest.approx(sum(score(r["prediction"], r["answers"]) for r in written) / 2)
    assert metrics["rows"][0]["em"] == 0.5 and predictions(run_dir, "describe")[0]["prediction"] == said
    assert [r["id"] for r in predictions(run_dir, "describe")] == ["describe/d0", "describe/d1"]
    assert [r["id"] for r in predictions(run_dir, "fact-check")] == ["fact-check/f0", "fact-check/f1"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"]["source"] == saved and run["limit"] == 2 and run["index"] is None
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "benchmark.json").read_text())
    assert [(r["system"], r["task"], r["n"]) for r in rows] == [
        ("closed-book", "describe", 2),
        ("closed-book", "fact-check", 2),
    ]
    assert "| closed-book |" in (out / "results.md").read_text()
    # the same command again resumes: same settings (model fingerprint included), nothing redone
    before = (run_dir / "predictions" / "describe.jsonl").read_bytes()
    assert main(argv) == 0
    assert (run_dir / "predictions" / "describe.jsonl").read_bytes() == before
    assert json.loads((run_dir / "metrics.json").read_text())["rows"] == metrics["rows"]


def test_one_evaluation_writes_a_folder_at_a_time(bench: Benchmark, tmp_path) -> None:
    """Two evaluations into one folder would append the same predictions twice: while one holds the
    folder's lock, a second stops before asking the system anything or writing a file (issue 16)."""
    from imprag.io import LOCK, LockedError, writer_lock

    out = tmp_path / "run"
    other = FakeSystem()
    with writer_lock(out, "another evaluation"):
        with pytest.raises(LockedError, match="imprag eval waits for no one"):
            evaluate(other, bench, TASK_NAMES, "test", out, batch_size=2)
        assert other.calls == [] and [p.name for p in out.iterdir()] == [LOCK]
    summary = evaluate(FakeSystem(), bench, TASK_NAMES, "test", out, batch_size=2)  # released: it runs
    assert summary["rows"] == expected_rows()
