"""`imprag <command>`: a thin map from commands to library calls. Only this package reads argv and files
of user input; errors the user can fix are printed as one line, without a traceback.

One module per command group (`ask`, `index`, `model`, `data`, `evaluate`, `train`, `serve`), each
registering its subcommands with `register(sub)`; `_common` holds what they share."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from imprag.cli import ask, data, evaluate, index, model, serve, train
from imprag.cli._common import UsageError, offline_by_default

__all__ = ["UsageError", "build_parser", "main"]

log = logging.getLogger("imprag")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprag",
        description="ImpRAG: one decoder LM that retrieves with its bottom layers and reads with its middle.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (ask, index, data, evaluate, train, model, serve):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    offline_by_default()
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
    from imprag.errors import ImpragError  # every expected failure: one line, exit 2

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except ImpragError as err:
        print(f"imprag {args.command}: error: {err}", file=sys.stderr)
        code = 2
    finally:  # one handler per call: a second main() in the process must not print every line twice
        log.removeHandler(mine)
    # The ranks of `index` and `train` end together (errors are broadcast), so the group can go now; an
    # unexpected exception propagates without this (other ranks may still wait in a collective).
    joined = sys.modules.get("imprag.distributed")  # only commands that may have joined a group import it
    if joined is not None:
        joined.shutdown()
    return code
