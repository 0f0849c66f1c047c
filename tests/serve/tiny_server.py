"""What the serve tests share: a tiny random llama, a 12-passage in-memory index over it, a BM25 baseline
over the same texts, and the app over them (limits small enough to hit)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from conftest import tiny_model

from imprag import ImpRAG, InMemoryRetriever, LayerSplit
from imprag.retrieval.baselines import BM25Retriever
from imprag.retrieval.corpus import Passage
from imprag.retrieval.store import PassageStore
from imprag.serve import ServeConfig, create_app

PASSAGES = [
    "The capital of Veloria is Quantum City.",
    "Paris is the capital of France.",
    "Mozart was a composer from Salzburg.",
    "The Nile flows into the Mediterranean Sea.",
    "Rome is the capital of Italy.",
    "Mount Everest is the highest mountain on Earth.",
    "The violin has four strings.",
    "Honey never spoils when sealed.",
    "Tokyo is the largest city of Japan.",
    "Light travels faster than sound.",
    "The Amazon is a river in South America.",
    "Chess is played on a board of 64 squares.",
]
PROMPT = "Q: What is the capital of Veloria?\nA:"
OTHER = "Q: Where does the Nile flow?\nA:"
NAME = "tiny-imprag"
LIMITS = {"max_tokens": 40, "default_max_tokens": 8, "max_k": 6, "max_body_bytes": 20_000}


def tiny_parts(tokenizer, directory: Path) -> tuple[ImpRAG, InMemoryRetriever, BM25Retriever]:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3))
    passages = [Passage(f"p{i}", f"T{i}", text) for i, text in enumerate(PASSAGES)]
    store = PassageStore.build(directory / "p.sqlite", passages)
    return model, InMemoryRetriever.build(model, PASSAGES), BM25Retriever.build(store, progress=False)


def make_app(model, index, bm25, **settings):
    return create_app(model, index, ServeConfig(**{**LIMITS, **settings}), {"bm25": bm25}, model_id=NAME)


@contextmanager
def live(app) -> Iterator[tuple[str, uvicorn.Server, threading.Thread]]:
    """Serve `app` on a free loopback port; yields (base URL, server, its thread); stops it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
