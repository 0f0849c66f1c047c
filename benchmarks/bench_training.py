"""Gradient checkpointing on the embedded default (SmolLM2-135M): what one training step costs in memory and
time with `engine.gradient_checkpointing` on, relative to the plain step measured in the same run.

The step is the CPU recipe's retrieval step, built from the training loop's own pieces: LoRA r=8 on every
layer group (peft), bf16 weights with bf16 autocast, a batch of prompts each reading its top 3 real
Wikipedia passages in layers b..t (`build_sequences` + `answer_logprobs`, J_gen on the answer tokens), plus
the implicit-query NCE over E_q . E_p of the batch's passages; then backward.

Each setting runs in fresh processes (`--processes`, alternating), so a peak resident memory (VmHWM) is
one run's own. Reported, as medians over the processes (each process's value is kept too):
  - peak RSS growth during the steps (VmHWM after the steps minus RSS before the first one), MiB; it varies
    by ~1.5x between identical processes (the allocator), hence several;
  - step time (forward + backward), each process's median over its repeats.
Checkpointing should cut the memory and cost about one extra forward (a step is ~1/3 forward, ~2/3
backward, so roughly 1.3x the time).

Run:  .venv/bin/python benchmarks/bench_training.py [--batch 8] [--repeats 5] [--threads 1] [--processes 3]
      (writes benchmarks/results/bench_training.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "bench_training.json"
READ_K = 3


def rss_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS now, VmHWM peak), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def worker(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_model import wiki_passages

    from imprag import ImpRAG
    from imprag.model.reader import batch_tokens
    from imprag.training.checkpoint import prepare_model
    from imprag.training.config import EngineConfig
    from imprag.training.loop import answer_logprobs, build_sequences

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ImpRAG.from_pretrained("smollm2-135m", dtype="bfloat16")
    prepare_model(model, EngineConfig(lora_r=8))
    model.model.train()
    model.backbone.gradient_checkpointing = args.worker == "checkpointing"
    texts = wiki_passages(args.batch * (READ_K + 1))
    reads = [texts[i * READ_K : (i + 1) * READ_K] for i in range(args.batch)]
    subjects = [t.split(".")[0][:80] for t in texts[-args.batch :]]
    prompts = [f"Q: What do you know about {s}?\nA:" for s in subjects]
    answers = [" " + t[:200] for t in texts[-args.batch :]]
    offset = READ_K * model.config.reader.l_max

    def step() -> None:
        model.model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seqs = build_sequences(model, prompts, answers, [READ_K] * args.batch)
            passages = model.passage_batch(reads, [offset] * args.batch, warn=False)
            _, j_gen = answer_logprobs(model, seqs, passages)
            flat = [p for row in reads for p in row]
            ids = model.passage_tokens(flat)
            e_p = model.encode_passages(batch_tokens(ids, [0] * len(ids), model.pad_id)).float()
            e_q = model.encode_queries(model.prompt_batch(prompts, offset)).float()
        scores = (e_q @ e_p.T) / 0.25
        positives = torch.zeros_like(scores, dtype=torch.bool)
        for i in range(args.batch):
            positives[i, i * READ_K : (i + 1) * READ_K] = True
        j_ret = (torch.logsumexp(scores, 1) - torch.logsumexp(scores.masked_fill(~positives, -1e9), 1)).mean()
        (j_gen + j_ret).backward()

    before = rss_mib("VmRSS")
    times = []
    for _ in range(args.repeats + 1):  # the first is a warmup
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    grad_norms = {  # every adapter's gradient, by name (the runs are separate processes)
        name: float(p.grad.float().norm()) for name, p in model.model.named_parameters() if p.grad is not None
    }
    return {
        "step_s": statistics.median(times[1:]),
        "peak_growth_mib": rss_mib("VmHWM") - before,
        "grad_norms": grad_norms,
        "prompt_tokens": max(len(t) for t in model.tokenizer(prompts)["input_ids"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per setting (medians)")
    parser.add_argument("--worker", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict]] = {"plain": [], "checkpointing": []}
    for i in range(args.processes):  # alternating, so both settings see the same machine load
        for setting, done in runs.items():
            print(f"{setting}: process {i + 1} of {args.processes} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", setting, *sys.argv[1:]],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            done.append(json.loads(out.strip().splitlines()[-1]))
    rows = {
        setting: {
            "step_s": statistics.median(r["step_s"] for r in done),
            "peak_growth_mib": statistics.median(r["peak_growth_mib"] for r in done),
            "peak_growth_mib_each": [round(r["peak_growth_mib"]) for r in done],
            "step_s_each": [round(r["step_s"], 2) for r in done],
            "grad_norms": done[0]["grad_norms"],
        }
        for setting, done in runs.items()
    }
    plain, ckpt = rows["plain"], rows["checkpointing"]
    result = {
        "machine": platform.processor() or platform.machine(),
        "settings": vars(args)
        | {"read_k": READ_K, "model": "smollm2-135m", "lora_r": 8, "dtype": "bfloat16"},
        "rows": rows,
        "memory_ratio": ckpt["peak_growth_mib"] / plain["peak_growth_mib"],
        "time_ratio": ckpt["step_s"] / plain["step_s"],
        "gradients": len(plain["grad_norms"]),
        "max_gradient_norm_rel_diff": max(
            abs(ckpt["grad_norms"][n] - g) / max(g, 1e-12) for n, g in plain["grad_norms"].items()
        ),
    }
    for row in rows.values():
        del row["grad_norms"]  # ~400 numbers each; their comparison is kept
    print(f"\n{'setting':<15} {'step s (median)':>16} {'peak RSS growth MiB (median; each)':>36}")
    for name, row in rows.items():
        each = ", ".join(map(str, row["peak_growth_mib_each"]))
        print(f"{name:<15} {row['step_s']:>16.2f} {row['peak_growth_mib']:>8.0f} ({each})")
    print(
        f"\ncheckpointing / plain: memory {result['memory_ratio']:.2f}x, time {result['time_ratio']:.2f}x; "
        f"largest relative difference of {result['gradients']} gradient norms: "
        f"{result['max_gradient_norm_rel_diff']:.1e}"
    )
    from imprag.io import atomic_write_text

    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
