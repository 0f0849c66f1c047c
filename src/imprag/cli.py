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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded default name, local folder, or hub id (default: %(default)s, loaded offline)",
    )
    g.add_argument("--b", type=int, default=None, help="retrieval layer b (default: the model's)")
    g.add_argument("--t", type=int, default=None, help="last reading layer t (default: the model's)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: measured-fastest for the embedded model, else the checkpoint's)",
    )


def _load(args: argparse.Namespace):
    from imprag import ImpRAG

    return ImpRAG.from_pretrained(args.model, b=args.b, t=args.t, dtype=args.dtype)


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
    prompts = _read_prompts(args)
    passages = _read_passages(args)
    model = _load(args)
    kwargs = {"max_new_tokens": args.max_new_tokens, "stop": tuple(args.stop or ())}
    if args.retrieve:
        if not passages:
            raise UsageError("--retrieve needs passages to retrieve from (--passage or --passages-file)")
        from imprag import InMemoryRetriever

        index = InMemoryRetriever.build(model, passages)
        results = model.generate(prompts, index=index, k=min(args.k, len(passages)), **kwargs)
    else:
        results = model.generate(prompts, passages=[passages] * len(prompts), **kwargs)
    for res in results:
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": res.prompt,
                        "answer": res.text,
                        "finish_reason": res.finish_reason,
                        "passages": [{"id": p.id, "score": p.score, "text": p.text} for p in res.passages],
                    }
                )
            )
            continue
        print(f"prompt: {res.prompt!r}\nanswer: {res.text}")
        for rank, p in enumerate(res.passages, start=1):
            score = "" if p.score is None else f" score={p.score:.3f}"
            snippet = p.text if len(p.text) <= 100 else p.text[:97] + "..."
            print(f"  [{rank}]{score} {snippet}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from imprag import ARCHITECTURES

    model = _load(args)
    info = {
        "model": str(model.model.config.name_or_path),
        "model_type": model.model.config.model_type,
        "layers": model.backbone.num_layers,
        "split": {"b": model.split.b, "t": model.split.t},
        "embedding": {"rope": model.config.embedding.rope, "pooling": model.config.embedding.pooling},
        "reader": {"k": model.config.reader.k, "l_max": model.config.reader.l_max},
        "dim": model.dim,
        "dtype": str(model.backbone.dtype).removeprefix("torch."),
        "supported_families": sorted(ARCHITECTURES),
    }
    print(json.dumps(info, indent=None if args.json else 2))
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
        help="answer prompts, reading the given passages in the middle layers",
        description="Answer prompts with an ImpRAG model. The passages are read by layers b..t; with "
        "--retrieve the model first picks the top-k of them with its own implicit query.",
    )
    ask.add_argument("prompts", nargs="*", help='prompt text, e.g. "Q: What is the capital of France?\\nA:"')
    ask.add_argument("--prompts-file", help='JSONL file with one {"prompt": ...} per line')
    ask.add_argument("-p", "--passage", action="append", help="a passage to read (repeatable)")
    ask.add_argument("--passages-file", help='passages: a .jsonl file of {"text": ...} or one per line')
    ask.add_argument("--retrieve", action="store_true", help="retrieve the top-k passages by implicit query")
    ask.add_argument("-k", type=int, default=5, help="passages to retrieve with --retrieve (default 5)")
    ask.add_argument("--max-new-tokens", type=int, default=32, help="(default %(default)s)")
    ask.add_argument("--stop", action="append", help='stop string (repeatable), e.g. --stop "\\n"')
    ask.add_argument("--json", action="store_true", help="one JSON object per prompt")
    _add_model_args(ask)
    ask.set_defaults(func=cmd_ask)

    info = sub.add_parser("info", help="show a model's layer split, embedding size and settings")
    info.add_argument("--json", action="store_true", help="compact JSON")
    _add_model_args(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_by_default()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from imprag.config import ConfigError
    from imprag.model.backbone import UnsupportedModelError
    from imprag.model.defaults import MissingPackageError
    from imprag.model.reader import InputError

    expected: tuple[type[BaseException], ...] = (
        UsageError,
        ConfigError,
        InputError,
        UnsupportedModelError,
        MissingPackageError,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except expected as err:
        print(f"imprag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
