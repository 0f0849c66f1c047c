"""The retrieval layer b, swept: how well layers 0..b learn to retrieve, for several b, at the same budget.

For each b, `imprag train` runs the CPU recipe's retrieval stage alone (`objective.system=retriever`:
the stage-1 multi-label NCE on MiniLM pseudo labels, LoRA on layers 0..b, mean pooling, query centering,
`--epochs` x `--steps` batches of 8), and the loop's retrieval health on the dev split is read from its
`log.jsonl`: gold-article recall@10 of 50 dev prompts per task over a pool of every gold article plus
1,000 random passages, hub share, distinct top-1 passages. The untrained row is the same health for the
base model (centered with the same prompts), measured here before training.

This is the retrieval half of the b trade-off. The other half (layers below b cannot read passages, so a
larger b leaves fewer reading layers) needs a full training run per b, which is beyond this machine's
budget; the paper's measured choice for its 3B/8B models is in docs/method.md.

Each run directory is reused: a finished run is read, an interrupted one resumes.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_b.py --data BENCH --index INDEX --workdir DIR \
          [--b 5,7,9] [--epochs 3] [--steps 10]
      (writes benchmarks/results/sweep_b.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cpu-smollm2.yaml"
RESULTS = Path(__file__).parent / "results" / "sweep_b.json"


def train(b: int, args: argparse.Namespace) -> Path:
    out = Path(args.workdir) / f"retriever-b{b}"
    command = [
        sys.executable, "-m", "imprag.cli", "train", "--config", str(RECIPE), "--out", str(out),
        f"data.benchmark={args.data}", f"data.index={args.index}", f"model.b={b}",
        "objective.system=retriever", "data.mix=[1,0,0]", "engine.train_groups=[bottom]",
        f"optim.epochs={args.epochs}", f"objective.warmup_epochs={args.epochs}",
        f"optim.steps_per_epoch={args.steps}",
    ]  # fmt: skip
    if args.label_cache:
        command.append(f"data.label_cache={args.label_cache}")
    subprocess.run(command, check=True)
    return out


def untrained_probe(args: argparse.Namespace) -> Callable[[int], dict]:
    """Health of the base model at a given b, mean-pooled and centered as the runs start (the data and the
    health pool are loaded once)."""
    from dataclasses import replace

    from imprag import ImpRAG, PassageIndex
    from imprag.data import Benchmark
    from imprag.training.config import load_train_config
    from imprag.training.data import load_training_data
    from imprag.training.health import RetrievalHealth

    overrides = [f"data.benchmark={args.data}", f"data.index={args.index}", "data.mix=[1,0,0]"]
    config = load_train_config(RECIPE, [*overrides, f"data.label_cache={args.label_cache}"])
    data = load_training_data(config.data, Path(args.workdir), config.optim.seed)
    store = PassageIndex.load(args.index).store
    health = RetrievalHealth.from_benchmark(Benchmark.load(args.data), store, config.eval, config.optim.seed)
    prompts = data.calibration_prompts(config.model.center_prompts)

    def measure(b: int) -> dict:
        model = ImpRAG.from_pretrained(config.model.name, b=b, dtype=config.weights_dtype())
        model.config = replace(model.config, embedding=replace(model.config.embedding, pooling="mean"))
        model.calibrate(prompts, k=config.objective.read_k)
        return health(model)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="benchmark directory (imprag data build)")
    parser.add_argument("--index", required=True, help="index directory with the minilm baseline")
    parser.add_argument("--workdir", required=True, help="where the runs go (reused when present)")
    parser.add_argument("--b", default="5,7,9", help="comma-separated retrieval layers")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--label-cache", default="", help="pseudo-label cache directory (shared by runs)")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    layers = [int(b) for b in args.b.split(",")]
    untrained = None if args.no_untrained else untrained_probe(args)
    rows = {}
    for b in layers:
        started = time.perf_counter()
        out = train(b, args)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        steps = [r for r in log if "stage" in r]
        rows[b] = {
            "untrained": untrained and untrained(b),
            "health": {r["epoch"]: r["health"] for r in log if "health" in r},
            "median_step_seconds": sorted(r["sec"] for r in steps)[len(steps) // 2],
            "wall_seconds_this_call": round(time.perf_counter() - started, 1),
        }
    tasks = [t for t in next(iter(rows.values()))["health"][args.epochs] if t not in ("mean", "pool")]
    print(
        f"recall@10 / hub share of the dev prompts per task, after {args.epochs}x{args.steps} retrieval steps"
    )
    print("| b | when | " + " | ".join(tasks) + " |")
    print("|---" * (len(tasks) + 2) + "|")
    for b, row in rows.items():
        for when, health in (("untrained", row["untrained"]), ("trained", row["health"][args.epochs])):
            if health is not None:
                cells = [f"{health[t]['recall']:.2f} / {health[t]['hub_share']:.2f}" for t in tasks]
                print(f"| {b} | {when} | " + " | ".join(cells) + " |")
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    record = {
        "machine": describe_machine(),
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": 8,
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
