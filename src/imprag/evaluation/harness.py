"""Score a system on benchmark tasks, resumably: predictions are appended per batch, so an interrupted run
continues where it stopped.

    OUT/run.json                         the system's settings, model, index manifest, decode settings,
                                         split, limit, seed, package versions (written first; a resumed run
                                         must match it)
    OUT/predictions/{task}.jsonl         one scored prediction per item (appended, fsynced per batch)
    OUT/seconds.json                     generation time so far, kept across resumes
    OUT/metrics.json                     rows {system, task, format, split, n, em, recall, f1,
                                         article_recall} and averages over seen and unseen tasks
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from imprag.config import DecodeConfig
from imprag.data.benchmark import Benchmark, Item
from imprag.data.sources import installed_versions
from imprag.data.tasks import Task, get_task
from imprag.errors import ImpragError
from imprag.evaluation import metrics
from imprag.evaluation.systems import Prediction, System
from imprag.io import atomic_write_text, writer_lock

__all__ = ["EvalError", "demonstrations", "evaluate", "score_item", "summarize"]

log = logging.getLogger(__name__)

SECONDS = "seconds.json"
"""Time spent generating so far (wall and CPU), updated after every batch so an interrupted run keeps it."""

STOP = ("\n", " Q:", " A:", " B:")
"""An answer ends at a newline or where the model starts a new template field (untrained models often
continue "A: x B: y" as if listing options); the same for every system."""


class EvalError(ImpragError, ValueError):
    """Bad evaluation request or an output directory holding another run."""


def score_item(item: Item, task: Task, pred: Prediction, retrieves: bool) -> dict[str, Any]:
    """The per-item record: prediction, read passage ids, and every applicable score."""
    golds = item.answers
    correct = metrics.true_false_accuracy if task.scoring == "accuracy" else metrics.exact_match
    texts = [p.content for p in pred.passages]
    return {
        "id": item.id,
        "prompt": item.prompt,
        "prediction": pred.text,
        "answers": golds,
        "read": [p.id for p in pred.passages],
        "em": correct(pred.text, golds),
        "f1": metrics.token_f1(pred.text, golds) if task.scoring == "em" else None,
        "recall": metrics.answer_recall(texts, golds) if retrieves and task.answer_recall else None,
        "article_recall": metrics.article_recall(
            [p.id for p in pred.passages], item.evidence
        ) if retrieves and item.evidence else None,  # no evidence (an imported item): not measurable
        "retrieved": retrieves,
    }  # fmt: skip


def summarize(
    system: str, split: str, records: dict[str, list[dict[str, Any]]], shots: int = 0
) -> dict[str, Any]:
    """Per-task rows (means of the item scores) and averages over seen and over unseen tasks."""
    rows = []
    for task_name, recs in records.items():
        task = get_task(task_name)
        row: dict[str, Any] = {
            "system": system, "task": task_name, "format": task.format, "split": split, "shots": shots,
        }  # fmt: skip
        row["n"] = len(recs)
        for key in ("em", "recall", "f1", "article_recall"):
            row[key] = metrics.average(recs, key)
        # a system that retrieves (records written before "retrieved" existed: one with article recall)
        retrieved = any(r.get("retrieved", r.get("article_recall") is not None) for r in recs)
        hub = metrics.hubness([r["read"][0] if r.get("read") else None for r in recs]) if retrieved else None
        row["hub_share"], row["distinct_top1"] = hub if hub else (None, None)
        rows.append(row)
    averages = {}
    for fmt in ("seen", "unseen"):
        group = [r for r in rows if r["format"] == fmt]
        if group:
            averages[fmt] = {key: metrics.average(group, key) for key in ("em", "recall", "article_recall")}
    every = [r for r in rows if r["format"] in ("seen", "unseen")]
    if every:
        averages["all"] = {key: metrics.average(every, key) for key in ("em", "recall", "article_recall")}
    return {"rows": rows, "averages": averages}


def evaluate(
    system: System,
    benchmark: Benchmark,
    tasks: Sequence[str],
    split: str,
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    record: dict[str, Any] | None = None,
    overwrite: bool = False,
    shots: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `system` on `tasks` of `split`; resumes predictions already in `out`. Returns the summary.

    `limit` takes the first n items of each task. Items are stored in a seeded random order of their
    groups (an entity's items are adjacent, e.g. one country's slot-filling relations), so this is a
    cluster sample: unbiased, but n items cover fewer entities than n independent draws would. `record`
    adds facts to run.json (model and index manifests, ...). `shots` > 0 puts that
    many solved examples before every prompt (see `demonstrations`); 0 is the paper's protocol.
    One process writes `out` at a time (`imprag.io.writer_lock`): a second one stops with LockedError.
    """
    out = Path(out)
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be a positive number of items per task, got {limit}")
    if shots < 0:
        raise EvalError(f"shots must be >= 0, got {shots}")
    demos = {task: demonstrations(benchmark, task, shots) for task in tasks}
    used = {task: {d.id for d in demos[task]} for task in tasks}
    items = {  # errors name the task/split; a demonstration is never also a question
        task: [it for it in benchmark.items(task, split) if it.id not in used[task]][:limit] for task in tasks
    }
    run = {
        "system": system.describe(),
        "split": split,
        "tasks": list(tasks),
        "limit": limit,
        "seed": seed,
        "shots": shots,
        "batch_size": batch_size,  # bf16 batches are padded: batching can change a prediction slightly
        "demonstrations": {task: [d.id for d in demos[task]] for task in tasks},
        "benchmark": {k: benchmark.manifest.get(k) for k in ("seed", "corpus", "counts", "packages")},
        **(record or {}),
    }
    with writer_lock(out, "imprag eval"):  # one writer per evaluation folder: predictions append
        _start_or_resume(out, run, overwrite)
        done = {task: _read_predictions(out / "predictions" / f"{task}.jsonl") for task in tasks}
        todo = sum(len([it for it in items[t] if it.id not in done[t]]) for t in tasks)
        spent = _previous_seconds(out / SECONDS)  # a resumed run adds to the time already spent
        wall, cpu = time.perf_counter(), time.process_time()
        desc = f"{system.describe()['system']} {split}"
        with tqdm(total=todo, desc=desc, unit="item", disable=not progress) as bar:
            for task_name in tasks:
                task = get_task(task_name)
                decode = DecodeConfig(max_new_tokens=task.max_new_tokens, stop=STOP)
                prefix = "".join(f"{d.prompt} {d.answers[0]}\n\n" for d in demos[task_name])
                pending = [it for it in items[task_name] if it.id not in done[task_name]]
                path = out / "predictions" / f"{task_name}.jsonl"
                for start in range(0, len(pending), batch_size):
                    batch = pending[start : start + batch_size]
                    bar.set_postfix_str(task_name)
                    prompts, queries = [it.prompt for it in batch], [it.oracle_query for it in batch]
                    preds = system.answer(prompts, queries, decode, prefix)
                    pairs = zip(batch, preds, strict=True)
                    recs = [score_item(it, task, p, system.retrieves) for it, p in pairs]
                    _append(path, recs)
                    done[task_name].update({r["id"]: r for r in recs})
                    bar.update(len(batch))
                    spent = {
                        "wall": spent["wall"] + time.perf_counter() - wall,
                        "cpu": spent["cpu"] + time.process_time() - cpu,
                    }
                    wall, cpu = time.perf_counter(), time.process_time()
                    atomic_write_text(out / SECONDS, json.dumps(spent) + "\n")
        name = system.describe()["system"]
        records = {t: [done[t][it.id] for it in items[t]] for t in tasks}
        summary = summarize(name, split, records, shots)
        summary["seconds"] = {key: round(value, 1) for key, value in spent.items()}  # generation time
        summary["run"] = run
        atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
        return summary


