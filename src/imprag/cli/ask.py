"""`imprag ask` and `imprag retrieve`: answer prompts, show what an index retrieves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imprag.cli._common import (
    UsageError,
    add_model_args,
    load_model,
    open_index,
    read_passages,
    read_prompts,
)


def cmd_ask(args: argparse.Namespace) -> int:
    passages = read_passages(args)
    positional = list(args.prompts)
    if passages:
        args.prompts = positional
        prompts = read_prompts(args)
        model = load_model(args)
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
        prompts = read_prompts(args)
        model, index = open_index(directory, args)
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
    prompts = read_prompts(args)
    if args.retriever == "implicit":
        model, index = open_index(args.index, args)
        hits = model.retrieve(prompts, index, k=args.k)
    else:
        from imprag.retrieval.baselines import baseline_dir, load_baseline
        from imprag.retrieval.index import STORE
        from imprag.retrieval.store import PassageStore

        store = PassageStore(Path(args.index) / STORE)
        hits = load_baseline(args.retriever, baseline_dir(args.index, args.retriever), store).retrieve(
            prompts, args.k
        )
    for prompt, found in zip(prompts, hits, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "passages": [_passage_json(p) for p in found]}))
            continue
        print(f"prompt: {prompt!r}")
        _print_passages(found)
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


def register(sub: argparse._SubParsersAction) -> None:
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
    add_model_args(ask, from_index=True)
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
    add_model_args(retrieve, from_index=True)
    retrieve.set_defaults(func=cmd_retrieve)
