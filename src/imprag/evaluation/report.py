"""Reports over evaluated systems: the paper's table (EM with retrieval recall in parentheses, seen tasks
then unseen, averages), a chart, and the machine-readable rows of `results/benchmark.json`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imprag.data.tasks import TASKS
from imprag.io import atomic_write_text

__all__ = ["benchmark_rows", "load_summaries", "markdown_table", "merge_rows", "plot"]


def load_summaries(directories: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The `metrics.json` of each evaluated system directory."""
    out = []
    for d in directories:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: evaluate that system first (`imprag eval`)")
        out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def _ordered_tasks(summaries: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["task"] for s in summaries for r in s["rows"]}
    return [
        t for fmt in ("seen", "unseen") for t, task in TASKS.items() if task.format == fmt and t in present
    ]


def _cell(em: float | None, recall: float | None) -> str:
    if em is None:
        return "-"
    return f"{100 * em:.1f}" + (f" ({100 * recall:.1f})" if recall is not None else "")


def markdown_table(
    summaries: Sequence[dict[str, Any]], recall: str | None = "recall", value: str = "em"
) -> str:
    """One row per system: `value` (EM, or accuracy for fact-check) per task with `recall` in parentheses
    (None: no parentheses), then averages over seen, unseen and all tasks."""
    tasks = _ordered_tasks(summaries)
    head = [f"{t} ({TASKS[t].format})" for t in tasks] + ["avg seen", "avg unseen", "avg"]
    lines = ["| system | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for s in summaries:
        by_task = {r["task"]: r for r in s["rows"]}
        name = s["rows"][0]["system"] if s["rows"] else "?"
        cells = [
            _cell(by_task[t][value], by_task[t][recall] if recall else None) if t in by_task else "-"
            for t in tasks
        ]
        for group in ("seen", "unseen", "all"):
            avg = s["averages"].get(group, {})
            cells.append(_cell(avg.get(value), avg.get(recall) if recall else None))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ns: dict[str, set[int]] = {}
    for s in summaries:
        for r in s["rows"]:
            ns.setdefault(r["task"], set()).add(r["n"])
    lines.append("")
    lines.append("n per task: " + ", ".join(f"{t} {'/'.join(map(str, sorted(ns[t])))}" for t in tasks))
    return "\n".join(lines) + "\n"


def benchmark_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows {system, task, format, split, shots, n, em, recall, f1, article_recall, hub_share,
    distinct_top1} (null where it does not apply, e.g. recall for closed-book)."""
    keys = ("system", "task", "format", "split", "shots", "n", "em", "recall", "f1", "article_recall",
            "hub_share", "distinct_top1")  # fmt: skip
    return [{k: r.get(k) for k in keys} for s in summaries for r in s["rows"]]


def merge_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write `rows` into the JSON list at `path`, replacing rows of the same (system, task, split, shots)."""
    path = Path(path)
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def key(r: dict[str, Any]) -> tuple:
        return r["system"], r["task"], r["split"], r.get("shots", 0)

    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + list(rows)
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def plot(summaries: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Grouped bars: EM/accuracy per task and system, with answer recall as hatched bars behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _ordered_tasks(summaries)
    width = 0.8 / max(1, len(summaries))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(tasks)), 4.5))
    for i, s in enumerate(summaries):
        by_task = {r["task"]: r for r in s["rows"]}
        xs = [j + i * width for j in range(len(tasks))]
        em = [100 * (by_task[t]["em"] or 0) if t in by_task else 0 for t in tasks]
        rec = [100 * (by_task[t]["recall"] or 0) if t in by_task else 0 for t in tasks]
        bars = ax.bar(xs, em, width, label=s["rows"][0]["system"] if s["rows"] else "?", zorder=2)
        color = bars.patches[0].get_facecolor()
        ax.bar(xs, rec, width, fill=False, hatch="//", edgecolor=color, linewidth=0, alpha=0.6, zorder=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))])
    ax.set_xticklabels([f"{t}\n({TASKS[t].format})" for t in tasks])
    ax.set_ylabel("EM / accuracy (bars), answer recall (hatched), %")
    ax.set_ylim(0, 110)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(5, len(summaries)), loc="upper center")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


ORDER = ("closed-book", "bm25", "minilm", "minilm-oracle", "imprag-zero-shot", "ra-it", "ra-dit-llama",
         "imprag-warmup", "imprag")  # fmt: skip


def write_report(out: str | Path, split: str) -> str:
    """Combine every system evaluated under `out` on `split` into results.md, benchmark.json, chart.png."""
    out = Path(out)
    every = load_summaries(sorted(path.parent for path in out.glob("*/metrics.json")))
    found = [summary for summary in every if summary["rows"] and summary["rows"][0]["split"] == split]
    found.sort(key=lambda s: (ORDER.index(n) if (n := s["rows"][0]["system"]) in ORDER else len(ORDER), n))
    table = markdown_table(found)
    shots = sorted({r.get("shots", 0) for s in found for r in s["rows"]})
    text = (
        f"# Results on the {split} split ({', '.join(map(str, shots))}-shot)\n\n"
        "EM (accuracy for fact-check), answer recall of the passages read in parentheses, %:\n\n"
        + table
        + "\nGold-article recall of the passages read (an evidence passage among them), %:\n\n"
        + markdown_table(
            [s for s in found if s["averages"].get("all", {}).get("article_recall") is not None],
            recall=None,
            value="article_recall",
        )
    )
    text += "\nTime per system (all tasks, this machine):\n\n" + "".join(
        f"- {s['rows'][0]['system']}: {sum(r['n'] for r in s['rows'])} items, "
        f"{s.get('seconds', {}).get('wall', '?')} s wall, {s.get('seconds', {}).get('cpu', '?')} s CPU\n"
        for s in found
    )
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "benchmark.json", json.dumps(benchmark_rows(found), indent=2) + "\n")
    plot(found, out / "chart.png", title=f"imprag benchmark, {split} split")
    return table