def demonstrations(benchmark: Benchmark, task: str, shots: int) -> list[Item]:
    """Solved examples for few-shot prompts: QA-format tasks take the first `shots` of `describe`'s train
    split (the trained QA format); the others the first of their own dev split (never a test item)."""
    if shots == 0:
        return []
    source = ("describe", "train") if get_task(task).format == "seen" else (task, "dev")
    pool = benchmark.items(*source)
    if len(pool) < shots:
        raise EvalError(
            f"{shots} demonstrations asked for {task} but {source[0]} {source[1]} has {len(pool)}"
        )
    return pool[:shots]


def _previous_seconds(path: Path) -> dict[str, float]:
    try:
        seconds = json.loads(path.read_text(encoding="utf-8"))
        return {"wall": float(seconds["wall"]), "cpu": float(seconds["cpu"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"wall": 0.0, "cpu": 0.0}


VERSIONED = ("imprag", "torch", "transformers", "faiss-cpu", "sentence-transformers", "bm25s", "numpy")


def _start_or_resume(out: Path, run: dict[str, Any], overwrite: bool) -> None:
    path = out / "run.json"
    if path.is_file() and not overwrite:
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EvalError(f"{path} is damaged ({e}); rerun with --overwrite") from e
        same = ("system", "split", "limit", "seed", "shots", "batch_size", "model", "index", "benchmark")
        changed = [k for k in same if before.get(k) != run.get(k)]
        if changed:
            raise EvalError(
                f"{out} holds a run with other {', '.join(changed)}; resume it with the same settings, "
                "choose another --out, or pass --overwrite"
            )
        if before.get("tasks") != run["tasks"]:
            log.info("resuming %s with tasks %s (before: %s)", out, run["tasks"], before.get("tasks"))
    elif overwrite:
        for old in [*(out / "predictions").glob("*.jsonl"), out / "metrics.json", out / SECONDS]:
            old.unlink(missing_ok=True)
    run = {
        **run,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": installed_versions(VERSIONED),
    }
    atomic_write_text(path, json.dumps(run, indent=2, default=str) + "\n")


def _read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written; a last line cut off by a crash is ignored (it is redone)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # cut off mid-line by a crash: drop the partial record
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    done = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["id"]] = rec
    return done


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
