"""Gold-article recall of the implicit query over a whole benchmark split, per task, for several models.

`imprag eval --limit 50` scores answers on the first 50 items of each task, whose gold-article recall
moves by 2 points per item; training health reads dev only. This reads every item of a split: for each
model, each item's prompt is searched against the index (`ImpRAG.retrieve`, the prompt where generation
puts it), and recall@5 (what `imprag eval` reads at k=5) and recall@10 (the training health's k) are
the share of items with a gold article among the top 5 / 10. No generation: a few seconds per model.

Run:  .venv/bin/python benchmarks/recall_split.py --index INDEX --models M1,M2,... [--split test]
          [--out FILE]
      (INDEX: an index the models can read, e.g. the base index with the trained retrieval key's f_p for
      frozen-passage models; writes benchmarks/results/recall_split.json by default)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "recall_split.json"
TASKS = ("describe", "fanoutqa", "trivia", "slot-filling", "fact-check", "entity-linking")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="index directory the models read")
    parser.add_argument("--models", required=True, help="comma-separated model folders or names")
    parser.add_argument("--data", default="data/benchmark", help="benchmark directory")
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()

    from imprag import ImpRAG
    from imprag.data.benchmark import Benchmark
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text
    from imprag.retrieval.index import PassageIndex

    bench = Benchmark.load(args.data)
    tasks = [t for t in TASKS if bench.counts.get(t, {}).get(args.split)]
    result = {"machine": describe_machine(), "index": args.index, "split": args.split, "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        model = ImpRAG.from_pretrained(name)
        index = PassageIndex.load(args.index, model)
        started, rows = time.perf_counter(), {}
        for task in tasks:
            items = bench.items(task, args.split)
            hits = model.retrieve([it.prompt for it in items], index, k=10)
            found = [[p.id for p in h] for h in hits]
            rows[task] = {"n": len(items)}
            for k in (5, 10):
                share = sum(bool(set(f[:k]) & set(it.evidence)) for f, it in zip(found, items, strict=True))
                rows[task][f"recall@{k}"] = round(100 * share / len(items), 1)
        for k in ("recall@5", "recall@10"):
            rows[f"avg {k}"] = round(sum(rows[t][k] for t in tasks) / len(tasks), 1)
        result["models"][name] = rows
        cells = " ".join(f"{t} {rows[t]['recall@5']}/{rows[t]['recall@10']}" for t in tasks)
        took = time.perf_counter() - started
        print(
            f"{name}: {cells} | avg {rows['avg recall@5']}/{rows['avg recall@10']} ({took:.0f} s)", flush=True
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
