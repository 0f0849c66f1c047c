"""Retrieval training throughput on the embedded default (SmolLM2-135M): training queries per CPU-second of
the frozen-passage recipe (`configs/cpu-smollm2-frozen.yaml`: `optim.retrieval_batch_size` queries per
retrieval step, 128 since issue 13's second recipe (64 before), scored against every stored E_p in one
matmul, the dense teacher KL, the generator reading for `optim.batch_size` of them) against the
recipe before it (`configs/cpu-smollm2.yaml`: 8 queries per step, each with 5 positives + 4 hard negatives
and 16 random rows encoded with gradient), and the frozen recipe with the paper's shared passages
(`shared-corpus`: `model.passages=shared`, the method's own key, 32 queries per step, each query's 5
positives re-encoded with gradient against the rest of the corpus as of the last ANCE refresh, every
`objective.refresh_every=40` steps), measured in the same run.

Both run the loop's own `Trainer.train_step` on a warmup retrieval step, on real Wikipedia passages (the
embedded corpus) with synthetic labels: an item's own article plus random rows stand in for the teacher's
positives and top-32, which changes no tensor shape. The frozen recipe's corpus vectors are the base
model's E_p of the store's `--corpus` passages, encoded before timing (what the base index holds); the
matmul against the full 10,033-passage corpus is timed on its own and reported (it is a small share).
For `shared-corpus` the encoding is the ANCE refresh: it is timed (wall and CPU), scaled to the full corpus
(linear in passages) and its share of a step (1 / refresh_every) added to the step's cost in the
`..._amortized` columns, which the shared ratios use.

Each setting runs in fresh processes (`--processes`, alternating, so both see the same machine load); a
stage's first step is untimed (one-time allocation costs). Reported as medians over processes of each
process's median step: wall seconds, CPU seconds (process time, all threads), queries per step, and
queries per CPU-second; the ratio frozen/sampled of the last is the headline.

Run:  .venv/bin/python benchmarks/bench_training_throughput.py [--repeats 3] [--processes 2]
      (writes benchmarks/results/bench_training_throughput.json)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "bench_training_throughput.json"
RECIPES = {
    "sampled": "configs/cpu-smollm2.yaml",
    "frozen-corpus": "configs/cpu-smollm2-frozen.yaml",
    "shared-corpus": "configs/cpu-smollm2-frozen.yaml",
}
SETTINGS = {  # overrides beyond the recipe's
    "shared-corpus": [
        "model.passages=shared", "model.retrieval_key=base", "objective.refresh_every=40",
        "optim.retrieval_batch_size=32",
    ],
}  # fmt: skip
FULL_CORPUS = 10_033


def worker(args: argparse.Namespace) -> dict:
    import dataclasses
    import shutil
    import tempfile

    import torch
    from bench_training import synthetic_data

    from imprag import ImpRAG
    from imprag.training.config import load_train_config
    from imprag.training.loop import Trainer
    from imprag.training.retrieval import CorpusCandidates

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_throughput-"))
    _, data = synthetic_data(work, args.corpus, args.items, teacher_top=32)
    store = data.store
    overrides = [
        "model.center_prompts=16", "optim.steps_per_epoch=8", "optim.epochs=1", "objective.warmup_epochs=1",
        "data.mix=[1,0,0]",
    ]  # fmt: skip
    config = load_train_config(ROOT / RECIPES[args.worker], overrides + SETTINGS.get(args.worker, []))
    m = config.model
    model = ImpRAG.from_pretrained(m.name, b=m.b, t=m.t, dtype=config.weights_dtype(), passages=m.passages)
    own = model.config.embedding
    embedding = dataclasses.replace(  # as `train` does
        own, pooling=m.pooling, query_pooling=m.query_pooling, retrieval_key=m.retrieval_key
    )
    model.config = dataclasses.replace(model.config, embedding=embedding)
    corpus, encode_wall, encode_cpu = None, None, None
    if config.objective.negatives == "corpus":  # what the base index holds (shared: the refresh), untimed
        w0, c0 = time.perf_counter(), time.process_time()
        corpus = CorpusCandidates.encode(model, store, config.objective.refresh_every)
        encode_wall, encode_cpu = time.perf_counter() - w0, time.process_time() - c0
    torch.manual_seed(0)
    trainer = Trainer(model, data, config, work / "run", corpus=corpus)
    wall, cpu = [], []
    for r in range(args.repeats + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.train_step(r)
        if r:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        assert metrics["stage"] == "warmup" and metrics["kind"] == "retrieval", metrics
    queries = config.retrieval_batch_size
    # passages a step encodes with gradient: the sampled recipe's candidates, as the loop counts; with
    # shared passages the batch's positives; with frozen ones none
    batch = data.batch(0, queries)[1]
    encoded = 0
    if corpus is None:
        randoms = set(data.random_rows(0, 0, config.data.random_negatives))
        encoded = len({r for e in batch for r in e.candidates} | randoms)
    elif not corpus.frozen:
        encoded = len({r for e in batch for r in e.positives})
    shutil.rmtree(work, ignore_errors=True)
    matmul_s = None
    if corpus is not None:  # the one step cost that grows with the corpus, at its full size
        e_q = torch.randn(queries, model.dim)
        e_p = torch.randn(FULL_CORPUS, model.dim)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            (e_q @ e_p.T).topk(10, dim=1)
            times.append(time.perf_counter() - t0)
        matmul_s = statistics.median(times)
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "queries": queries,
        "readers": config.optim.batch_size,
        "encoded_with_gradient": encoded,
        "full_corpus_matmul_s": matmul_s,
        "refresh_every": config.objective.refresh_every if corpus is not None and not corpus.frozen else 0,
        # the corpus encoding, scaled to the full corpus: what one ANCE refresh costs with shared passages
        "full_corpus_encode_wall_s": None if encode_wall is None else encode_wall * FULL_CORPUS / len(store),
        "full_corpus_encode_cpu_s": None if encode_cpu is None else encode_cpu * FULL_CORPUS / len(store),
    }


def main() -> None:
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--corpus", type=int, default=2000, help="real passages in the store")
    parser.add_argument("--items", type=int, default=128, help="training items")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="fresh processes per setting (medians)")
    parser.add_argument("--worker", choices=list(RECIPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in RECIPES}
    for i in range(args.processes):
        for setting, done in runs.items():
            print(f"{setting}: process {i + 1} of {args.processes} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", setting, *sys.argv[1:]],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            done.append(json.loads(out.strip().splitlines()[-1]))
    rows = {}
    for setting, done in runs.items():
        wall, cpu = (statistics.median(r[key] for r in done) for key in ("wall_s", "cpu_s"))
        queries, every = done[0]["queries"], done[0]["refresh_every"]
        refresh_wall = statistics.median(r["full_corpus_encode_wall_s"] for r in done) if every else 0.0
        refresh_cpu = statistics.median(r["full_corpus_encode_cpu_s"] for r in done) if every else 0.0
        amortized_wall = wall + (refresh_wall / every if every else 0.0)
        amortized_cpu = cpu + (refresh_cpu / every if every else 0.0)
        rows[setting] = {
            "recipe": RECIPES[setting],
            "queries_per_step": queries,
            "encoded_with_gradient": done[0]["encoded_with_gradient"],
            "step_wall_s": round(wall, 3),
            "step_cpu_s": round(cpu, 3),
            "queries_per_cpu_s": round(queries / cpu, 3),
            "queries_per_wall_s": round(queries / wall, 3),
            "step_wall_s_each": [round(r["wall_s"], 2) for r in done],
            "full_corpus_matmul_s": done[0]["full_corpus_matmul_s"],
            "refresh_every": every,
            "full_corpus_refresh_wall_s": round(refresh_wall, 1) if every else None,
            "step_wall_s_amortized": round(amortized_wall, 3),
            "queries_per_cpu_s_amortized": round(queries / amortized_cpu, 3),
        }
    old, new, shared = rows["sampled"], rows["frozen-corpus"], rows["shared-corpus"]
    result = {
        "machine": describe_machine(),
        "settings": vars(args) | {"model": "smollm2-135m"},
        "rows": rows,
        "queries_per_cpu_s_ratio": round(new["queries_per_cpu_s"] / old["queries_per_cpu_s"], 2),
        "queries_per_wall_s_ratio": round(new["queries_per_wall_s"] / old["queries_per_wall_s"], 2),
        "shared_over_sampled_queries_per_cpu_s": round(
            shared["queries_per_cpu_s_amortized"] / old["queries_per_cpu_s"], 2
        ),
        "frozen_over_shared_queries_per_cpu_s": round(
            new["queries_per_cpu_s"] / shared["queries_per_cpu_s_amortized"], 2
        ),
    }
    head = (
        f"{'setting':<14} {'queries':>7} {'encoded':>7} {'wall s':>7} {'CPU s':>7} {'q/CPU-s':>8} {'q/s':>7}"
    )
    print("\n" + head + "  (medians; wall s each)")
    for name, r in rows.items():
        print(
            f"{name:<14} {r['queries_per_step']:>7} {r['encoded_with_gradient']:>7} {r['step_wall_s']:>7.2f} "
            f"{r['step_cpu_s']:>7.2f} {r['queries_per_cpu_s']:>8.2f} {r['queries_per_wall_s']:>7.2f}  "
            f"{r['step_wall_s_each']}"
        )
    matmul = new["full_corpus_matmul_s"]
    print(
        f"\nfrozen-corpus / sampled: {result['queries_per_cpu_s_ratio']:.1f}x queries per CPU-second, "
        f"{result['queries_per_wall_s_ratio']:.1f}x per wall second; the ({new['queries_per_step']} x D) x "
        f"(D x {FULL_CORPUS}) "
        f"scoring matmul + top-10 takes {matmul * 1e3:.1f} ms of a {new['step_wall_s']:.2f} s step"
    )
    print(
        f"shared-corpus: a refresh of the {FULL_CORPUS}-passage corpus takes "
        f"{shared['full_corpus_refresh_wall_s']:.0f} s (every {shared['refresh_every']} steps); with its "
        "share "
        f"{shared['queries_per_cpu_s_amortized']:.2f} queries per CPU-second: "
        f"{result['shared_over_sampled_queries_per_cpu_s']:.1f}x sampled, frozen-corpus "
        f"{result['frozen_over_shared_queries_per_cpu_s']:.1f}x it"
    )
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
