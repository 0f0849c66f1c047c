"""A training run's learning curve: retrieval health at each epoch end against the training queries seen.

`imprag train` logs, at every epoch end, the retrieval health of held-out dev prompts (gold-article recall@k
and the top-1 hub share per task, `training/health.py`; over the whole corpus with frozen passages) and, at
every step, the step's kind. This reads `RUN/log.jsonl` and lines the two up: for each epoch, how many
retrieval queries the run had trained on (retrieval steps so far x optim.retrieval_batch_size, from the
run's own `train_config.json`), its stage, and each task's recall (hub share). It runs nothing and needs no
model: the numbers are the ones the run logged.

Run:  .venv/bin/python benchmarks/learning_curve.py RUN [RUN ...] [--out FILE]
      (prints a markdown table; writes benchmarks/results/learning_curve.json, one entry per run)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "learning_curve.json"


def curve(run: Path) -> dict[str, Any]:
    """The health records of `run` with the retrieval queries seen by each."""
    config = json.loads((run / "train_config.json").read_text())
    optim, objective = config["optim"], config["objective"]
    if (every := config["engine"].get("log_every", 1)) != 1:
        raise SystemExit(f"{run}: engine.log_every={every}, so the log does not hold every step's kind")
    per_step = optim.get("retrieval_batch_size") or optim["batch_size"]
    warmup_steps = objective["warmup_epochs"] * optim["steps_per_epoch"]
    kinds: dict[int, str] = {}
    points = []
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "kind" in record:
            kinds[record["step"]] = record["kind"]  # a resumed run logs some steps twice: the last wins
        elif "health" in record:
            step = record["step"]
            seen = sum(1 for s, kind in kinds.items() if s <= step and kind == "retrieval") * per_step
            health = record["health"]
            tasks = {
                t: v for t, v in health.items() if isinstance(v, dict) and "hub_share" in v and t != "mean"
            }
            points.append({
                "epoch": record["epoch"],
                "step": step,
                "stage": "warmup" if step <= warmup_steps else "distill",
                "queries": seen,
                "scope": health.get("scope"),
                "recall": {t: v["recall"] for t, v in tasks.items()},
                "hub_share": {t: v["hub_share"] for t, v in tasks.items()},
            })  # fmt: skip
    return {"run": str(run), "retrieval_batch_size": per_step, "points": points}


def table(curves: list[dict[str, Any]]) -> str:
    tasks = list(dict.fromkeys(t for c in curves for p in c["points"] for t in p["recall"]))
    head = ["run", "epoch (step)", "stage", "retrieval queries seen", *tasks]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        for p in c["points"]:
            cells = [
                f"{p['recall'][t]:.2f} ({p['hub_share'][t]:.2f})" if t in p["recall"] else "" for t in tasks
            ]
            rows.append(
                f"| {Path(c['run']).name} | {p['epoch']} ({p['step']}) | {p['stage']} | {p['queries']:,} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="training output directories (imprag train --out)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    curves = [curve(run) for run in args.runs]
    print("recall@k of the dev prompts' gold articles (top-1 hub share in parentheses), at each epoch end")
    print(table(curves))
    from imprag.io import atomic_write_text

    atomic_write_text(args.out, json.dumps({"curves": curves}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
