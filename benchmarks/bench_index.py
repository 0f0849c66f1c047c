"""Index benchmark: passage encoding throughput and memory, and FAISS search speed/recall/size, with every
speed number relative to a reference measured in the same run (this machine is shared and noisy; medians
throughout).

1. Encoding N real Wikipedia summaries (N=1024; 256 with --quick): ImpRAG `embed_passages` (layers 0..b,
   in the dtype `--dtype` names, default auto) vs all-MiniLM-L6-v2 (`MiniLMRetriever.encode`, batch 32)
   vs a stock full forward of SmolLM2 over the same token lists. The passages are sorted by length and
   cut into batches of 32; each batch is run by all three in turn (rotating order), so the three see the
   same machine load. Ratios are medians of per-batch ratios. ImpRAG's achieved FLOP/s is divided by a
   matmul peak in the model's dtype measured right before each batch (median of the per-batch fractions).
2. Peak memory (ru_maxrss) of `encode_shards` (shard_size=256) over a store of 512 vs 2048 real passages,
   each in a fresh subprocess: it should not grow with the corpus.
3. Search at 10k and 1M (100k with --quick) synthetic 192-d vectors (the default model's E_p dim), built
   with the recipe of `imprag.retrieval.index` (`new_faiss_index`; IDMap2 over every factory before stop
   32, when its committed results were measured; inner product, trained
   on <= IndexConfig.train_size vectors sampled per shard like `_assemble`, `add_with_ids`) and searched
   with `PassageIndex.set_search_params` semantics. Vectors come from a Gaussian mixture (1000 centers)
   whose overall mean and covariance are fitted to the real E_p vectors of part 1 (E_p is far from
   isotropic: a dominant mean direction and a low effective rank). 1000 queries from the same mixture:
   passage-like queries, not the E_q of real prompts (centred in the recipe), whose recall may differ.
   Per config: single-query latency p50/p99 (200 one-query calls, 1 faiss thread as a server answering
   one query at a time would; p50 with faiss's default threads too) and batch-of-1000 throughput (default
   threads), both as ratios against exact Flat search in the same run; recall@10 against Flat; serialized
   index bytes per passage; build time (also as a fraction of the time ImpRAG needs to encode that many
   passages, at the rate measured in part 1). HNSW32 is measured on 1/4 of the vectors if building it on
   all of them is projected to exceed --hnsw-budget seconds (the output says so). Diagnostics: the IVF
   without PQ (where recall is lost), the PQ training time without polysemous training, and a realism
   check running the same small search problems on the real E_p of part 1 and on as many mixture vectors.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_index.py [--quick]
      (writes benchmarks/results/bench_index.json)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

import faiss
import numpy as np
import torch
from bench_model import layer_flops_per_token, matmul_peak, median_time

from imprag import ImpRAG
from imprag.config import IndexConfig
from imprag.hardware import describe_machine, summary_line
from imprag.io import atomic_write_text
from imprag.retrieval.baselines import MiniLMRetriever, load_minilm
from imprag.retrieval.corpus import read_corpus
from imprag.retrieval.index import PassageIndex, new_faiss_index
from imprag.retrieval.store import PassageStore

RESULTS = Path(__file__).parent / "results" / "bench_index.json"
MODEL = "smollm2-135m"
BATCH = 32
K = 10
CENTERS = 1000
BETWEEN_CLUSTER_VARIANCE = 0.5
"""Share of the fitted covariance that lies between mixture centers (the rest is within-cluster noise)."""


def summaries(count: int) -> list[str]:
    """`passage.content` of the first `count` real Wikipedia summaries of the embedded corpus."""
    texts = [p.content for p in islice(read_corpus("wiki-summaries"), count)]
    if len(texts) < count:
        raise SystemExit(f"the embedded corpus holds only {len(texts)} passages, {count} requested")
    return texts


# -- 1. encoding throughput ---------------------------------------------------------------------------


def full_forward(model: ImpRAG, rows: list[list[int]]) -> None:
    """Stock HF forward (all layers + LM head) of one padded batch, as bench_model.encoding does."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [model.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    model.model(input_ids=ids, attention_mask=mask)


