"""Gradient checkpointing on the embedded default (SmolLM2-135M): what one training step of the CPU recipe
costs in memory and time with `engine.gradient_checkpointing` on, relative to the plain step measured in
the same run.

The step is the loop's own `Trainer.train_step` under `configs/cpu-smollm2.yaml` (LoRA r=8 on every layer
group, dtype and autocast "auto" (bf16 only with native bf16 kernels), batch 8, 5 positives + 4 hard
negatives per item and 16 random rows per warmup step, the generator reading the retriever's current top
3, centered mean-pooled scores), on real Wikipedia passages (the embedded corpus) with synthetic labels:
an item's own article plus random rows stand in for the teacher's positives, which changes no tensor
shape. Both stages are measured: a warmup step (J_gen + NCE over every candidate's E_p, with gradients)
and a self-distillation step (also the KL target: one answer likelihood per candidate under no_grad).

Each setting runs in fresh processes (`--processes`, alternating), so a peak resident memory (VmHWM) is
one run's own. Reported, as medians over the processes (each process's value is kept too):
  - peak RSS growth during the steps (VmHWM after the steps minus RSS before the first one), MiB; it varies
    by ~1.5x between identical processes (the allocator), hence several;
  - step time (forward + backward + update), each process's median over its repeats (a stage's first step
    is run untimed: it pays one-time allocation costs).
The gradients of each stage's first step (same weights, same batch) are saved by every process and compared
tensor by tensor between the settings.

Run:  .venv/bin/python benchmarks/bench_training.py [--repeats 2] [--threads 1] [--processes 3]
      (writes benchmarks/results/bench_training.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def synthetic_data(work: Path, corpus: int, items: int, teacher_top: int = 0):
    """Training data over real passages with synthetic labels, as (passages, TrainingData): a store of the
    first `corpus` embedded summaries, and `items` retrieval examples whose positives are the item's own
    article plus 4 random rows, 4 random hard negatives, and (teacher_top > 0) a teacher top-m of the own
    article plus random rows with descending scores. Labels change no tensor shape, only values."""
    import itertools
    import random

    from imprag.retrieval.corpus import read_corpus
    from imprag.retrieval.store import PassageStore
    from imprag.training.data import Example, TrainingData, answer_text

    passages = list(itertools.islice(read_corpus("wiki-summaries"), corpus))
    store = PassageStore.build(work / "passages.sqlite", passages)
    rng = random.Random(0)
    examples = []
    for row, p in enumerate(passages[:items]):
        population = [r for r in range(len(passages)) if r != row]
        others = rng.sample(population, 8)
        top = (row, *rng.sample(population, teacher_top - 1)) if teacher_top else ()
        sentence = p.text.split(". ")[0][:200]
        examples.append(
            Example(f"describe/{p.id}", "retrieval", f"Q: Which article is described by: {sentence}? A:",
                    answer_text(p.title), positives=(row, *others[:4]), negatives=tuple(others[4:]),
                    evidence=(row,), teacher_rows=top,
                    teacher_scores=tuple(0.9 - 0.01 * i for i in range(len(top))))
        )  # fmt: skip
    return passages, TrainingData({"retrieval": examples}, store, (1.0, 0.0, 0.0), seed=0)


def worker(args: argparse.Namespace) -> dict:
    import dataclasses
    import tempfile

    import torch

    from imprag import ImpRAG
    from imprag.training.config import load_train_config
    from imprag.training.loop import Trainer

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_training-"))
    _, data = synthetic_data(work, args.corpus, args.items)
    overrides = [
        f"engine.gradient_checkpointing={'true' if args.worker == 'checkpointing' else 'false'}",
        "model.center_prompts=16",  # mu_q's estimate: not part of a step
        "optim.steps_per_epoch=4", "optim.epochs=2", "objective.warmup_epochs=1",
    ]  # fmt: skip
    config = load_train_config(Path(__file__).parent.parent / "configs" / "cpu-smollm2.yaml", overrides)
    m = config.model
    model = ImpRAG.from_pretrained(m.name, b=m.b, t=m.t, dtype=config.weights_dtype())
    embedding = dataclasses.replace(model.config.embedding, pooling=m.pooling)  # as `train` does
    model.config = dataclasses.replace(model.config, embedding=embedding)
    torch.manual_seed(0)
    trainer = Trainer(model, data, config, work / "run")
    grads: dict[str, dict[str, torch.Tensor]] = {}
    step_of = {"warmup": 0, "distill": config.optim.steps_per_epoch}

    def capture(stage: str) -> None:
        real = trainer.optimizer.step

        def step(*a, **kw):  # the averaged, clipped gradients the update uses
            grads[stage] = {
                n: p.grad.detach().clone() for n, p in model.model.named_parameters() if p.grad is not None
            }
            trainer.optimizer.step = real
            return real(*a, **kw)

        trainer.optimizer.step = step

    before = rss_mib("VmRSS")
    times: dict[str, list[float]] = {"warmup": [], "distill": []}
    for stage, first in step_of.items():
        # A stage's first step is not timed: it pays one-time costs (first-touch page faults of gigabytes
        # of activations, allocator growth) that favour whichever setting allocates less. Its gradients are
        # the ones compared (the same weights and batch in every process).
        capture(stage)
        for r in range(args.repeats + 1):
            start = time.perf_counter()
            metrics = trainer.train_step(first + r)
            if r:
                times[stage].append(time.perf_counter() - start)
            assert metrics["stage"] == stage and metrics["kind"] == "retrieval", metrics
    saved = work / "grads.pt"
    torch.save(grads, saved)
    return {
        "step_s": {stage: statistics.median(t) for stage, t in times.items()},
        "peak_growth_mib": rss_mib("VmHWM") - before,
        "candidates": {  # distinct passages each stage's first step encodes, counted as the loop does
            stage: len(
                {r for e in data.batch(first, config.optim.batch_size)[1] for r in e.candidates}
                | set(data.random_rows(first, 0, config.data.random_negatives if stage == "warmup" else 0))
            )
            for stage, first in step_of.items()
        },
        "grads": str(saved),
    }


def main() -> None:
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per stage and process (1-3)")
    parser.add_argument("--corpus", type=int, default=2000, help="real passages in the store")
    parser.add_argument("--items", type=int, default=64, help="training items")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per setting (medians)")
    parser.add_argument("--worker", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.repeats <= 3:  # a stage is 4 steps: one untimed, up to 3 timed
        parser.error("--repeats must be 1, 2 or 3")
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
    import torch

    stages = ("warmup", "distill")
    rows = {
        setting: {
            **{f"{st}_step_s": statistics.median(r["step_s"][st] for r in done) for st in stages},
            "peak_growth_mib": statistics.median(r["peak_growth_mib"] for r in done),
            "peak_growth_mib_each": [round(r["peak_growth_mib"]) for r in done],
            **{f"{st}_step_s_each": [round(r["step_s"][st], 2) for r in done] for st in stages},
        }
        for setting, done in runs.items()
    }
    # every process's gradients against the first plain process's, tensor by tensor
    reference = torch.load(runs["plain"][0]["grads"])
    compared, differing = 0, []
    for setting, done in runs.items():
        for r in done:
            got = torch.load(r["grads"])
            for st in stages:
                assert got[st].keys() == reference[st].keys(), (setting, st)
                for name, g in reference[st].items():
                    compared += 1
                    if not torch.equal(got[st][name], g):
                        differing.append(f"{setting}/{st}/{name}")
    for done in runs.values():
        for r in done:
            shutil.rmtree(Path(r["grads"]).parent, ignore_errors=True)  # the worker's store, run dir, grads
    plain, ckpt = rows["plain"], rows["checkpointing"]
    result = {
        "machine": describe_machine(),
        "settings": vars(args) | {"recipe": "configs/cpu-smollm2.yaml", "model": "smollm2-135m"},
        "candidates_per_step": runs["plain"][0]["candidates"],  # by stage
        "rows": rows,
        "memory_ratio": ckpt["peak_growth_mib"] / plain["peak_growth_mib"],
        **{f"{st}_time_ratio": ckpt[f"{st}_step_s"] / plain[f"{st}_step_s"] for st in stages},
        "gradient_tensors_compared": compared,
        "gradient_tensors_differing": differing,
    }
    head = f"{'setting':<15} {'warmup step s':>14} {'distill step s':>15} {'peak RSS growth MiB':>20}"
    print("\n" + head + " (median; each)")
    for name, row in rows.items():
        each = ", ".join(map(str, row["peak_growth_mib_each"]))
        times = f"{row['warmup_step_s']:>14.2f} {row['distill_step_s']:>15.2f}"
        print(f"{name:<15} {times} {row['peak_growth_mib']:>20.0f} ({each})")
    ratios = (
        f"memory {result['memory_ratio']:.2f}x, time {result['warmup_time_ratio']:.2f}x (warmup) "
        f"{result['distill_time_ratio']:.2f}x (distill)"
    )
    print(
        f"\ncheckpointing / plain: {ratios}; candidates per step {result['candidates_per_step']}; "
        f"{compared} gradient tensors compared, {len(differing)} differ"
    )

    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
