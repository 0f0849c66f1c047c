"""Zero-shot reading probe: which layer split and passage layout let the *untrained* embedded model answer
from passages it reads only in layers b..t? This is how the defaults of `smollm2-135m` were chosen.

Facts are invented (seeded random names in eight relation templates), so the model cannot know them
closed-book. Each question is asked as `Q: {question}\\nA:` reading (a) its fact alone, (b) its fact
after two other invented facts (3 passages). A hit is the gold string in the greedy answer's first line.

Run:  .venv/bin/python benchmarks/probe_split.py [--n 80]   (writes benchmarks/results/probe_split.json)
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from imprag import ImpRAG, LayerSplit, ReaderConfig
from imprag.hardware import describe_machine
from imprag.io import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "probe_split.json"

TEMPLATES = [
    ("The capital of {place} is {place2}.", "What is the capital of {place}?", "{place2}"),
    ("{person} invented the {thing} in {year}.", "Who invented the {thing}?", "{person}"),
    (
        "The {place} river flows into Lake {place2}.",
        "Which lake does the {place} river flow into?",
        "{place2}",
    ),
    ("The currency of {place} is the {word}.", "What is the currency of {place}?", "{word}"),
    ("{person} was the first mayor of {place}.", "Who was the first mayor of {place}?", "{person}"),
    ("{person} wrote the novel The {word} Garden.", "Who wrote the novel The {word} Garden?", "{person}"),
    ("Mount {place} is {height} metres tall.", "How tall is Mount {place}?", "{height}"),
    ("{person} was born in the town of {place}.", "In which town was {person} born?", "{place}"),
]
THINGS = ["glass violin", "steam loom", "tide clock", "paper kite engine", "salt lamp", "copper harp"]
SYLLABLES = ["vel", "or", "ia", "zen", "tar", "mor", "wen", "dro", "van", "quel", "stan", "bri", "gar", "lo"]
SPLITS = [(7, 20), (7, 25), (7, 27), (7, 29), (4, 29), (10, 29)]


def invented_facts(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)

    def name(parts: int) -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()

    facts = []
    for i in range(n):
        fact, question, gold = TEMPLATES[i % len(TEMPLATES)]
        slots = {
            "place": name(3),
            "place2": name(3),
            "person": f"{name(2)} {name(2)}",
            "thing": rng.choice(THINGS),
            "year": str(rng.randint(1700, 1990)),
            "word": name(2).lower(),
            "height": f"{rng.randint(1, 8)},{rng.randint(100, 999)}",
        }
        facts.append((fact.format(**slots), question.format(**slots), gold.format(**slots)))
    return facts


def score(model: ImpRAG, facts: list[tuple[str, str, str]], distractors: bool) -> int:
    prompts = [f"Q: {q}\nA:" for _, q, _ in facts]
    n = len(facts)
    passages = [
        [facts[(i + 3) % n][0], facts[(i + 5) % n][0], fact] if distractors else [fact]
        for i, (fact, _, _) in enumerate(facts)
    ]
    hits = 0
    for start in range(0, n, 20):
        out = model.generate(
            prompts[start : start + 20], passages=passages[start : start + 20], max_new_tokens=12, stop=["\n"]
        )
        hits += sum(
            g.lower() in o.text.lower() for o, (_, _, g) in zip(out, facts[start : start + 20], strict=True)
        )
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=80, help="invented facts (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    facts = invented_facts(args.n)
    base = ImpRAG.from_pretrained("smollm2-135m")
    closed = base.generate([f"Q: {q}\nA:" for _, q, _ in facts], max_new_tokens=12, stop=["\n"])
    closed_hits = sum(g.lower() in o.text.lower() for o, (_, _, g) in zip(closed, facts, strict=True))
    print(f"{args.n} invented facts; closed-book (no passage): {closed_hits}/{args.n}\n")
    print(f"{'b':>3} {'t':>3} {'layout':>7} {'l_max':>6} {'fact alone':>11} {'+2 distractors':>15}")
    # The default layout (start, l_max=128) over splits; then layouts and gap sizes at the chosen split.
    variants = [("start", 128, s) for s in SPLITS]
    variants += [
        ("start", 48, (7, 29)),
        ("start", 256, (7, 29)),
        ("flush", 128, (7, 29)),
        ("flush", 256, (7, 29)),
    ]
    rows = []
    for layout, l_max, (b, t) in variants:
        reader = ReaderConfig(k=3, l_max=l_max, layout=layout)
        model = ImpRAG(base.model, base.tokenizer, LayerSplit(b, t), reader=reader)
        alone, mixed = score(model, facts, False), score(model, facts, True)
        rows.append(
            {"b": b, "t": t, "layout": layout, "l_max": l_max, "alone": alone, "with_distractors": mixed}
        )
        print(f"{b:>3} {t:>3} {layout:>7} {l_max:>6} {alone:>7}/{args.n} {mixed:>11}/{args.n}")
    result = {
        "model": "smollm2-135m",
        "dtype": str(base.backbone.dtype).removeprefix("torch."),
        "machine": describe_machine(),
        "n": args.n,
        "closed_book": closed_hits,
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
