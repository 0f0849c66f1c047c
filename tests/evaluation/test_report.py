"""Reports: the paper-style table, the machine-readable rows, merging them, and the files of a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imprag.evaluation.report import benchmark_rows, load_summaries, markdown_table, merge_rows, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def row(
    system: str, task: str, fmt: str, n: int, em, recall=None, article=None, split: str = "test", **kw
) -> dict:
    return {"system": system, "task": task, "format": fmt, "split": split, "shots": 0, "n": n, "em": em,
            "recall": recall, "f1": em, "article_recall": article, **kw}  # fmt: skip


def averages(seen=None, unseen=None, every=None) -> dict[str, Any]:
    out = {}
    for name, values in (("seen", seen), ("unseen", unseen), ("all", every)):
        if values is not None:
            out[name] = dict(zip(("em", "recall", "article_recall"), values, strict=True))
    return out


def closed_book(split: str = "test") -> dict[str, Any]:
    return {
        # rows out of the table's order: the table orders seen tasks, then unseen, in registry order
        "rows": [
            row("closed-book", "fact-check", "unseen", 2, 1.0, split=split),
            row("closed-book", "describe", "seen", 4, 0.5, split=split),
        ],
        "averages": averages((0.5, None, None), (1.0, None, None), (0.75, None, None)),
        "seconds": {"wall": 1.5, "cpu": 1.2},
    }


def bm25(split: str = "test") -> dict[str, Any]:
    return {
        "rows": [
            row("bm25", "describe", "seen", 4, 0.25, 0.75, 0.5, split=split),
            row("bm25", "fact-check", "unseen", 2, 0.5, None, 1.0, split=split),
            row("bm25", "slot-filling", "unseen", 3, 0.0, 1 / 3, 2 / 3, split=split),
        ],
        "averages": averages((0.25, 0.75, 0.5), (0.25, 1 / 3, 5 / 6), (0.25, 13 / 24, 13 / 18)),
        "seconds": {"wall": 3.0, "cpu": 2.5},
    }


HEAD = (
    "| system | describe (seen) | slot-filling (unseen) | fact-check (unseen) | avg seen | avg unseen | avg |"
)


def test_markdown_table_layout() -> None:
    assert markdown_table([closed_book(), bm25()]).splitlines() == [
        HEAD,
        "|---|---|---|---|---|---|---|",
        "| closed-book | 50.0 | - | 100.0 | 50.0 | 100.0 | 75.0 |",
        "| bm25 | 25.0 (75.0) | 0.0 (33.3) | 50.0 | 25.0 (75.0) | 25.0 (33.3) | 25.0 (54.2) |",
        "",
        "n per task: describe 4, slot-filling 3, fact-check 2",
    ]


def test_markdown_table_article_recall_and_missing_values() -> None:
    empty = {"rows": [row("odd", "describe", "seen", 0, None)], "averages": {}}
    lines = markdown_table([bm25(), empty], recall="article_recall").splitlines()
    assert (
        lines[2]
        == "| bm25 | 25.0 (50.0) | 0.0 (66.7) | 50.0 (100.0) | 25.0 (50.0) | 25.0 (83.3) | 25.0 (72.2) |"
    )
    assert lines[3] == "| odd | - | - | - | - | - | - |"
    assert lines[5] == "n per task: describe 0/4, slot-filling 3, fact-check 2"  # systems saw different n


def test_benchmark_rows_keys() -> None:
    extra = {"rows": [row("x", "trivia", "seen", 1, 1.0, extra="dropped")], "averages": {}}
    del extra["rows"][0]["f1"]
    rows = benchmark_rows([closed_book(), extra])
    keys = ["system", "task", "format", "split", "shots", "n", "em", "recall", "f1", "article_recall"]
    keys += ["hub_share", "distinct_top1"]
    assert [list(r) for r in rows] == [keys] * 3
    assert [(r["system"], r["task"]) for r in rows] == [
        ("closed-book", "fact-check"),
        ("closed-book", "describe"),
        ("x", "trivia"),
    ]
    assert rows[2]["f1"] is None and "extra" not in rows[2]
    assert rows[1] == row("closed-book", "describe", "seen", 4, 0.5, hub_share=None, distinct_top1=None)


def test_merge_rows_replaces_same_system_task_split(tmp_path) -> None:
    path = tmp_path / "results" / "benchmark.json"
    first = [row("bm25", "describe", "seen", 4, 0.25), row("bm25", "fact-check", "unseen", 2, 0.5)]
    path.parent.mkdir()
    assert merge_rows(path, first) == first
    assert json.loads(path.read_text()) == first
    newer = [row("bm25", "describe", "seen", 8, 0.75), row("bm25", "describe", "seen", 4, 0.1, split="dev")]
    merged = merge_rows(path, newer)
    # the old fact-check row stays; the test describe row is replaced; the dev row is added
    assert merged == [first[1], *newer]
    assert json.loads(path.read_text()) == merged
    other_shots = [{**newer[0], "shots": 3, "em": 0.9}]
    assert merge_rows(path, other_shots) == [*merged, *other_shots]  # another shot count is another row


def _write(directory: Path, summary: dict[str, Any]) -> None:
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(summary))


def test_write_report(tmp_path) -> None:
    out = tmp_path / "out"
    # directory names sort differently from the report's system order
    _write(out / "a-bm25", bm25())
    _write(out / "b-closed", closed_book())
    custom = {"rows": [row("zz-custom", "describe", "seen", 4, 1.0)], "averages": averages((1.0, None, None))}
    _write(out / "0-custom", custom)
    _write(out / "c-dev", closed_book(split="dev"))  # another split: left out
    _write(out / "d-empty", {"rows": [], "averages": {}})
    table = write_report(out, "test")
    assert table == markdown_table([closed_book(), bm25(), custom])
    text = (out / "results.md").read_text()
    assert text.startswith("# Results on the test split (0-shot)\n")
    assert text.count("| closed-book |") == 1 and text.count("| bm25 |") == 2
    lines = text.splitlines()
    systems = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "---" not in line]
    # the second table holds gold-article recall, only for systems that read passages
    assert systems == ["| system", "| closed-book", "| bm25", "| zz-custom", "| system", "| bm25"]
    assert "| bm25 | 50.0 | 66.7 | 100.0 | 50.0 | 83.3 | 72.2 |" in lines
    assert "- closed-book: 6 items, 1.5 s wall, 1.2 s CPU" in lines
    assert "- zz-custom: 4 items, ? s wall, ? s CPU" in lines
    rows = json.loads((out / "benchmark.json").read_text())
    assert [(r["system"], r["task"], r["split"]) for r in rows] == [
        ("closed-book", "fact-check", "test"), ("closed-book", "describe", "test"),
        ("bm25", "describe", "test"), ("bm25", "fact-check", "test"), ("bm25", "slot-filling", "test"),
        ("zz-custom", "describe", "test"),
    ]  # fmt: skip
    png = (out / "chart.png").read_bytes()
    assert png[:8] == PNG and len(png) > 1000
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_load_summaries(tmp_path) -> None:
    _write(tmp_path / "a", bm25())
    assert load_summaries([tmp_path / "a"]) == [bm25()]
    with pytest.raises(FileNotFoundError, match="evaluate that system first"):
        load_summaries([tmp_path / "a", tmp_path / "b"])
