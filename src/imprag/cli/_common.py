"""What every command shares: usage errors, model arguments, loading a model or index, reading user files."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from imprag.errors import ImpragError
from imprag.hardware import DTYPE_CHOICES


class UsageError(ImpragError):
    """Bad command-line input; printed without a traceback."""


def offline_by_default() -> None:
    # The embedded defaults never need the hub; without these a hub lookup hangs, then fails.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def add_model_args(p: argparse.ArgumentParser, from_index: bool = False) -> None:
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
        default="auto",
        choices=DTYPE_CHOICES,
        help="weights dtype (default: %(default)s, the dtype this machine runs fast: bf16 only with native "
        "bf16 kernels; `imprag info --machine` says which and why)",
    )


def load_model(args: argparse.Namespace, manifest: dict | None = None, weights: bool = True):
    """The model named on the command line, or else the one recorded in an index manifest (`weights=False`:
    its structure only, for sizing)."""
    from imprag import ImpRAG

    name, b, t = args.model, args.b, args.t
    built = manifest["model"] if name is None and manifest is not None else None
    if built is not None:
        name = built.get("source") or built["name"]
        b = built["b"] if b is None else b
        t = built.get("t") if t is None else t
    model = ImpRAG.from_pretrained(name or "smollm2-135m", b=b, t=t, dtype=args.dtype, weights=weights)
    if built is not None and isinstance(built.get("embedding"), dict):
        # The index's E_p settings (say `imprag index --pooling mean` over a base model) come back with it.
        set_embedding(model, replace(model.config.embedding, **built["embedding"]))
    return model


def set_embedding(model, embedding) -> None:
    """Give `model` these E_q/E_p settings; a trained retrieval key maps frozen base inputs, so it comes
    with passages='frozen'."""
    passages = "frozen" if embedding.retrieval_key == "trained" else model.config.passages
    model.config = replace(model.config, embedding=embedding, passages=passages)


def open_index(directory: str, args: argparse.Namespace, writable: bool = False):
    """Load the model that matches an index directory and the index itself (stale indexes refused)."""
    from imprag.retrieval.index import PassageIndex, read_manifest

    manifest = read_manifest(Path(directory))
    model = load_model(args, manifest)
    return model, PassageIndex.load(directory, model, writable=writable)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        prompts += [row["prompt"] for row in read_jsonl(Path(args.prompts_file), "prompt")]
    if not prompts:
        raise UsageError("no prompt given: pass one as an argument or --prompts-file FILE.jsonl")
    return prompts


def read_passages(args: argparse.Namespace) -> list[str]:
    passages = list(args.passage or [])
    if args.passages_file:
        path = Path(args.passages_file)
        if path.suffix == ".jsonl":
            passages += [row["text"] for row in read_jsonl(path, "text")]
        else:
            passages += [line.strip() for line in read_text(path).splitlines() if line.strip()]
    return passages


def read_text(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_jsonl(path: Path, field: str) -> list[dict]:
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
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


def names(text: str, known, kind: str = "task") -> list[str]:
    """A comma-separated list of names, each one of `known` (a one-line error lists them otherwise)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise UsageError(
            f"unknown {kind}(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"known {kind}s: {', '.join(known)}"
        )
    return names


def check_same_corpus(bench, corpus_hash: str, index: str) -> None:
    if corpus_hash != bench.manifest["corpus"]["hash"]:
        raise UsageError(
            f"{index} indexes another corpus than the benchmark {bench.directory} was built over "
            f"(corpus hash {corpus_hash} vs {bench.manifest['corpus']['hash']}); "
            "index the benchmark's corpus (`imprag index wiki-summaries --out DIR`)"
        )
