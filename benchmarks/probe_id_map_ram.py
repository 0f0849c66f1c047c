"""The RAM an ID map costs per vector, which no index file shows: IndexIDMap2 (what imprag built before)
against IndexIDMap (what it builds now) over the same 8-d Flat index, 1,000,000 vectors added in batches of
100,000 in a fresh process each, measured as the growth of anonymous resident memory (bench_ann.rss_anon,
after handing freed heap back to the OS). The Flat codes are 32 bytes a vector and both maps keep an
8-byte id table; IndexIDMap2 adds a hash map from id to position for reconstruct-by-id, which imprag
never calls.

Run:  .venv/bin/python benchmarks/probe_id_map_ram.py   (writes benchmarks/results/probe_id_map_ram.json)
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

import faiss
import numpy as np
from bench_ann import rss_anon

RESULTS = Path(__file__).parent / "results" / "probe_id_map_ram.json"
VECTORS, BATCH, DIM = 1_000_000, 100_000, 8


def grown(wrapper: str) -> float:
    """Bytes of RAM per vector that adding VECTORS vectors to `{wrapper},Flat` took."""
    index = faiss.index_factory(DIM, f"{wrapper},Flat", faiss.METRIC_INNER_PRODUCT)
    batch = np.zeros((BATCH, DIM), dtype=np.float32)
    before = rss_anon()
    for start in range(0, VECTORS, BATCH):
        index.add_with_ids(batch, np.arange(start, start + BATCH, dtype=np.int64))
    return (rss_anon() - before) / VECTORS


def main() -> None:
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    rows = {}
    for wrapper in ("IDMap2", "IDMap"):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as fresh:
            rows[wrapper] = round(fresh.submit(grown, wrapper).result(), 1)
        print(f"{wrapper},Flat ({DIM}-d, {DIM * 4} bytes of code): {rows[wrapper]} bytes of RAM a vector")
    print(f"the reverse map of IndexIDMap2: {rows['IDMap2'] - rows['IDMap']:.1f} bytes a vector")
    result = {"machine": describe_machine(), "vectors": VECTORS, "dim": DIM, "ram_bytes_per_vector": rows}
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