def encoding(model: ImpRAG, minilm: MiniLMRetriever, texts: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Per-batch interleaved timing of embed_passages, MiniLM and the full forward; also returns E_p."""
    tokens = model.passage_tokens(texts)
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    batches = [order[s : s + BATCH] for s in range(0, len(order), BATCH)]
    b, n_layers = model.split.b, model.backbone.num_layers
    vectors = np.zeros((len(texts), model.dim), dtype=np.float32)

    def embed(rows: list[int]) -> None:
        vectors[rows] = model.embed_passages([texts[i] for i in rows], batch_size=BATCH).numpy()

    runs = {
        "imprag": embed,
        "minilm": lambda rows: minilm.encode([texts[i] for i in rows]),
        "full": lambda rows: full_forward(model, [tokens[i] for i in rows]),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    fractions, flops_total = [], 0.0
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run(batches[0])
        for j, rows in enumerate(batches):
            peak = matmul_peak(model.backbone.dtype, repeats=3)
            names = list(runs)
            names = names[j % 3 :] + names[: j % 3]  # rotate who goes first
            for name in names:
                start = time.perf_counter()
                runs[name](rows)
                times[name].append(time.perf_counter() - start)
            n_tok = sum(len(tokens[i]) for i in rows)
            ctx = n_tok / len(rows)
            flops = sum(layer_flops_per_token(model, i, False, ctx) for i in range(b))
            flops = (flops + layer_flops_per_token(model, b, True, ctx)) * n_tok
            flops_total += flops
            fractions.append(flops / times["imprag"][-1] / peak)
    total = {name: sum(t) for name, t in times.items()}
    n_tokens = sum(len(t) for t in tokens)

    def ratio(a: str, c: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[c], strict=True))

    result = {
        "passages": len(texts),
        "batches": len(batches),
        "batch_size": BATCH,
        "mean_tokens_smollm2": n_tokens / len(texts),
        "imprag_passages_per_s": len(texts) / total["imprag"],
        "minilm_passages_per_s": len(texts) / total["minilm"],
        "full_forward_passages_per_s": len(texts) / total["full"],
        "speed_imprag_over_minilm": ratio("minilm", "imprag"),
        "speed_imprag_over_full": ratio("full", "imprag"),
        "speed_minilm_over_full": ratio("full", "minilm"),
        "expected_imprag_over_full_layers": n_layers / (b + 1),
        "imprag_fraction_of_matmul_peak": statistics.median(fractions),
        "imprag_gflop_per_s": flops_total / total["imprag"] / 1e9,
        "ratio_note": "median over batches of per-batch time ratios (same batch, same moment)",
    }
    return result, vectors


# -- 2. memory of encode_shards -----------------------------------------------------------------------

CHILD = """
import gc, json, re, resource, sys
from pathlib import Path
from imprag import ImpRAG
from imprag.retrieval.encode import encode_shards
from imprag.retrieval.store import PassageStore

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

store_path, shards, shard_size, dtype = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = ImpRAG.from_pretrained("smollm2-135m", dtype=dtype)
gc.collect()
loaded, base = maxrss(), status("VmRSS")
try:  # reset VmHWM (the mm's peak RSS) so that it covers the encoding only
    Path("/proc/self/clear_refs").write_text("5")
    reset = status("VmHWM") <= status("VmRSS") + 1024
except OSError:
    reset = False
store = PassageStore(store_path)
encoded = encode_shards(model, store, shards, shard_size, 32, progress=False)
out = {"encoded": encoded, "maxrss_loaded_kb": loaded, "rss_before_encode_kb": base, "maxrss_kb": maxrss()}
out["encode_hwm_kb"] = status("VmHWM") if reset else None
# the distinct (rows, width) batch shapes embed_passages ran: each new one leaves cached kernels behind
shapes = set()
for start in range(0, store.max_row + 1, shard_size):
    rows = [r for chunk in store.iter_rows(start, start + shard_size) for r in chunk]
    lengths = sorted(len(t) for t in model.passage_tokens([p.content for p in store.get(rows)]))
    shapes |= {(len(lengths[i : i + 32]), lengths[i : i + 32][-1]) for i in range(0, len(lengths), 32)}
print(json.dumps({**out, "batch_shapes": len(shapes)}))
"""


def memory(sizes: list[int], shard_size: int, dtype: str) -> dict[str, Any]:
    """ru_maxrss of `encode_shards` over stores of `sizes` real passages, each in a fresh process.

    ru_maxrss covers the whole process, model load included, and cannot be reset (the kernel folds each
    exited thread's peak into it), so the encoding phase's own peak is read from VmHWM, reset through
    /proc/self/clear_refs once the model is loaded. That peak grows with the number of distinct (rows,
    width) batch shapes run (torch/oneDNN keep kernels and packed weights per shape; measured at ~2.5 MB a
    shape, flat while no new shape appears); full batches have at most l_max widths, so it is bounded.
    """
    texts = summaries(max(sizes))
    out: dict[str, Any] = {"shard_size": shard_size}
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        for n in sizes:
            store = Path(tmp) / f"store-{n}.sqlite"
            PassageStore.build(store, islice(read_corpus("wiki-summaries"), n)).close()
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(store),
                    str(Path(tmp) / f"shards-{n}"),
                    str(shard_size),
                    dtype,
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if proc.returncode != 0:
                raise SystemExit(f"memory subprocess failed:\n{proc.stderr[-3000:]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            if child["encoded"] != n:
                raise SystemExit(f"encode_shards encoded {child['encoded']} passages, expected {n}")
            hwm = child["encode_hwm_kb"]
            out[str(n)] = {
                "passages": n,
                "mean_chars": sum(len(t) for t in texts[:n]) / n,
                "maxrss_mb": child["maxrss_kb"] / 1024,
                "maxrss_after_load_mb": child["maxrss_loaded_kb"] / 1024,
                "rss_before_encode_mb": child["rss_before_encode_kb"] / 1024,
                "encode_peak_mb": None if hwm is None else hwm / 1024,
                "encode_growth_mb": None if hwm is None else (hwm - child["rss_before_encode_kb"]) / 1024,
                "distinct_batch_shapes": child["batch_shapes"],
                "wall_s": time.perf_counter() - start,
            }
    small, large = out[str(sizes[0])], out[str(sizes[-1])]
    out["corpus_ratio"] = sizes[-1] / sizes[0]
    out["maxrss_ratio_large_over_small"] = large["maxrss_mb"] / small["maxrss_mb"]
    if small["encode_peak_mb"] is not None and large["encode_peak_mb"] is not None:
        out["encode_peak_ratio_large_over_small"] = large["encode_peak_mb"] / small["encode_peak_mb"]
    return out


# -- 3. search ------------------------------------------------------------------------------------------


class Mixture:
    """A Gaussian mixture whose overall mean and covariance match the real E_p vectors it is fitted to."""

    def __init__(self, real: np.ndarray, seed: int = 0) -> None:
        real = real.astype(np.float64)
        self.mean = real.mean(0)
        cov = np.cov(real.T) + 1e-6 * np.eye(real.shape[1])
        lam, basis = np.linalg.eigh(cov)
        lam = np.clip(lam, 0.0, None)
        self.between = basis * np.sqrt(BETWEEN_CLUSTER_VARIANCE * lam)  # (D, D): z @ between.T
        self.within = (basis * np.sqrt((1 - BETWEEN_CLUSTER_VARIANCE) * lam)).astype(np.float32)
        self.rng = np.random.default_rng(seed)
        z = self.rng.standard_normal((CENTERS, real.shape[1]))
        self.centers = (self.mean + z @ self.between.T).astype(np.float32)
        self.stats = {
            "fitted_on_real_vectors": len(real),
            "mean_norm": float(np.linalg.norm(self.mean)),
            "rms_deviation_norm": float(math.sqrt(lam.sum())),
            "effective_rank": float(lam.sum() ** 2 / (lam**2).sum()),
            "centers": CENTERS,
            "between_cluster_variance_share": BETWEEN_CLUSTER_VARIANCE,
        }

    def sample(self, n: int, chunk: int = 100_000) -> np.ndarray:
        out = np.empty((n, self.centers.shape[1]), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            which = self.rng.integers(0, CENTERS, m)
            z = self.rng.standard_normal((m, self.centers.shape[1]), dtype=np.float32)
            out[s : s + m] = self.centers[which] + z @ self.within.T
        return out


def realism(real: np.ndarray, mixture: Mixture) -> dict[str, dict[str, float]]:
    """The same small search problems on real E_p and on as many mixture vectors (1/8 of them are the
    queries): how many distinct passages fill the exact top-10s (hubness), and the recall@10 of PQ32, a
    small IVF and HNSW32. Shows how far the synthetic vectors are from real ones for each index type."""
    out = {}
    for name, data in (("real", real), ("synthetic", mixture.sample(len(real)))):
        queries = len(data) // 8
        base, q = np.ascontiguousarray(data[:-queries]), np.ascontiguousarray(data[-queries:])
        exact = faiss.IndexFlatIP(base.shape[1])
        exact.add(base)
        truth = exact.search(q, K)[1]
        row = {
            "vectors": len(base),
            "queries": queries,
            "distinct_share_of_top10": len(np.unique(truth)) / truth.size,
        }
        checks = [("HNSW32", None), ("IVF16,Flat", 2), ("IVF16,Flat", 4)]
        if len(base) >= 2 * 256:  # PQ's 256 centroids per subspace need enough points
            checks.insert(0, ("PQ32np", None))
        for factory, nprobe in checks:
            index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            if factory.startswith("PQ"):  # few points per centroid is known here; silence faiss' warning
                faiss.downcast_index(index).pq.cp.min_points_per_centroid = 1
            index.train(base)
            index.add(base)
            label = factory if nprobe is None else f"{factory} nprobe={nprobe}"
            if nprobe is not None:
                faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
            row[f"recall_at_10 {label}"] = recall(index.search(q, K)[1], truth)
        out[name] = row
    return out


def train_sample(x: np.ndarray, cfg: IndexConfig) -> np.ndarray:
    """The training sample `_assemble` would draw: the first train_size // shards vectors of each shard."""
    shards = math.ceil(len(x) / cfg.shard_size)
    per_shard = max(1, cfg.train_size // shards)
    parts = [x[i * cfg.shard_size : i * cfg.shard_size + per_shard] for i in range(shards)]
    return np.ascontiguousarray(np.concatenate(parts))


def build(factory: str, x: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, float]]:
    start = time.perf_counter()
    index = new_faiss_index(x.shape[1], factory)
    trained = 0
    if not index.is_trained:
        sample = train_sample(x, cfg)
        trained = len(sample)
        index.train(sample)
    train_s = time.perf_counter() - start
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index, {"build_s": time.perf_counter() - start, "train_s": train_s, "train_vectors": trained}


def train_seconds(factory: str, sample: np.ndarray) -> float:
    index = new_faiss_index(sample.shape[1], factory)
    start = time.perf_counter()
    index.train(sample)
    return time.perf_counter() - start


def build_hnsw(factory: str, x: np.ndarray, budget_s: float) -> tuple[faiss.Index, dict[str, Any], int]:
    """HNSW built by adding the first quarter, then the rest only if the projected total fits the budget."""
    start = time.perf_counter()
    index = new_faiss_index(x.shape[1], factory)
    first = len(x) // 4
    index.add_with_ids(x[:first], np.arange(first, dtype=np.int64))
    t_first = time.perf_counter() - start
    # insertion cost grows ~ log(size): project the full build from the first quarter
    projected = t_first * 4 * math.log(len(x)) / math.log(first)
    info: dict[str, Any] = {"projected_full_build_s": projected, "budget_s": budget_s}
    if projected > budget_s:
        info["note"] = (
            f"measured on {first} of {len(x)} vectors: building on all was projected at {projected:.0f}s "
            f"> budget {budget_s:.0f}s"
        )
        info.update(build_s=t_first, train_s=0.0, train_vectors=0)
        return index, info, first
    index.add_with_ids(x[first:], np.arange(first, len(x), dtype=np.int64))
    info.update(build_s=time.perf_counter() - start, train_s=0.0, train_vectors=0)
    return index, info, len(x)


def set_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> None:
    """`PassageIndex.set_search_params` itself (it only touches `self.faiss`), then check it took effect."""
    PassageIndex.set_search_params(SimpleNamespace(faiss=index), nprobe=nprobe, ef_search=ef_search)  # type: ignore[arg-type]
    if nprobe is not None:
        assert faiss.extract_index_ivf(index).nprobe == nprobe
    if ef_search is not None:
        assert faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efSearch == ef_search


def latencies(index: faiss.Index, queries: np.ndarray, count: int, threads: int) -> list[float]:
    """Seconds per one-query call over the first `count` queries, with `threads` faiss threads."""
    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for i in range(10):  # warm-up
            index.search(queries[i : i + 1], K)
        lat = []
        for i in range(count):
            start = time.perf_counter()
            index.search(queries[i : i + 1], K)
            lat.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(default)
    return lat


def measure(index: faiss.Index, queries: np.ndarray, single: int, repeats: int) -> dict[str, Any]:
    """Single-query latencies (1 faiss thread, and the default threads), batch throughput (default
    threads) and the batch results (for recall)."""
    one = latencies(index, queries, single, threads=1)
    many = latencies(index, queries, single // 2, threads=faiss.omp_get_max_threads())
    _, ids = index.search(queries, K)
    t_batch = median_time(lambda: index.search(queries, K), repeats, warmup=0)
    return {
        "p50_ms": float(np.percentile(one, 50)) * 1e3,
        "p99_ms": float(np.percentile(one, 99)) * 1e3,
        "p50_ms_default_threads": float(np.percentile(many, 50)) * 1e3,
        "p99_ms_default_threads": float(np.percentile(many, 99)) * 1e3,
        "batch_queries_per_s": len(queries) / t_batch,
        "ids": ids,
    }


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth, strict=True)]))


