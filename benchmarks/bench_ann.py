"""Approximate search on real implicit queries: which FAISS index keeps recall@10 at 10k and 1M passages.

Queries are real: the E_q of every dev and test prompt of the benchmark (1,825 prompts of six tasks) from
the committed adapter (`--model`). Passages:
  * 10k real: the embedded corpus' 10,033 passages as the index built for that adapter holds them
    (`--index`: the base model's mean layer-7 inputs f_p, 576-d, which the adapter's query
    W_ret^T (E_q - mu_q) is searched against), and the same passages' E_p = W_ret f_p (192-d: the
    method's mean-pooled layer-7 keys, the vectors an index of a shared-passage model holds), searched
    with E_q - mu_q. Both give the same scores (checked: the same exact top-10s).
  * 1M fitted: 1,000,000 vectors drawn from a Gaussian mixture (1,000 centres) whose mean and covariance
    are fitted to the real 192-d E_p (benchmarks/bench_index.py `Mixture`), searched with the same real
    queries. The mixture is an assumption; the 10k rows also run on 10,033 mixture vectors so the gap
    between real and fitted vectors is in the table.
Per index: recall@10 against exact search over the same vectors; single-query latency p50/p99 with one
FAISS thread (200 one-query calls) and as a ratio to exact search's p50 in the same run; the index's RAM
per passage (the anonymous resident memory a fresh process gains by loading the index file: ids, codes,
lists, maps and allocator overhead, which the file size does not show) and its file bytes per passage;
build seconds. Indexes are built as `imprag index` builds them (`new_faiss_index`: an IVF holds its ids,
other types sit under an IndexIDMap), inner product, trained on <= 100,000 vectors (an even stride here,
the first vectors of each shard there), polysemous training off, search parameters set through
`PassageIndex.set_search_params`; centred rows subtract the mean of all vectors (`imprag index`: of its
training sample; any fixed vector keeps the rankings).

mmap rows load the file as `imprag index --mmap` does (FAISS IO_FLAG_MMAP_IFC: a Refine(Flat)'s exact
vectors stay in the file and re-scoring reads k * rerank of them a query). Their latency is measured
twice: cold (the file dropped from the OS page cache first, the first 200 queries, no warm-up: rows
are read from this machine's disk as searches touch them) and warm (after every query ran once).

Centred rows store every passage minus the passages' mean (`IndexConfig.center`, on by default for every
factory but Flat): each query's scores change by one constant, so the exact top-10 is the same; the
uncentred rows are what `imprag index` built before it.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ann.py --index indexes/base-keyin \
          [--model models/smollm2-135m-imprag] [--data data/benchmark] [--million 1000000] [--quick]
          [--only FACTORY --out OTHER.json]
      (the index: `imprag index wiki-summaries --out indexes/base-keyin --pooling mean --retrieval-key
      trained`; writes benchmarks/results/bench_ann.json). HNSW rows name their efConstruction
      (IndexConfig.ef_construction); `--only HNSW32` runs just those rows (bench_ann_hnsw.json).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

import bench_index
import faiss
import numpy as np
from bench_index import Mixture, recall

from imprag.retrieval.index import PassageIndex, hnsw_graph, new_faiss_index, skip_polysemous_training

RESULTS = Path(__file__).parent / "results" / "bench_ann.json"
K = 10
TRAIN_SIZE = 100_000  # IndexConfig.train_size's default


def real_vectors(index_dir: str, model_dir: str, data: str) -> dict[str, Any]:
    """The real queries and passages of both spaces (see the module docstring)."""
    import torch

    from imprag import ImpRAG
    from imprag.data.benchmark import Benchmark

    torch.set_num_threads(2)
    model = ImpRAG.from_pretrained(model_dir)
    index = PassageIndex.load(index_dir, model)
    _, f_p = index.vectors()
    bench = Benchmark.load(data)
    prompts = [
        it.prompt
        for task in bench.tasks
        for split in ("dev", "test")
        if bench.counts[task].get(split)
        for it in bench.items(task, split)
    ]
    e_q = model.embed_queries(prompts).float()  # centred by mu_q
    key = model.retrieval_key
    if key is None:
        raise SystemExit(f"{model_dir} has no trained retrieval key; pass the committed adapter")
    key = key.float()
    return {
        "prompts": len(prompts),
        "f_p": (f_p.numpy(), (e_q @ key).numpy()),
        "E_p": ((f_p @ key.T).numpy(), e_q.numpy()),
    }


def build(factory: str, x: np.ndarray, ef_construction: int = 40) -> tuple[faiss.Index, float]:
    start = time.perf_counter()
    index = new_faiss_index(x.shape[1], factory)
    skip_polysemous_training(index)
    if (graph := hnsw_graph(index)) is not None:  # as _assemble sets it
        graph.hnsw.efConstruction = ef_construction
    if not index.is_trained:
        step = max(1, len(x) // TRAIN_SIZE)
        index.train(np.ascontiguousarray(x[::step][:TRAIN_SIZE]))
    for s in range(0, len(x), 100_000):
        index.add_with_ids(x[s : s + 100_000], np.arange(s, min(s + 100_000, len(x)), dtype=np.int64))
    return index, time.perf_counter() - start


def latencies(index: faiss.Index, queries: np.ndarray, count: int) -> list[float]:
    """Seconds per one-query call with one FAISS thread (bench_index's timing loop)."""
    return bench_index.latencies(index, queries, count, threads=1)


REFINE = [
    {"nprobe": 16, "rerank": 8},
    {"nprobe": 64, "rerank": 8},
    {"nprobe": 128, "rerank": 16},
    {"nprobe": 256, "rerank": 16},
    {"nprobe": 512, "rerank": 16},
]
EXACT_REFINE = [
    {"nprobe": 64, "rerank": 32},
    {"nprobe": 128, "rerank": 64},
    {"nprobe": 256, "rerank": 64},
    {"nprobe": 256, "rerank": 128},
    {"nprobe": 512, "rerank": 128},
]
SMALL_REFINE = [{"nprobe": 256, "rerank": 128}, {"nprobe": 512, "rerank": 256}]
EF = [{"ef_search": ef} for ef in (64, 128, 256, 512, 1024, 2048)]
CONFIGS: list[tuple[str, bool, bool, list[dict[str, int]], int]] = [
    # factory, centred, mmap, search settings, HNSW efConstruction (IndexConfig.ef_construction)
    ("Flat", False, False, [{}], 40),
    ("IVF{lists},PQ48", False, False, [{"nprobe": 64}], 40),
    ("IVF{lists},PQ48", True, False, [{"nprobe": 16}, {"nprobe": 64}], 40),
    ("IVF{lists},PQ48,Refine(SQ8)", False, False, [{"nprobe": 64, "rerank": 8}], 40),
    ("IVF{lists},PQ48,Refine(SQ8)", True, False, REFINE, 40),
    ("IVF{lists},PQ96x4fs,Refine(Flat)", True, False, [{"nprobe": 256, "rerank": 64}], 40),
    ("IVF{lists},PQ96x4fs,Refine(Flat)", True, True, EXACT_REFINE, 40),
    ("IVF{lists},PQ64x4fs,Refine(Flat)", True, True, SMALL_REFINE, 40),
    ("HNSW32", False, False, [{"ef_search": 128}], 40),
    ("HNSW32", True, False, EF, 40),
    ("HNSW32", True, False, EF[2:5], 80),
    ("HNSW32,SQ8", True, False, [{"ef_search": 128}, {"ef_search": 512}], 40),
]  # fmt: skip


def rss_anon() -> int:
    """Bytes of this process's anonymous resident memory (heap: what must stay in RAM; memory-mapped file
    pages are RssFile, which the OS can drop and read again), after handing freed heap back to the OS
    (buffers freed while reading the file would otherwise count)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def searched(path: str, mmap: bool, params: dict[str, int], queries: np.ndarray, single: int) -> dict:
    """In a fresh process: load the index file (memory-mapped if `mmap`): the RAM loading took, the ids of
    every query, single-query latencies with one thread and, for a memory-mapped index, the same latencies
    first with the file out of the OS page cache (cold: read from disk as searches touch it)."""
    faiss.omp_set_num_threads(1)
    with open(path, "rb") as f:  # out of the page cache (it was written and fsynced by the parent)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    before = rss_anon()
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    out: dict[str, Any] = {"ram_bytes": rss_anon() - before}
    PassageIndex.set_search_params(SimpleNamespace(faiss=index), **params)  # type: ignore[arg-type]
    if mmap:
        cold = []
        for i in range(single):  # no warm-up: every query may touch rows no query touched before
            start = time.perf_counter()
            index.search(queries[i : i + 1], K)
            cold.append(time.perf_counter() - start)
        out["cold_p50_ms"] = float(np.median(cold)) * 1e3
        out["cold_p99_ms"] = float(np.percentile(cold, 99)) * 1e3
    ids = index.search(queries, K)[1]  # every query once: the touched part of the file is now cached
    lat = latencies(index, queries, single)
    out.update(
        ids=ids,
        p50_ms=float(np.median(lat)) * 1e3,
        p99_ms=float(np.percentile(lat, 99)) * 1e3,
    )
    return out


def run(name: str, x: np.ndarray, queries: np.ndarray, single: int, only: str | None) -> dict[str, Any]:
    """Every config over `x` (n, d) with `queries`: recall against exact, latency, RAM and file bytes per
    passage, build time. Each search runs in a process of its own that loads the index from its file, as
    a server would, so its RAM is measured alone."""
    x, queries = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)
    lists = 256 if len(x) <= 20_000 else 4096
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    truth = exact.search(queries, K)[1]
    flat_p50 = float(np.median(latencies(exact, queries, single))) * 1e3
    del exact
    rows = []
    mean = x.mean(0)
    fresh = ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp, fresh:
        path = os.path.join(tmp, "vectors.faiss")
        for template, centred, mmap, settings, ef_construction in CONFIGS:
            factory = template.format(lists=lists)
            if only is not None and factory != only:
                continue
            index, seconds = build(factory, x - mean if centred else x, ef_construction)
            faiss.write_index(index, path)
            del index
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            for params in settings:
                got = fresh.submit(searched, path, mmap, params, queries, single).result()
                row = {
                    "space": name,
                    "vectors": len(x),
                    "dim": x.shape[1],
                    "factory": factory,
                    "centred": centred,
                    "mmap": mmap,
                    **({"ef_construction": ef_construction} if "HNSW" in factory else {}),
                    **params,
                    "recall_at_10": round(recall(got.pop("ids"), truth), 4),
                    **{k: round(v, 3) for k, v in got.items() if k.endswith("_ms")},
                    "p50_over_exact": round(got["p50_ms"] / flat_p50, 3),
                    "file_bytes_per_passage": round(os.path.getsize(path) / len(x), 1),
                    "ram_bytes_per_passage": round(got["ram_bytes"] / len(x), 1),
                    "build_s": round(seconds, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"space": name, "exact_p50_ms": round(flat_p50, 3), "rows": rows}


def main() -> None:
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True, help="the base model's index with --retrieval-key trained")
    parser.add_argument("--model", default="models/smollm2-135m-imprag", help="an adapter with W_ret")
    parser.add_argument("--data", default="data/benchmark", help="benchmark directory (its prompts)")
    parser.add_argument("--million", type=int, default=1_000_000, help="size of the fitted set")
    parser.add_argument("--single", type=int, default=200, help="one-query calls timed per index")
    parser.add_argument("--quick", action="store_true", help="10k only (no fitted million)")
    parser.add_argument("--only", metavar="FACTORY", help="only the rows of this factory (e.g. HNSW32)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # a server answering one query at a time; also keeps the run comparable
    real = real_vectors(args.index, args.model, args.data)
    f_p, q576 = real["f_p"]
    e_p, q192 = real["E_p"]
    same = recall(
        faiss.knn(q576, f_p, K, metric=faiss.METRIC_INNER_PRODUCT)[1],
        faiss.knn(q192, e_p, K, metric=faiss.METRIC_INNER_PRODUCT)[1],
    )
    print(f"{real['prompts']} prompts; the two spaces' exact top-10s agree on {same:.4f}", flush=True)
    mixture = Mixture(e_p)
    result: dict[str, Any] = {
        "machine": describe_machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "queries": real["prompts"],
        "spaces_agree_top10": same,
        "mixture": mixture.stats,
        "runs": [],
    }
    plans = [
        ("E_p 192-d, real 10k", e_p, q192),
        ("f_p 576-d (the adapter-independent index), real 10k", f_p, q576),
        ("E_p 192-d, mixture 10k", mixture.sample(len(e_p)), q192),
    ]
    if not args.quick:
        plans.append((f"E_p 192-d, mixture {args.million:,}", mixture.sample(args.million), q192))
    for name, x, queries in plans:
        result["runs"].append(run(name, x, queries, args.single, args.only))
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(
        "\n| vectors | index | centred | mmap | params | recall@10 | p50/p99 ms | p50/exact "
        "| cold p50/p99 ms | RAM B/passage | file B/passage | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run_ in result["runs"]:
        for r in run_["rows"]:
            params = ", ".join(
                f"{k} {r[k]}" for k in ("nprobe", "rerank", "ef_construction", "ef_search") if k in r
            )
            cold = f"{r['cold_p50_ms']:.2f} / {r['cold_p99_ms']:.2f}" if r["mmap"] else "-"
            print(
                f"| {r['space']} | {r['factory']} | {'yes' if r['centred'] else 'no'} | "
                f"{'yes' if r['mmap'] else 'no'} | {params or '-'} | {r['recall_at_10']:.3f} | "
                f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['p50_over_exact']:.3f} | {cold} | "
                f"{r['ram_bytes_per_passage']:,.0f} | {r['file_bytes_per_passage']:,.0f} | {r['build_s']} |"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
