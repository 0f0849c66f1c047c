"""How the implicit-query score is computed, measured: pooling x scoring, on the training issue's health pool.

The paper scores s(q, p) = E_q . E_p with last-token states. Before (and, at CPU budgets, after) training,
that score sends every prompt to one hub passage: the states share a large common component, and the
passage with the largest projection on the prompts' mean direction wins for every query. This probe
measures, for a model (untrained default or a trained checkpoint), recall@10 of a gold article and hubness
for the dev prompts of the seen and unseen tasks, over the same pool as the training loop's retrieval
health (every dev item's gold articles + 1,000 random corpus passages), for:

    pooling  last (the paper) | mean over tokens                      (EmbeddingConfig.pooling)
    scoring  dot (the paper)  | query-centered: (E_q - mu_q) . E_p   (mu_q: mean E_q of 400 train prompts;
             cosine           | centered cosine: both sides centered  removing the shared direction)
                                and normalised

Query centering changes no passage vector (the index stays valid); it removes the per-passage bias
mu_q . E_p, which is what makes a hub.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_scoring.py --data BENCH --index INDEX
          [--model smollm2-135m|RUN/model] [--out benchmarks/results/probe_scoring.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import Tensor

from imprag import ImpRAG, PassageIndex
from imprag.data import Benchmark
from imprag.hardware import describe_machine
from imprag.io import atomic_write_text
from imprag.training.config import EvalConfig
from imprag.training.health import RetrievalHealth

RESULTS = Path(__file__).parent / "results" / "probe_scoring.json"
Score = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (E_q, E_p, mu_q, mu_p) -> (n, P)

SCORES: dict[str, Score] = {
    "dot": lambda q, p, mq, mp: q @ p.T,
    "query-centered": lambda q, p, mq, mp: (q - mq) @ p.T,
    "cosine": lambda q, p, mq, mp: F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T,
    "centered-cosine": lambda q, p, mq, mp: F.normalize(q - mq, dim=-1) @ F.normalize(p - mp, dim=-1).T,
}


def probe(model_name: str, bench: Benchmark, health: RetrievalHealth, calibration: list[str]) -> dict:
    texts = [p.content for p in health.store.get(health.pool)]
    pool = torch.tensor(health.pool)
    rows: dict[str, dict] = {}
    for pooling in ("last", "mean"):
        model = ImpRAG.from_pretrained(model_name)  # keep its saved embedding settings, vary the pooling
        model.config = replace(  # and score uncentered: the probe centers (or not) itself
            model.config, embedding=replace(model.config.embedding, pooling=pooling, query_center=None)
        )
        e_p = model.embed_passages(texts)
        mu_q, mu_p = model.embed_queries(calibration).mean(0), e_p.mean(0)
        queries = {tuple(prompts): model.embed_queries(prompts) for prompts in health.prompts.values()}
        for name, score in SCORES.items():
            ranked = {
                prompts: pool[score(e_q, e_p, mu_q, mu_p).topk(health.k, dim=1).indices].tolist()
                for prompts, e_q in queries.items()
            }
            rows[f"{pooling}/{name}"] = health.report(lambda prompts, r=ranked: r[tuple(prompts)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="benchmark directory (imprag data build)")
    parser.add_argument("--index", required=True, help="index directory over the benchmark's corpus")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Benchmark.load(args.data)
    store = PassageIndex.load(args.index).store
    health = RetrievalHealth.from_benchmark(bench, store, EvalConfig(pool=1000), seed=0)
    calibration = [it.prompt for it in bench.items("describe", "train")[:300]]
    calibration += [it.prompt for it in bench.items("denoise", "train")[:100]]
    started = time.perf_counter()
    rows = probe(args.model, bench, health, calibration)
    tasks = list(health.prompts)
    print(f"model {args.model}; pool {len(health.pool)} passages; recall@{health.k} / hub share per task")
    print("| pooling/scoring | " + " | ".join(tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    for name, row in rows.items():
        cells = [f"{row[t]['recall']:.2f} / {row[t]['hub_share']:.2f}" for t in tasks]
        print(f"| {name} | " + " | ".join(cells) + " |")
    record = {
        "machine": describe_machine(),
        "model": args.model,
        "pool": len(health.pool),
        "k": health.k,
        "per_task": {t: len(p) for t, p in health.prompts.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    out = args.out
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous[args.model] = record
    atomic_write_text(out, json.dumps(previous, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