def bytes_per_passage(index: faiss.Index) -> float:
    return faiss.serialize_index(index).nbytes / index.ntotal


def search(
    mixture: Mixture, n: int, ivf: str, encode_rate: float, hnsw_budget_s: float, single: int, repeats: int
) -> dict[str, Any]:
    cfg = IndexConfig()
    start = time.perf_counter()
    x = mixture.sample(n)
    queries = mixture.sample(1000)
    out: dict[str, Any] = {"vectors": n, "dim": x.shape[1], "queries": len(queries), "k": K}
    out["generate_s"] = time.perf_counter() - start
    references: dict[int, dict[str, Any]] = {}

    def flat_reference(size: int) -> dict[str, Any]:
        """Exact search over the first `size` vectors: recall ground truth and the speed reference."""
        if size not in references:
            index, _ = build("Flat", x[:size], cfg)
            references[size] = measure(index, queries, single, repeats)
            del index
        return references[size]

    rows: list[dict[str, Any]] = []

    def record(name: str, index: faiss.Index, info: dict[str, Any], size: int, **params: int) -> None:
        ref = flat_reference(size)
        set_params(index, params.get("nprobe"), params.get("ef_search"))
        m = measure(index, queries, single, repeats) if name != "Flat" else ref
        rows.append(
            {
                "config": name,
                "params": params,
                "indexed": size,
                **info,
                "build_over_imprag_encode": info["build_s"] / (size / encode_rate),
                "bytes_per_passage": bytes_per_passage(index),
                **{k: v for k, v in m.items() if k.startswith(("p50", "p99", "batch"))},
                "recall_at_10": recall(m["ids"], ref["ids"]),
                "p50_speedup_vs_flat": ref["p50_ms"] / m["p50_ms"],
                "batch_speedup_vs_flat": m["batch_queries_per_s"] / ref["batch_queries_per_s"],
            }
        )

    index, info = build("Flat", x, cfg)
    record("Flat", index, info, n)
    del index
    index, info = build(ivf, x, cfg)
    # our factory string trains PQ codebooks with polysemous training (unused at search time unless
    # polysemous_ht is set); the same factory with "np" skips it
    info["train_s_without_polysemous"] = train_seconds(ivf + "np", train_sample(x, cfg))
    for nprobe in (16, 64):
        record(ivf, index, info, n, nprobe=nprobe)
    del index
    # diagnostic: the same IVF without PQ, to split the recall loss into coarse quantizer vs PQ codes
    coarse = ivf.split(",")[0] + ",Flat"
    index, _ = build(coarse, x, cfg)
    out["diagnostic_ivf_flat_recall_at_10"] = {"config": coarse}
    for nprobe in (16, 64):
        set_params(index, nprobe, None)
        out["diagnostic_ivf_flat_recall_at_10"][f"nprobe={nprobe}"] = recall(
            index.search(queries, K)[1], flat_reference(n)["ids"]
        )
    del index
    index, info, size = build_hnsw("HNSW32", x, hnsw_budget_s)
    for ef in (64, 128):
        record("HNSW32", index, info, size, ef_search=ef)
    del index
    if size != n:
        sub = references[size]
        out["flat_reference_at_hnsw_size"] = {
            "indexed": size,
            **{k: v for k, v in sub.items() if k in ("p50_ms", "p99_ms", "batch_queries_per_s")},
        }
    out["configs"] = rows
    out["total_s"] = time.perf_counter() - start
    return out


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="256 passages, 100k vectors (smoke run)")
    parser.add_argument("--hnsw-budget", type=float, default=360.0, help="seconds allowed for an HNSW build")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--dtype", default="auto", help="model dtype (default: auto, this machine's fast one)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    n_passages = 256 if args.quick else 1024
    large = 100_000 if args.quick else 1_000_000
    single, repeats = (100, 3) if args.quick else (200, 3)

    model = ImpRAG.from_pretrained(MODEL, dtype=args.dtype)
    dtype = model.backbone.dtype
    peak_start = matmul_peak(dtype)
    minilm_model = load_minilm()
    dim = minilm_model.get_embedding_dimension()
    # The retriever's encode() is what a MiniLM index build runs; it needs no store for encoding.
    minilm = MiniLMRetriever(None, faiss.IndexFlatIP(dim), "", minilm_model, batch_size=BATCH)  # type: ignore[arg-type]
    print(f"encoding {n_passages} passages (ImpRAG / MiniLM / full forward, interleaved per batch)...")
    enc, real = encoding(model, minilm, summaries(n_passages))
    described = (
        f"{MODEL} (b={model.split.b}, t={model.split.t}), {str(model.backbone.dtype).removeprefix('torch.')}"
    )
    del model, minilm, minilm_model

    print("peak memory of encode_shards in fresh processes...")
    mem = memory([256, 1024] if args.quick else [512, 2048], 256, str(dtype).removeprefix("torch."))

    mixture = Mixture(real)
    check = realism(real, mixture)
    searches = {}
    for n, ivf in ((10_000, "IVF256,PQ32"), (large, "IVF1024,PQ32")):
        print(f"search over {n} synthetic vectors...")
        searches[str(n)] = search(
            mixture, n, ivf, enc["imprag_passages_per_s"], args.hnsw_budget, single, repeats
        )
    peak_end = matmul_peak(dtype)

    result = {
        "machine": {
            **describe_machine(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "peak_dtype": str(dtype).removeprefix("torch."),
            "matmul_peak_gflop_s_start_end": [peak_start / 1e9, peak_end / 1e9],
        },
        "model": described,
        "hnsw_budget_s": args.hnsw_budget,
        "encoding": enc,
        "memory": mem,
        "synthetic_vectors": {**mixture.stats, "realism_check": check},
        "search": searches,
        "runtime_s": time.perf_counter() - started,
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_index.py" + (" --quick" if args.quick else ""),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\ntotal runtime {result['runtime_s']:.0f}s; wrote {args.out}")


def print_table(r: dict[str, Any]) -> None:
    e, m = r["encoding"], r["memory"]
    mach, peak = r["machine"], r["machine"]["matmul_peak_gflop_s_start_end"]
    print(f"machine: {summary_line(mach)}")
    print(
        f"\n{mach['peak_dtype']} matmul peak (2048^3, median): {peak[0]:.0f} GFLOP/s at start, "
        f"{peak[1]:.0f} at end"
    )
    print(f"\nENCODING {e['passages']} real summaries (mean {e['mean_tokens_smollm2']:.0f} tokens), batch 32")
    print(f"{'':44s}{'passages/s':>12s}")
    for key, label in (
        ("imprag_passages_per_s", "ImpRAG embed_passages (layers 0..b)"),
        ("minilm_passages_per_s", "all-MiniLM-L6-v2"),
        ("full_forward_passages_per_s", "SmolLM2 full forward"),
    ):
        print(f"{label:44s}{e[key]:>12.1f}")
    print(f"speed ImpRAG / MiniLM (median per batch)      {e['speed_imprag_over_minilm']:.2f}x")
    print(
        f"speed ImpRAG / full forward                   {e['speed_imprag_over_full']:.2f}x "
        f"(layers alone: {e['expected_imprag_over_full_layers']:.2f}x)"
    )
    print(f"speed MiniLM / full forward                   {e['speed_minilm_over_full']:.2f}x")
    print(f"ImpRAG FLOP/s / matmul peak (model dtype)     {e['imprag_fraction_of_matmul_peak']:.1%}")

    print(f"\nPEAK MEMORY of encode_shards (shard_size {m['shard_size']}, fresh process each)")
    print(
        f"{'passages':>10s}{'ru_maxrss MB':>14s}{'RSS before encoding MB':>24s}{'encoding peak MB':>18s}"
        f"{'growth MB':>11s}{'batch shapes':>14s}"
    )
    for v in m.values():
        if isinstance(v, dict):
            peak = "n/a" if v["encode_peak_mb"] is None else f"{v['encode_peak_mb']:.0f}"
            growth = "n/a" if v["encode_growth_mb"] is None else f"{v['encode_growth_mb']:.0f}"
            print(
                f"{v['passages']:>10d}{v['maxrss_mb']:>14.0f}{v['rss_before_encode_mb']:>24.0f}{peak:>18s}"
                f"{growth:>11s}{v['distinct_batch_shapes']:>14d}"
            )
    ratio = m.get("encode_peak_ratio_large_over_small")
    shown = "n/a" if ratio is None else f"{ratio:.3f}"
    print(
        f"for a {m['corpus_ratio']:.0f}x larger corpus: ru_maxrss ratio "
        f"{m['maxrss_ratio_large_over_small']:.3f}, encoding peak ratio {shown}"
    )
    print(
        "(ru_maxrss may include the model load's peak; the encoding peak is VmHWM, reset after loading.\n"
        "It can grow with the distinct batch shapes run, which torch/oneDNN cache kernels for; full batches "
        "have at most l_max\nwidths, so this is bounded, not proportional to the corpus)"
    )

    s = r["synthetic_vectors"]
    print(
        f"\nSEARCH (synthetic {CENTERS}-center Gaussian mixture fitted to {s['fitted_on_real_vectors']} real "
        f"E_p: |mean| {s['mean_norm']:.1f}, rms spread {s['rms_deviation_norm']:.1f}, effective rank "
        f"{s['effective_rank']:.1f}); 1000 queries, k={K}"
    )
    header = (
        f"{'vectors':>9s} {'config':24s}{'indexed':>9s}{'build s':>9s}{'bld/enc':>9s}{'B/pass':>8s}"
        f"{'p50 ms':>9s}{'p99 ms':>9s}{'p50 x':>8s}{'p50 2thr':>10s}{'batch q/s':>11s}{'batch x':>9s}"
        f"{'R@10':>7s}"
    )
    print(header)
    notes = []
    for n, block in r["search"].items():
        for row in block["configs"]:
            params = ",".join(f"{k}={v}" for k, v in row["params"].items())
            name = f"{row['config']} {params}".strip()
            print(
                f"{n:>9s} {name:24s}{row['indexed']:>9d}{row['build_s']:>9.1f}"
                f"{row['build_over_imprag_encode']:>9.1%}{row['bytes_per_passage']:>8.0f}"
                f"{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['p50_speedup_vs_flat']:>8.1f}"
                f"{row['p50_ms_default_threads']:>10.3f}{row['batch_queries_per_s']:>11.0f}"
                f"{row['batch_speedup_vs_flat']:>9.1f}{row['recall_at_10']:>7.3f}"
            )
            if "note" in row and f"{n}: {row['note']}" not in notes:
                notes.append(f"{n}: {row['note']}")
            if "train_s_without_polysemous" in row and row["params"].get("nprobe") == 16:
                notes.append(
                    f"{n}: {row['config']} trained in {row['train_s']:.1f}s; with 'np' appended (no "
                    f"polysemous PQ training, unused by search) in {row['train_s_without_polysemous']:.1f}s"
                )
    print(
        "p50/p99: one-query calls with 1 faiss thread (p50 x: speedup over exact Flat on the same vectors, "
        "same run);\np50 2thr: the same with faiss's default threads; batch: 1000 queries per call, default "
        "threads;\nbld/enc: build time / time ImpRAG takes to encode that many passages (rate above); "
        "B/pass: serialized index bytes per passage"
    )
    for note in notes:
        print(f"note {note}")
    for n, block in r["search"].items():
        diag = block["diagnostic_ivf_flat_recall_at_10"]
        recalls = ", ".join(f"{k} {v:.3f}" for k, v in diag.items() if k != "config")
        print(f"diagnostic {n}: {diag['config']} (no PQ) recall@10 {recalls}")
    print("\nrealism check (same small problem on real E_p and on mixture vectors):")
    check = s["realism_check"]
    keys = [k for k in check["real"] if k not in ("vectors", "queries")]
    print(f"{'':44s}{'real':>10s}{'synthetic':>11s}")
    for key in keys:
        print(
            f"{key.replace('recall_at_10 ', 'R@10 '):44s}{check['real'][key]:>10.3f}"
            f"{check['synthetic'][key]:>11.3f}"
        )


if __name__ == "__main__":
    main()
