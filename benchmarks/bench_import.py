"""Does `imprag data import` stream in flat memory? Peak RSS against the number of lines imported.

Writes KILT-format Natural Questions files of each size in `--lines` (default 1k, 100k, 1M), in the schema
of KILT's `nq-*-kilt.jsonl` (id, input, output: answers and provenance with every field KILT writes), each
item citing one page of the embedded corpus by title with a paragraph range (so every item's evidence
resolves: the evidence map is as full as the corpus allows at every size), then runs `imprag data import
FILE --out DIR --task nq --split dev` in a fresh subprocess per size and reads its peak RSS
(`ru_maxrss` of the child). The smallest size is the reference: what the process costs before lines add
anything (Python, the CLI's imports, the corpus pass). Flat means the peak hardly moves from 100k to 1M
lines; the uniqueness check keeps 8 bytes a line (64-bit hashes of the ids), so ~8 MB per million lines is
the design's own growth.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_import.py [--lines 1000,100000,1000000]
      (writes benchmarks/results/bench_import.json; the generated files go to a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "bench_import.json"


def write_kilt_nq(path: Path, lines: int, titles: list[str], seed: int = 0) -> int:
    """`lines` KILT NQ lines citing random pages of `titles`; returns the file's size in bytes."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for n in range(lines):
            title = rng.choice(titles)
            paragraph = rng.randint(1, 3)
            line = {
                "id": f"-{n}",
                "input": f"question {n} about {title.lower()} and what it is known for",
                "output": [
                    {
                        "answer": f"answer {rng.randint(0, 10**6)}",
                        "provenance": [
                            {
                                "wikipedia_id": str(rng.randint(10**5, 10**7)),
                                "title": title,
                                "section": "Section::::Abstract.",
                                "start_paragraph_id": paragraph,
                                "start_character": 0,
                                "end_paragraph_id": paragraph,
                                "end_character": 120,
                                "bleu_score": 1.0,
                                "meta": {},
                            }
                        ],
                    },
                    {"answer": "another answer"},
                ],
                "meta": {},
            }
            f.write(json.dumps(line) + "\n")
    return path.stat().st_size


def run_import(path: Path, out: Path) -> tuple[float, float]:
    """Import `path` in a fresh child process; (peak RSS MB of that child, wall seconds)."""
    command = [sys.executable, "-m", "imprag.cli", "data", "import", str(path), "--out", str(out)]
    command += ["--task", "nq", "--split", "dev"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB: the largest child so far
    if peak <= before:
        raise SystemExit(
            "ru_maxrss of the children did not rise: sizes must be run smallest first "
            "(RUSAGE_CHILDREN keeps the largest child's peak)"
        )
    return peak / 1024, seconds


def main() -> None:
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text
    from imprag.retrieval.corpus import read_corpus

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", default="1000,100000,1000000", help="file sizes, smallest first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    sizes = [int(x) for x in args.lines.split(",")]
    if sizes != sorted(sizes):
        raise SystemExit("--lines: give the sizes smallest first (peak RSS is read per child in order)")
    titles = [p.title for p in read_corpus("wiki-summaries")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lines in sizes:
            path = Path(tmp) / f"nq-{lines}.jsonl"
            size = write_kilt_nq(path, lines, titles)
            peak, seconds = run_import(path, Path(tmp) / f"bench-{lines}")
            manifest = json.loads((Path(tmp) / f"bench-{lines}" / "benchmark.json").read_text())
            imported = manifest["counts"]["nq"]["dev"]
            no_evidence = manifest["no_evidence"]["nq"]["not_in_corpus"]
            if imported != lines:
                raise SystemExit(f"{lines} lines imported as {imported} items")
            rows.append(
                {
                    "lines": lines,
                    "file_mb": round(size / 2**20, 1),
                    "peak_rss_mb": round(peak, 1),
                    "seconds": round(seconds, 1),
                    "lines_per_s": round(lines / seconds),
                    "items_without_evidence": no_evidence,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            path.unlink()
            shutil.rmtree(Path(tmp) / f"bench-{lines}")
    base = rows[0]["peak_rss_mb"]
    print("\n| lines | file MB | peak RSS MB | over the smallest | seconds | lines/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['lines']:,} | {r['file_mb']} | {r['peak_rss_mb']} | +{r['peak_rss_mb'] - base:.1f} | "
            f"{r['seconds']} | {r['lines_per_s']:,} |"
        )
    result = {"machine": describe_machine(), "settings": {"lines": sizes}, "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
