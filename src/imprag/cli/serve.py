"""`imprag serve`: the model and its index behind an OpenAI-compatible HTTP API (imprag.serve)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from imprag.cli._common import UsageError, add_model_args, open_index

log = logging.getLogger("imprag")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imprag.config import ConfigError
    from imprag.retrieval.baselines import BASELINES, baseline_dir, load_baseline
    from imprag.serve import ServeConfig, create_app

    if not Path(args.index).is_dir():
        raise UsageError(
            f"{args.index!r} is not an index directory; build one with `imprag index CORPUS --out DIR`"
        )
    key = args.api_key if args.api_key is not None else os.environ.get("IMPRAG_API_KEY") or None
    import torch

    # The model is loaded here with one thread and run by the engine's worker thread with the machine's
    # count: two OpenMP thread teams on a 2-core machine would make every op of the worker 2.5x slower
    # (ServeConfig.threads, serve/engine.py).
    threads = torch.get_num_threads()
    try:
        config = ServeConfig(
            max_tokens=args.max_tokens,
            default_max_tokens=min(args.default_max_tokens, args.max_tokens),
            max_k=args.max_k,
            max_prompts=args.max_prompts,
            max_body_bytes=args.max_body_bytes,
            batch_wait_ms=args.batch_wait_ms,
            max_batch=args.max_batch,
            api_key=key,
            threads=threads,
        )
    except ConfigError as err:
        raise UsageError(str(err)) from err
    torch.set_num_threads(1)
    model, index = open_index(args.index, args)
    baselines = {
        name: load_baseline(name, baseline_dir(args.index, name), index.store)
        for name in BASELINES
        if baseline_dir(args.index, name).is_dir()
    }
    built = index.manifest["model"]
    name = args.served_name or Path(str(args.model or built.get("source") or built["name"])).name
    app = create_app(model, index, config, baselines, model_id=name)
    where = f"http://{args.host}:{args.port}"
    log.info(
        "serving %r over %s (%d passages; retrievers: %s) at %s/v1 - playground at %s/",
        name,
        args.index,
        len(index),
        ", ".join(["implicit", *baselines]),
        where,
        where,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", args.host)
    # uvicorn stops gracefully on SIGTERM/SIGINT (no new connections, requests in flight finish), then
    # raises the signal again for the handler that was there before it; this one makes that a clean exit 0
    # with a log line, not a kill by SIGTERM or a KeyboardInterrupt traceback.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60)
    log.info("stopped%s", f" by {signal.Signals(stopped[0]).name}" if stopped else "")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve an index and its model over an OpenAI-compatible HTTP API, with a web playground",
        description="Load the model and an index once and answer over HTTP: POST /v1/completions, "
        "/v1/chat/completions (streaming, with the passages read as search_results), /v1/embeddings, "
        "/v1/retrieve; GET /v1/models, /health, /metrics; a playground page at /. Concurrent requests "
        "are batched into shared generate calls. Binds loopback unless --host says otherwise.",
    )
    serve.add_argument("index", metavar="INDEX", help="index directory built by `imprag index`")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="(default %(default)s)")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1 routes and /metrics (default: $IMPRAG_API_KEY, "
        "else none)",
    )
    serve.add_argument(
        "--served-name", default=None, help="the model name clients pass (default: the model's)"
    )
    limits = serve.add_argument_group("limits and batching")
    limits.add_argument("--max-tokens", type=int, default=256, help="cap on max_tokens (default %(default)s)")
    limits.add_argument(
        "--default-max-tokens",
        type=int,
        default=64,
        help="max_tokens when a request has none (default %(default)s)",
    )
    limits.add_argument("--max-k", type=int, default=20, help="cap on k, passages read (default %(default)s)")
    limits.add_argument(
        "--max-prompts", type=int, default=8, help="prompts per request (default %(default)s)"
    )
    limits.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413 (default %(default)s)"
    )
    limits.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to batch with (default %(default)s)",
    )
    limits.add_argument(
        "--max-batch", type=int, default=8, help="prompts decoded together (default %(default)s)"
    )
    add_model_args(serve, from_index=True)
    serve.set_defaults(func=cmd_serve)
