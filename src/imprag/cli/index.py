"""`imprag index` and `imprag update`: build, refresh and edit passage indexes."""

from __future__ import annotations

import argparse
from dataclasses import replace

from imprag.cli._common import (
    UsageError,
    add_model_args,
    load_model,
    open_index,
    set_embedding,
)


def cmd_index(args: argparse.Namespace) -> int:
    from imprag import IndexConfig
    from imprag.distributed import init_from_env
    from imprag.retrieval.index import build_index

    if args.refresh == bool(args.corpus):
        raise UsageError("give a CORPUS to index, or --refresh to re-encode the passages already in --out")
    config = IndexConfig(
        factory=args.factory,
        train_size=args.train_size,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        ef_construction=args.ef_construction,
        rerank=args.rerank,
        center={"auto": "auto", "yes": True, "no": False}[args.center],
        mmap=args.mmap,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    options = {
        "format": args.format,
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "skip_bad_lines": args.skip_bad_lines,
    }
    baselines = [n.strip() for n in (args.baselines or "").split(",") if n.strip()]
    if baselines:  # before the encode, which may take hours
        from imprag.retrieval.baselines import BASELINES

        if unknown := [n for n in baselines if n not in BASELINES]:
            raise UsageError(f"--baselines: unknown {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    if args.passages is not None and not args.estimate:
        raise UsageError("--passages sizes an --estimate; a build counts the corpus itself")
    dist = init_from_env()
    model = load_model(args, weights=not args.estimate)  # an estimate reads no weight
    if args.pooling or args.retrieval_key:  # the base's E_p (or layer-b inputs) as frozen runs train on
        own = model.config.embedding
        set_embedding(model, replace(own, pooling=args.pooling or own.pooling,
                                     retrieval_key=args.retrieval_key or own.retrieval_key))  # fmt: skip
    if args.estimate:
        return _estimate(model, args, config, options)
    corpus = None if args.refresh else args.corpus
    index = build_index(
        model, args.out, corpus, config, options, args.overwrite, progress=not args.no_progress, dist=dist
    )
    if index is None:  # ranks other than 0 are done
        return 0
    for name in baselines:
        from imprag.retrieval.baselines import baseline_dir, build_baseline

        build_baseline(name, index.store, baseline_dir(args.out, name), progress=not args.no_progress)
    m = index.manifest
    print(
        f"indexed {m['count']} passages into {args.out} ({m['index']['factory']}, dim {m['dim']}, "
        f"{m['build']['seconds']} s)"
    )
    return 0


def _estimate(model, args: argparse.Namespace, config, options: dict) -> int:
    """Print what the build would need, from the corpus (all of it, or its first passages scaled to
    --passages) and the model; writes nothing."""
    from itertools import islice

    from tqdm.auto import tqdm

    from imprag.retrieval.corpus import read_corpus
    from imprag.retrieval.index import check_factory, describe_plan, plan_build

    check_factory(config.factory, model.index_dim)
    if args.refresh:
        from imprag.retrieval.index import PassageIndex

        with PassageIndex.load(args.out) as index:  # reads every stored text once: an estimate's cost
            count, text = len(index.store), index.store.text_bytes()
        source = f"the {count:,} stored"
    else:
        passages = read_corpus(args.corpus, **options)
        if args.passages is not None:
            passages = islice(passages, ESTIMATE_SAMPLE)
        count = text = 0
        for p in tqdm(passages, desc="reading the corpus", unit=" passages", disable=args.no_progress):
            count += 1
            text += len(p.title.encode()) + len(p.text.encode())
        source = f"the first {count:,}"
    if args.passages is not None and count:
        text, count = round(text / count * args.passages), args.passages
    plan = plan_build(model, count, text, config)
    print(f"imprag index {config.factory}: {describe_plan(plan)}")
    sampled = f" (mean passage size from {source})" if args.passages is not None else ""
    print(f"  passages            {plan['passages']:>16,}{sampled}")
    for key, what in (
        ("store_bytes", "passage store (disk)"),
        ("shards_bytes", "shards (disk, build only)"),
        ("index_bytes", "FAISS index (disk)"),
        ("encode_peak_bytes", "RAM per encoding process"),
        ("assemble_peak_bytes", "RAM of rank 0 assembling"),
        ("search_ram_bytes", "RAM of the loaded index"),
    ):
        print(f"  {what:<28}{plan[key] / 1e9:>10.2f} GB")
    return 0


ESTIMATE_SAMPLE = 10_000
"""Passages `--estimate --passages N` reads to measure the corpus' mean passage size."""


def cmd_update(args: argparse.Namespace) -> int:
    from imprag.retrieval.corpus import read_corpus

    if not args.add and not args.delete:
        raise UsageError("nothing to do: pass --add CORPUS and/or --delete ID ...")
    model, index = open_index(args.index, args, writable=True)  # holds the index's write lock
    with index:
        if args.delete:
            print(f"deleted {index.delete(args.delete)} passages")
        if args.add:
            counts = index.add(
                model, read_corpus(args.add, format=args.format, skip_bad_lines=args.skip_bad_lines)
            )
            print(
                f"added {counts['added']}, re-encoded {counts['changed']} changed, "
                f"skipped {counts['unchanged']} unchanged"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser(
        "index",
        help="encode a corpus with the model's bottom layers into a FAISS index",
        description="Build an index: store the passages (SQLite), encode them with layers 0..b (resumable: "
        "run the same command again after an interruption), and index the vectors with FAISS. Runs on N "
        "processes under `torchrun --standalone --nproc_per_node=N $(which imprag) index ...`.",
    )
    index.add_argument(
        "corpus",
        nargs="?",
        metavar="CORPUS",
        help="a .jsonl/.tsv/KILT/Atlas file, a text file or folder, or 'wiki-summaries' (embedded)",
    )
    index.add_argument("--out", required=True, help="index directory")
    index.add_argument("--format", default="auto", choices=["auto", "jsonl", "dpr", "kilt", "atlas", "text"])
    index.add_argument("--chunk-size", type=int, default=100, help="words per passage for text/KILT input")
    index.add_argument("--chunk-overlap", type=int, default=0, help="words shared by consecutive chunks")
    index.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed lines instead of failing"
    )
    index.add_argument(
        "--factory", default="Flat", help="FAISS factory string: Flat, IVF1024,PQ32, HNSW32, ..."
    )
    index.add_argument("--train-size", type=int, default=100_000, help="vectors used to train IVF/PQ")
    index.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query")
    index.add_argument("--ef-search", type=int, default=64, help="HNSW search breadth")
    index.add_argument(
        "--ef-construction",
        type=int,
        default=40,
        help="HNSW build breadth; above 2*M FAISS prunes links, which hurt recall on E_p (README)",
    )
    index.add_argument(
        "--center",
        choices=["auto", "yes", "no"],
        default="auto",
        help="store E_p minus its mean (rankings and scores unchanged; HNSW and IVF need it); auto: all "
        "but Flat",
    )
    index.add_argument(
        "--rerank",
        type=int,
        default=4,
        help="with a ',Refine(...)' factory: candidates re-scored per hit (k * RERANK)",
    )
    index.add_argument(
        "--mmap",
        action="store_true",
        help="searches read what FAISS can map (flat codes such as a Refine(Flat)'s exact vectors, HNSW "
        "links, IVF lists but fast-scan ones) memory-mapped from the index file instead of RAM",
    )
    index.add_argument("--batch-size", type=int, default=32, help="passages per forward pass")
    index.add_argument("--shard-size", type=int, default=2048, help="passages per resumable shard")
    mode = index.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing index or partial build")
    mode.add_argument(
        "--refresh", action="store_true", help="re-encode the passages in --out with this model"
    )
    index.add_argument("--baselines", help="also build baseline retrievers: bm25, minilm or bm25,minilm")
    index.add_argument(
        "--estimate",
        action="store_true",
        help="print the disk and memory the build needs (reading the corpus, not encoding it) and exit",
    )
    index.add_argument(
        "--passages",
        type=int,
        metavar="N",
        help="with --estimate: size for N passages, measuring the mean passage on the corpus' first 10,000",
    )
    index.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(index)
    index.add_argument("--pooling", choices=["last", "mean"], default=None,
                       help="E_p pooling (default: the model's own); a run with model.passages=frozen "
                       "trains against the index of its base model with the run's pooling")  # fmt: skip
    index.add_argument("--retrieval-key", choices=["base", "trained"], default=None,
                       help="'trained': store the base model's mean layer-b inputs, which a run with "
                       "model.retrieval_key=trained maps with the key projection it learns (needs "
                       "--pooling mean); default: the model's own")  # fmt: skip
    index.set_defaults(func=cmd_index)

    update = sub.add_parser("update", help="add, change or delete passages of an index in place")
    update.add_argument("index", metavar="INDEX")
    update.add_argument(
        "--add", metavar="CORPUS", help="passages to add; same ids with new text are re-encoded"
    )
    update.add_argument("--delete", nargs="+", metavar="ID", help="passage ids to remove")
    update.add_argument("--format", default="auto", choices=["auto", "jsonl", "dpr", "kilt", "atlas", "text"])
    update.add_argument("--skip-bad-lines", action="store_true")
    add_model_args(update, from_index=True)
    update.set_defaults(func=cmd_update)
