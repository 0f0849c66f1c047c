"""The FastAPI application: OpenAI-compatible routes over one `Engine`, with errors in OpenAI's shape.

Routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/retrieve (ours); GET /v1/models,
/health, /metrics (Prometheus text) and / (the playground). Every bad request gets a 4xx with
`{"error": {"message", "type", "param", "code"}}` whose message says what to change; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imprag import __version__
from imprag.config import DecodeConfig
from imprag.errors import ImpragError
from imprag.model.generation import Generation, RetrievedPassage
from imprag.model.imprag import ImpRAG
from imprag.model.reader import tokenize
from imprag.model.retriever import Retriever
from imprag.serve.config import ServeConfig
from imprag.serve.engine import Channel, Engine, GenerateJob
from imprag.serve.metrics import Metrics
from imprag.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    RetrieveRequest,
)

__all__ = ["ApiError", "create_app"]

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "length"}
"""Our finish reasons in OpenAI's words (a cancelled row has no client left to tell)."""


class ApiError(ImpragError):
    """A request the server refuses: an HTTP status and OpenAI's error fields (its handler, registered
    before ImpragError's, answers with that status)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def create_app(
    model: ImpRAG,
    index: Retriever | None,
    config: ServeConfig | None = None,
    baselines: dict[str, Any] | None = None,
    model_id: str | None = None,
) -> FastAPI:
    """The app serving `model` over `index` (None: closed book and given passages only). `baselines`:
    name -> text retriever (`bm25`, `minilm`) for /v1/retrieve. `model_id`: the name clients pass as
    `model` (default: the model's source name)."""
    config = config or ServeConfig()
    served = model_id or str(model.model.config.name_or_path or "imprag")
    metrics = Metrics(config.max_batch)
    engine = Engine(model, index, config, baselines, on_batch=metrics.batch_size.observe)
    metrics.watch_queue(lambda: engine.queue_depth)
    tokenizer = copy.deepcopy(model.tokenizer)  # the event loop's own: the worker thread uses the model's
    size = len(index) if index is not None and hasattr(index, "__len__") else 0
    fingerprint = model.model_fingerprint()  # here, not in the event loop: it reads every weight

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="imprag", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.add_middleware(_Limits, max_body=config.max_body_bytes, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _validation_error(err.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = (
            "no such route; see GET /v1/models, POST /v1/completions"
            if err.status_code == 404
            else err.detail
        )
        return ApiError(err.status_code, str(message)).response()

    @app.exception_handler(ImpragError)
    async def _imprag(request: Request, err: ImpragError) -> JSONResponse:
        return ApiError(400, str(err)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:  # Starlette logs the traceback
        return ApiError(500, "internal server error; the server log has the traceback").response()

    def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key the "
                "server was started with (--api-key or IMPRAG_API_KEY)",
                code="invalid_api_key",
            )

    keyed = [Depends(require_key)]

    # -- generation ---------------------------------------------------------------------------------------

    def check_model(name: str | None) -> None:
        if name is not None and name != served:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {served!r}",
                "model",
                "model_not_found",
            )

    def decode_config(body: CompletionRequest | ChatCompletionRequest) -> DecodeConfig:
        max_tokens = config.default_max_tokens if body.max_tokens is None else body.max_tokens
        if max_tokens > config.max_tokens:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is above this server's cap of {config.max_tokens}; ask for fewer",
                "max_tokens",
            )
        sample = bool(body.temperature)  # None or 0: greedy
        return DecodeConfig(
            max_new_tokens=max_tokens,
            do_sample=sample,
            temperature=body.temperature if sample else 1.0,
            top_p=body.top_p if sample and body.top_p is not None else 1.0,
            stop=tuple(body.stop or ()),
            seed=body.seed,
        )

    def reading(body: CompletionRequest | ChatCompletionRequest) -> tuple[int, tuple[str, ...] | None]:
        """(k, given passages) of a request, checked against the caps and the index."""
        if body.passages is not None:
            if len(body.passages) > config.max_k:
                raise ApiError(
                    400,
                    f"{len(body.passages)} passages given; this server reads at most {config.max_k}",
                    "passages",
                )
            return 0, tuple(body.passages)
        k = body.k if body.k is not None else (min(model.config.reader.k, size) if index is not None else 0)
        if k:
            check_k(k)
        return k, None

    def check_k(k: int) -> None:
        """400 unless the index exists and k is within the caps."""
        if index is None:
            raise ApiError(
                400, f"k={k}: this server has no index to retrieve from; use k=0 or give passages", "k"
            )
        if k > min(config.max_k, size):
            raise ApiError(
                400,
                f"k={k} is above the cap of {min(config.max_k, size)} (the server's max_k "
                f"{config.max_k}, the index's {size} passages); lower k",
                "k",
            )

    def check_count(texts: Sequence[str], param: str) -> None:
        if len(texts) > config.max_prompts:
            raise ApiError(
                400, f"{len(texts)} {param}s in one request; send at most {config.max_prompts}", param
            )

    def prompt_tokens(prompts: Sequence[str], reads: int, max_tokens: int, param: str) -> int:
        """Total prompt tokens; 400 when there are too many prompts, or a prompt plus what it reads and
        generates overflows the model."""
        check_count(prompts, param)
        total, limit = 0, model.backbone.max_positions
        for i, ids in enumerate(tokenize(tokenizer, list(prompts), "prompt")):
            need = model.config.reader.prompt_start(reads) + len(ids) + max_tokens
            if need > limit:
                raise ApiError(
                    400,
                    f"prompt {i} is {len(ids)} tokens: with {reads} passages read and "
                    f"max_tokens={max_tokens} it needs {need} positions, and this model has "
                    f"{limit}; shorten it or lower k or max_tokens",
                    param,
                )
            total += len(ids)
        return total

    async def generate(
        body: CompletionRequest | ChatCompletionRequest, prompts: list[str], chat: bool
    ) -> Response:
        check_model(body.model)
        cfg = decode_config(body)
        k, passages = reading(body)
        reads = len(passages) if passages is not None else k
        n_prompt = prompt_tokens(prompts, reads, cfg.max_new_tokens, "messages" if chat else "prompt")
        metrics.tokens.labels("prompt").inc(n_prompt)
        channel = Channel(asyncio.get_running_loop())
        for i, prompt in enumerate(prompts):
            engine.submit(GenerateJob(prompt, cfg, k, passages, channel, index=i, stream=body.stream))
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": served,
        }
        started = time.perf_counter()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _stream(channel, len(prompts), head, chat, n_prompt, include_usage, metrics, started)
            return StreamingResponse(
                chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        results = await _collect(channel, len(prompts))
        n_completion = sum(len(r.token_ids) for r in results)
        metrics.tokens.labels("completion").inc(n_completion)
        choices = []
        for i, result in enumerate(results):
            found = _search_results(result.passages)
            content = (
                {"message": {"role": "assistant", "content": result.text}} if chat else {"text": result.text}
            )
            choices.append(
                {
                    "index": i,
                    **content,
                    "finish_reason": FINISH[result.finish_reason],
                    "logprobs": None,
                    "search_results": found,
                }
            )
        return JSONResponse(
            {
                **head,
                "choices": choices,
                "usage": _usage(n_prompt, n_completion),
                "search_results": choices[0]["search_results"],
            }
        )

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(body: CompletionRequest) -> Response:
        return await generate(body, list(body.prompt), chat=False)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return await generate(body, [render_chat(body.messages)], chat=True)

    def render_chat(messages: Sequence[Message]) -> str:
        turns = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
        ]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return plain_chat(turns)

    # -- vectors and retrieval ----------------------------------------------------------------------------

    @app.post("/v1/embeddings", dependencies=keyed)
    async def embeddings(body: EmbeddingRequest) -> Response:
        check_model(body.model)
        texts = list(body.input)
        check_count(texts, "input")
        n_tokens = sum(len(ids) for ids in tokenize(tokenizer, texts, "input"))
        if body.input_type == "query":
            prompt_tokens(texts, model.config.reader.k, 0, "input")

            def run() -> np.ndarray:
                return model.index_query(model.embed_queries(texts)).float().numpy()
        else:

            def run() -> np.ndarray:
                return model.embed_passages(texts).float().numpy()

        vectors = await engine.call(run)
        data = []
        for i, vector in enumerate(vectors.astype("<f4")):
            value: Any = vector.tolist()
            if body.encoding_format == "base64":
                value = base64.b64encode(vector.tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": served,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    @app.post("/v1/retrieve", dependencies=keyed)
    async def retrieve(body: RetrieveRequest) -> Response:
        check_model(body.model)
        texts = list(body.input)
        check_count(texts, "input")
        check_k(body.k)
        if body.retriever == "implicit":
            prompt_tokens(texts, body.k, 0, "input")

            def run() -> list[list[RetrievedPassage]]:
                return model.retrieve(texts, index, k=body.k)
        else:
            baseline = engine.baselines.get(body.retriever)
            if baseline is None:
                have = ", ".join(["implicit", *sorted(engine.baselines)])
                raise ApiError(
                    400,
                    f"retriever {body.retriever!r} was not built for this index (it has {have}); "
                    "build it with `imprag index CORPUS --baselines bm25,minilm`",
                    "retriever",
                )

            def run() -> list[list[RetrievedPassage]]:
                return baseline.retrieve(texts, body.k)

        hits = await engine.call(run)
        data = [
            {"index": i, "input": t, "search_results": _search_results(h)}
            for i, (t, h) in enumerate(zip(texts, hits, strict=True))
        ]
        return JSONResponse({"object": "list", "retriever": body.retriever, "model": served, "data": data})

    # -- about the server ---------------------------------------------------------------------------------

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": served, "object": "model", "created": 0, "owned_by": "imprag"}],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        manifest = getattr(index, "manifest", None) or {}
        return {
            "status": "ok",
            "model": served,
            "model_fingerprint": fingerprint,
            "index": None
            if index is None
            else {
                "passages": size,
                "fingerprint": manifest.get("model", {}).get("fingerprint"),
                "retrievers": ["implicit", *sorted(engine.baselines)],
            },
            "queue_depth": engine.queue_depth,
        }

    @app.get("/metrics", dependencies=keyed)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = files("imprag.serve").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", served))

    return app


def plain_chat(turns: Sequence[dict[str, str]]) -> str:
    """A conversation as one prompt for a tokenizer without a chat template: a lone user message (after
    any system text) is its text, as a completion prompt would be; longer talks are `Role: text` lines
    ending with `Assistant:`."""
    system = [t["content"] for t in turns if t["role"] == "system"]
    talk = [t for t in turns if t["role"] != "system"]
    if len(talk) == 1 and talk[0]["role"] == "user":
        return "\n".join([*system, talk[0]["content"]])
    lines = [*system, *(f"{t['role'].capitalize()}: {t['content']}" for t in talk)]
    return "\n".join([*lines, "Assistant:"])


# -- responses ------------------------------------------------------------------------------------------


async def _collect(channel: Channel, count: int) -> list[Generation]:
    results: dict[int, Generation] = {}
    while len(results) < count:
        index, kind, *payload = await channel.events.get()
        if kind == "error":
            raise payload[0]
        if kind == "end":
            results[index] = payload[0]
    return [results[i] for i in range(count)]


async def _stream(
    channel: Channel,
    count: int,
    head: dict[str, Any],
    chat: bool,
    n_prompt: int,
    include_usage: bool,
    metrics: Metrics,
    started: float,
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per text delta, a last chunk per choice with its finish reason and
    search_results, the usage chunk if asked for, then `data: [DONE]`. Leaving early (the client went
    away) cancels the request's rows."""
    chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    ended, n_completion, first = 0, 0, True

    def event(choice: dict[str, Any], **extra: Any) -> str:
        return f"data: {json.dumps({**chunk_head, 'choices': [choice], **extra})}\n\n"

    def piece(index: int, text: str) -> dict[str, Any]:
        if chat:
            return {"index": index, "delta": {"content": text}, "finish_reason": None, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

    try:
        if chat:
            for i in range(count):
                yield event(
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                        "logprobs": None,
                    }
                )
        while ended < count:
            index, kind, *payload = await channel.events.get()
            if kind == "delta":
                if first:
                    metrics.first_token.observe(time.perf_counter() - started)
                    first = False
                yield event(piece(index, payload[0]))
            elif kind == "end":
                result: Generation = payload[0]
                ended += 1
                n_completion += len(result.token_ids)
                found = _search_results(result.passages)
                last = piece(index, "")
                if chat:
                    last["delta"] = {}
                last.update(finish_reason=FINISH[result.finish_reason], search_results=found)
                yield event(last, search_results=found)
            elif kind == "error":
                err = payload[0]
                status = 400 if isinstance(err, ImpragError) else 500
                message = str(err) if status == 400 else "internal error while generating; see the server log"
                yield f"data: {json.dumps(ApiError(status, message).body())}\n\n"
                break
        metrics.tokens.labels("completion").inc(n_completion)
        if include_usage:
            usage = {**chunk_head, "choices": [], "usage": _usage(n_prompt, n_completion)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        channel.cancelled.set()  # no-op once every row has ended


def _search_results(passages: Sequence[RetrievedPassage]) -> list[dict[str, Any]]:
    return [{"id": p.id, "title": p.title, "score": p.score, "text": p.text} for p in passages]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _validation_error(errors: Sequence[Any]) -> ApiError:
    """pydantic's first error as one sentence naming the field."""
    err = errors[0] if errors else {}
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = err.get("ctx", {}).get("error", "")
        return ApiError(400, f"the body is not valid JSON ({detail}); send a JSON object")
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _type_tag(str(x))]
    field = ".".join(loc) or None
    message = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
    if kind == "missing":
        message = f"{field} is required"
    elif kind == "extra_forbidden":
        message = f"unknown field {field!r}; remove it (see the OpenAI API reference for the fields)"
    elif kind == "model_attributes_type" or (kind.endswith("_type") and not loc):
        message = "the body must be a JSON object"
    elif field:
        message = f"{field}: {message}"
    return ApiError(400, message, field)


def _type_tag(part: str) -> bool:
    """pydantic's names of union members and validators in an error's location ('str', 'list[str]',
    'function-after[...]'), which are not fields."""
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


class _BodyTooLarge(StarletteHTTPException, ImpragError):
    """Raised while the body streams in; an HTTPException so that FastAPI's body parsing lets it through
    to the handler that renders it (any other exception there becomes a 400 'error parsing the body')."""


class _Limits:
    """ASGI middleware: refuses bodies over the cap (by Content-Length up front, or while chunks arrive)
    with 413, and counts every request and its latency for /metrics."""

    def __init__(self, app: Any, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.metrics.route(scope.get("path", ""))
        started, status = time.perf_counter(), [500]
        message = (
            f"the request body is over this server's cap of {self.max_body} bytes; send less (fewer or "
            "shorter prompts or passages)"
        )
        too_large = ApiError(413, message)

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers", [])).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await too_large.response()(scope, receive, sending)
                return
            received = 0

            async def receiving() -> dict[str, Any]:
                nonlocal received
                event = await receive()
                if event["type"] == "http.request":
                    received += len(event.get("body", b""))
                    if received > self.max_body:
                        raise _BodyTooLarge(413, too_large.message)
                return event

            try:
                await self.app(scope, receiving, sending)
            except _BodyTooLarge:  # read outside a route (no handler ran): answer here
                await too_large.response()(scope, receive, sending)
        finally:
            self.metrics.observe(route, status[0], time.perf_counter() - started)
