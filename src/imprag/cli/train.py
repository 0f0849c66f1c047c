"""`imprag train`: one training run from a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from imprag.distributed import init_from_env
    from imprag.training.config import load_train_config
    from imprag.training.loop import train

    config = load_train_config(args.config, args.overrides)
    final = train(config, args.out, init_from_env(), progress=not args.no_progress)
    print(
        f"trained {config.total_steps} steps; the model is in {final} (logs: {Path(args.out) / 'log.jsonl'})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train",
        help="train retrieval and generation jointly (warmup on pseudo labels, then self-distillation)",
        description="Train an ImpRAG model from a recipe (configs/*.yaml) with `section.field=value` "
        "overrides. Resumes from the newest checkpoint in OUT; writes OUT/log.jsonl, "
        "OUT/checkpoints/step-N and the final model in OUT/model. Under `torchrun --nproc_per_node=N` the "
        "global batch is split over N processes.",
    )
    tr.add_argument("--config", help="recipe YAML (default: the built-in defaults)")
    tr.add_argument("--out", required=True, help="run directory (checkpoints, logs, the final model)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4 data.index=DIR")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)
