"""`imprag serve` as a user runs it: a saved tiny model, an index built by `imprag index`, the server in a
process of its own; SIGTERM lets the request in flight finish and the process exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import tiny_model

from imprag import ImpRAG, LayerSplit
from imprag.cli import build_parser, main

ROWS = [
    {"id": "veloria", "title": "Veloria", "text": "The capital of Veloria is Quantum City."},
    {"id": "france", "title": "France", "text": "Paris is the capital of France."},
    {"id": "nile", "title": "Nile", "text": "The Nile flows into the Mediterranean Sea."},
    {"id": "mozart", "title": "Mozart", "text": "Mozart was a composer from Salzburg."},
]


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imprag serve" in out and "--api-key" in out and "--batch-wait-ms" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "/no/such/index"], "is not an index directory"),
        (["serve", ".", "--max-tokens", "0"], "max_tokens must be a positive integer"),
        (["serve", ".", "--batch-wait-ms", "-1"], "batch_wait_ms must be >= 0"),
    ],
)
def test_errors_are_one_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_then_stops_cleanly_on_sigterm(tmp_path, tokenizer) -> None:
    model = tmp_path / "model"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    index = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                str(corpus),
                "--out",
                str(index),
                "--model",
                str(model),
                "--baselines",
                "bm25",
                "--no-progress",
            ]
        )
        == 0
    )
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "IMPRAG_API_KEY": "k1",
        "OMP_NUM_THREADS": "1",
    }  # tiny model: 1 thread
    proc = subprocess.Popen(
        [sys.executable, "-m", "imprag.cli", "serve", str(index), "--port", str(port), "--max-tokens", "400"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k1"}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        health = httpx.get(f"{url}/health").json()
        assert health["index"]["passages"] == 4 and health["index"]["retrievers"] == ["implicit", "bm25"]
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k1"}).json()
        assert [m["id"] for m in models["data"]] == ["model"]  # the model folder's name
        assert httpx.post(f"{url}/v1/retrieve", json={"input": "x"}).status_code == 401  # the env's key
        hits = httpx.post(
            f"{url}/v1/retrieve",
            headers=auth,
            json={"input": "capital of Veloria", "k": 1, "retriever": "bm25"},
        ).json()
        assert hits["data"][0]["search_results"][0]["id"] == "veloria"
        answers: list[httpx.Response] = []
        body = {"prompt": "Q: Where does the Nile flow?\nA:", "k": 2, "max_tokens": 400}
        asking = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/v1/completions", headers=auth, json=body, timeout=60)
            )
        )
        asking.start()
        time.sleep(0.5)
        assert asking.is_alive(), "the request ended before SIGTERM: make it longer"
        proc.send_signal(signal.SIGTERM)
        asking.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert answers and answers[0].status_code == 200, log
    answer = answers[0].json()
    assert answer["usage"]["completion_tokens"] > 0 and len(answer["search_results"]) == 2
    assert "serving" in log and "Traceback" not in log
