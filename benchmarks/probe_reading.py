"""Reading probe for trained models: how often a model answers from an invented fact it reads only in its
layers b..t, with `probe_split.py`'s facts and scoring (a hit is the gold string in the greedy answer's
first line; the fact alone, then after two other invented facts). The facts are invented, so the model
cannot know them closed-book: this isolates reading from retrieval and from world knowledge.

Each model is read at its own split (an adapter's `imprag_config.json`); `name@b` reads the model at layer
split b instead (e.g. `smollm2-135m@9`, the base model at b=9).

Run:  .venv/bin/python benchmarks/probe_reading.py [--n 80] [--models smollm2-135m@7,smollm2-135m@9,DIR,...]
      (writes benchmarks/results/probe_reading.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from imprag import ImpRAG
from imprag.hardware import describe_machine
from imprag.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from probe_split import invented_facts, score

RESULTS = Path(__file__).parent / "results" / "probe_reading.json"
ADAPTER = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-imprag"


def load(spec: str) -> ImpRAG:
    name, _, b = spec.partition("@")
    return ImpRAG.from_pretrained(name, b=int(b) if b else None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=80, help="invented facts (default %(default)s)")
    parser.add_argument(
        "--models",
        default=f"smollm2-135m@7,smollm2-135m@9,{ADAPTER}",
        help="comma-separated model names or directories, each optionally @b (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    facts = invented_facts(args.n)
    print(f"{args.n} invented facts")
    print(f"{'model':<60} {'b':>3} {'t':>3} {'fact alone':>11} {'+2 distractors':>15}")
    rows = []
    for spec in args.models.split(","):
        model = load(spec)
        alone, mixed = score(model, facts, False), score(model, facts, True)
        b, t = model.split.b, model.split.t
        rows.append({"model": spec, "b": b, "t": t, "alone": alone, "with_distractors": mixed})
        print(f"{spec[-60:]:<60} {b:>3} {t:>3} {alone:>7}/{args.n} {mixed:>11}/{args.n}")
    atomic_write_text(
        args.out, json.dumps({"machine": describe_machine(), "n": args.n, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
