"""`imprag eval`: score systems on the benchmark."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from imprag.cli._common import (
    UsageError,
    add_model_args,
    check_same_corpus,
    load_model,
    names,
)


def _digest(values: object) -> str | None:
    """A short hash of a JSON-able value (None stays None): recorded so resumed runs cannot mix settings."""
    if values is None:
        return None
    import hashlib

    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]


def cmd_eval(args: argparse.Namespace) -> int:
    from imprag.data import Benchmark, tasks_of
    from imprag.evaluation.harness import evaluate
    from imprag.evaluation.report import write_report
    from imprag.evaluation.systems import SYSTEMS, separate_retriever
    from imprag.io import check_output
    from imprag.retrieval.index import read_manifest

    bench = Benchmark.load(args.data)
    systems = names(args.system, SYSTEMS, "system")
    factories = dict(SYSTEMS)
    if args.retriever:
        if "ra-dit-llama" not in systems:
            raise UsageError("--retriever names ra-dit-llama's separate retriever: add --system ra-dit-llama")
        if not Path(args.retriever).is_dir():
            raise UsageError(f"--retriever {args.retriever}: no such directory (pass RUN/model of the run)")
        factories["ra-dit-llama"] = partial(separate_retriever, retriever=Path(args.retriever).resolve())
    if args.tasks:
        tasks = names(args.tasks, bench.tasks)
    else:  # the seen and unseen tasks that have this split (fanoutqa and trivia are test only)
        tasks = [t for t in tasks_of("seen") + tasks_of("unseen") if bench.counts.get(t, {}).get(args.split)]
    for task in tasks:
        bench.items(task, args.split)  # unknown task / empty split: an error before the model loads
    # before the model loads: the report files would replace a user's results.md, benchmark.json, chart.png
    check_output(args.out, "*/run.json", kind="evaluation")
    manifest = None
    if args.index:
        manifest = read_manifest(Path(args.index))
        check_same_corpus(bench, manifest["corpus_hash"], args.index)
    elif any(s != "closed-book" for s in systems):
        raise UsageError("retrieval systems need --index DIR (built with `--baselines bm25,minilm`)")
    model = load_model(args, manifest)
    record = {
        "model": {
            "source": model.source, "b": model.split.b, "t": model.split.t,
            "dtype": str(model.model.dtype), "retrieval_fingerprint": model.retrieval_fingerprint(),
            "fingerprint": model.model_fingerprint(),  # every weight: a retrained generator is another model
            "query_center": _digest(model.config.embedding.query_center),
        },
        "index": manifest and {k: manifest.get(k) for k in ("model", "corpus_hash", "count", "index")},
        "batch_size": args.batch_size,
    }  # fmt: skip
    out = Path(args.out)
    index_dir = Path(args.index) if args.index else Path()
    # Every system is made (and every refusal raised: a stale index, an untrained model under a trained
    # name) before the first one runs for hours.
    made = {name: factories[name](model, index_dir, args.k) for name in systems}
    for name, system in made.items():
        evaluate(
            system, bench, tasks, args.split, out / name, limit=args.limit, batch_size=args.batch_size,
            seed=args.seed, record=record, overwrite=args.overwrite, shots=args.shots,
            progress=not args.no_progress,
        )  # fmt: skip
    table = write_report(out, args.split)
    if args.merge_into:
        from imprag.evaluation.report import benchmark_rows, load_summaries, merge_rows

        merge_rows(args.merge_into, benchmark_rows(load_summaries([out / name for name in systems])))
    print(table, end="")
    print(f"predictions, metrics, results.md, benchmark.json and chart.png in {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="score systems on benchmark tasks (resumable); writes predictions, metrics, a table, a chart",
        description="Evaluate one or more systems on a built benchmark. Each system's run goes to OUT/SYSTEM "
        "and resumes if interrupted; OUT/results.md, OUT/benchmark.json and OUT/chart.png cover every "
        "system evaluated in OUT on the split.",
    )
    ev.add_argument("--data", required=True, help="benchmark directory (`imprag data build`)")
    ev.add_argument("--index", help="index directory of the benchmark's corpus, with --baselines bm25,minilm")
    ev.add_argument(
        "--system",
        default="closed-book",
        help="comma-separated: closed-book, bm25, minilm, minilm-oracle, imprag-zero-shot; trained "
        "(--model RUN/model): imprag, imprag-warmup, imprag-frozen, imprag-frozen-warmup, ra-it, "
        "ra-dit-llama (default: %(default)s)",
    )
    ev.add_argument(
        "--retriever",
        metavar="DIR",
        help="ra-dit-llama's separate retriever (RUN/model of `imprag train ... objective.system=retriever`; "
        "trained with frozen passages it reads its base model's index). Default: the model --index was "
        "built with",
    )
    ev.add_argument("--tasks", help="comma-separated task names (default: the seen and unseen tasks)")
    ev.add_argument(
        "--split", default="test", choices=["train", "dev", "test"], help="(default: %(default)s)"
    )
    ev.add_argument("--out", required=True, help="output directory")
    ev.add_argument(
        "--limit",
        type=int,
        help="first N items per task: a seeded sample of whole groups (an entity's items are adjacent)",
    )
    ev.add_argument("--k", type=int, default=5, help="passages read per prompt (default: %(default)s)")
    ev.add_argument(
        "--shots",
        type=int,
        default=0,
        help="solved examples before each prompt (default: %(default)s, the paper's zero-shot protocol)",
    )
    ev.add_argument(
        "--batch-size", type=int, default=8, help="prompts per generation batch (default: %(default)s)"
    )
    ev.add_argument("--seed", type=int, default=0, help="recorded with the run (decoding is greedy)")
    ev.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUT/SYSTEM")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument(
        "--merge-into",
        metavar="FILE",
        help="also merge the rows of these systems into a results JSON list (e.g. results/benchmark.json), "
        "replacing rows of the same system, task, split and shots",
    )
    add_model_args(ev, from_index=True)
    ev.set_defaults(func=cmd_eval)
