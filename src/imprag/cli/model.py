"""`imprag calibrate` and `imprag info`: center a model's implicit query, show a model's settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imprag.cli._common import (
    UsageError,
    add_model_args,
    load_model,
    names,
)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from imprag.config import IMPRAG_CONFIG_NAME
    from imprag.io import check_output, writer_lock

    check_output(args.out, replaces=IMPRAG_CONFIG_NAME)  # before the model loads
    if bool(args.prompts) == bool(args.data):
        raise UsageError("give --data BENCH (its prompts of --tasks) or --prompts FILE (one prompt per line)")
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if args.prompts:
        try:
            prompts = [
                line for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        except OSError as err:
            raise UsageError(f"cannot read --prompts {args.prompts}: {err.strerror}") from err
        prompts = prompts[: args.n]
    else:
        from imprag.data import Benchmark
        from imprag.training.data import spread

        bench = Benchmark.load(args.data)
        tasks = names(args.tasks, bench.tasks)
        # an empty split is an error naming it
        prompts = spread([[it.prompt for it in bench.items(t, args.split)] for t in tasks], args.n)
    if not prompts:
        raise UsageError(f"no prompts in {args.prompts}")
    with writer_lock(args.out, "imprag calibrate"):  # one writer of the output folder at a time
        check_output(args.out, replaces=IMPRAG_CONFIG_NAME)  # again, now that no one else is writing it
        return _calibrate(args, prompts)


def _calibrate(args: argparse.Namespace, prompts: list[str]) -> int:
    import shutil
    from dataclasses import replace

    from imprag.config import IMPRAG_CONFIG_NAME
    from imprag.io import LOCK, atomic_directory, atomic_write_text

    model = load_model(args)
    if args.pooling:
        embedding = replace(model.config.embedding, pooling=args.pooling)
        model.config = replace(model.config, embedding=embedding)
    mu = model.calibrate(prompts)
    source, out = Path(args.model or ""), Path(args.out)
    if (source / "adapter_config.json").is_file():  # an adapter stays an adapter: copy it, new config
        with atomic_directory(out, replaces=IMPRAG_CONFIG_NAME) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK))
            model.config.save(tmp)
    else:  # keep the training record (trained system names check it), also when out is the source
        kept = {
            n: (source / n).read_text(encoding="utf-8")
            for n in ("train_config.json",)
            if (source / n).is_file()
        }
        model.save_pretrained(out)
        for name, text in kept.items():
            atomic_write_text(out / name, text)
    print(
        f"mu_q from {len(prompts)} prompts (norm {float(mu.norm()):.2f}) saved with the model in {out}; "
        f"pooling {model.config.embedding.pooling}. "
        + (
            "Indexes built with the same weights and pooling stay valid."
            if not args.pooling
            else "Pooling changed: index the corpus again with this model."
        )
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from imprag import ARCHITECTURES
    from imprag.hardware import describe_machine, summary_line

    machine = describe_machine()
    if args.machine:
        print(json.dumps(machine) if args.json else summary_line(machine))
        return 0
    model = load_model(args)
    info = {
        "model": str(model.model.config.name_or_path),
        "model_type": model.model.config.model_type,
        "layers": model.backbone.num_layers,
        "split": {"b": model.split.b, "t": model.split.t},
        "embedding": {
            **model.config.embedding.passage_side(),
            "query_pooling": model.config.embedding.query_side_pooling,
            "query_centered": model.config.embedding.query_center is not None,
            "retrieval_key": model.config.embedding.retrieval_key,
        },
        "passages": model.config.passages,
        "reader": {"k": model.config.reader.k, "l_max": model.config.reader.l_max},
        "dim": model.dim,
        "index_dim": model.index_dim,
        "dtype": str(model.backbone.dtype).removeprefix("torch."),
        "supported_families": sorted(ARCHITECTURES),
        "machine": machine,
    }
    print(json.dumps(info, indent=None if args.json else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="center a model's implicit query: estimate mu_q and save the model scoring (E_q - mu_q) . E_p",
        description="Estimate mu_q, the mean query vector over prompts of the formats the model will answer, "
        "and save the model with it (imprag_config.json): retrieval then scores (E_q - mu_q) . E_p, which "
        "removes the per-passage bias that sends every prompt to one hub passage. Passage vectors do not "
        "change, so indexes built with the same weights and pooling stay valid. A LoRA adapter folder is "
        "copied as an adapter.",
    )
    cal.add_argument("--out", required=True, help="folder for the calibrated model")
    cal.add_argument("--data", help="benchmark directory whose prompts estimate mu_q")
    cal.add_argument("--tasks", default="describe,denoise,sentence,reading",
                     help="benchmark tasks to draw prompts from (default: %(default)s)")  # fmt: skip
    cal.add_argument("--split", default="train", help="benchmark split (default: %(default)s)")
    cal.add_argument("--prompts", help="a text file of prompts, one per line (instead of --data)")
    cal.add_argument("--n", type=int, default=256, help="at most this many prompts (default: %(default)s)")
    cal.add_argument("--pooling", choices=["last", "mean"], default=None,
                     help="also change the pooling (then re-index; default: keep the model's)")  # fmt: skip
    add_model_args(cal)
    cal.set_defaults(func=cmd_calibrate)

    info = sub.add_parser(
        "info",
        help="show a model's layer split, embedding size and settings, and this machine's fast dtype",
        description="Show a model's settings and the machine it runs on: CPU, the flags that decide bf16 "
        "speed, torch's kernels, threads, and what --dtype auto chose and why (measured once per machine, "
        "cached in the imprag cache folder).",
    )
    info.add_argument("--json", action="store_true", help="compact JSON")
    info.add_argument(
        "--machine", action="store_true", help="only the machine and its auto dtype (no model is loaded)"
    )
    add_model_args(info)
    info.set_defaults(func=cmd_info)
