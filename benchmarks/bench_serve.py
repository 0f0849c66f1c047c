"""`imprag serve` under load, on loopback: what dynamic batching buys, what HTTP costs, and a fuzz/soak run.

The server runs as users run it (`imprag serve INDEX`, a process of its own); the clients are asyncio tasks
of this process (httpx, streaming, `stream_options.include_usage` for exact token counts). Every number is
a ratio against a reference measured in the same run, with medians:

1. Throughput: R requests (real questions in the QA template, k=5 passages retrieved, at most 32 new tokens,
   greedy) sent by 1, 4 and 8 concurrent clients, each client sending its next request when the last has
   ended. Completion tokens per second; time to first token (TTFT) and per-token latency ((end - first
   text) / (tokens - 1)) at p50 and p99. The 1-client row is "the same requests sent one at a time". The
   8-client row is run twice: with batching (--max-batch 8) and without (--max-batch 1, the same server
   taking one request at a time), so the ratio shows what batching itself adds beside concurrency.
2. HTTP overhead: one client's end-to-end latency of a non-streamed request / the same `generate` call in
   process (this process's own copy of the model, the server idle meanwhile).
3. Fuzz/soak: N requests, most malformed or hostile (broken and deeply nested JSON, wrong types, huge and
   negative numbers, unknown fields, over-long prompts, bodies over the cap, wrong methods and routes, bad
   keys, binary junk), every fifth one valid; each must get a 4xx in OpenAI's error shape, or a 200 with an
   answer for the valid ones; never a 5xx or a dropped connection. The server's RSS at the start, after
   the first half (the same mix: allocator pools have grown by then) and at the end.

Run:  .venv/bin/python benchmarks/bench_serve.py --index INDEX [--model M] [--requests 16] [--fuzz 600]
      (INDEX: an index built by `imprag index`; M: a model for it, default the one that built it. Writes
      benchmarks/results/bench_serve.json; about 10 minutes with the embedded SmolLM2-135M.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

RESULTS = Path(__file__).parent / "results" / "bench_serve.json"
QUESTIONS = [
    "Who painted the Mona Lisa?",
    "What is the capital of Kenya?",
    "Who wrote the novel Pride and Prejudice?",
    "In which country is the Nile's mouth?",
    "Who developed the theory of general relativity?",
    "What is the largest planet in the Solar System?",
    "Who composed The Magic Flute?",
    "Which city hosted the 2012 Summer Olympics?",
    "What is the chemical symbol of gold?",
    "Who was the first President of the United States?",
    "Which ocean lies between Africa and Australia?",
    "Who discovered penicillin?",
    "What language is spoken in Brazil?",
    "Who directed the film Jaws?",
    "What is the tallest mountain in Africa?",
    "Which river flows through Baghdad?",
]
KEY = "bench-key"


# -- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`imprag serve` in a process of its own, stopped with SIGTERM."""

    def __init__(self, index: str, model: str | None, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "imprag.cli",
            "serve",
            index,
            "--port",
            str(self.port),
            "--api-key",
            KEY,
        ]
        argv += ["--model", model] if model else []
        self.proc = subprocess.Popen(
            [*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"imprag serve exited:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("imprag serve did not answer /health within 300 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


# -- load ----------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one(client: httpx.AsyncClient, prompt: str, k: int, tokens: int) -> dict[str, float]:
    body = {
        "prompt": prompt,
        "k": k,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = end = None
    count = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {
        "ttft": first - start,
        "total": end - start,
        "tokens": count,
        "per_token": (end - first) / (count - 1) if count > 1 else float("nan"),
    }


async def load(url: str, prompts: list[str], clients: int, k: int, tokens: int) -> dict[str, Any]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    records: list[dict[str, float]] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:

        async def worker() -> None:
            while not queue.empty():
                records.append(await one(client, queue.get_nowait(), k, tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    total = sum(r["tokens"] for r in records)
    per_token = [r["per_token"] for r in records if r["per_token"] == r["per_token"]]
    return {
        "clients": clients,
        "requests": len(records),
        "completion_tokens": total,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(total / wall, 2),
        "ttft_p50_s": round(percentile([r["ttft"] for r in records], 0.5), 4),
        "ttft_p99_s": round(percentile([r["ttft"] for r in records], 0.99), 4),
        "per_token_p50_s": round(percentile(per_token, 0.5), 4) if per_token else None,
        "per_token_p99_s": round(percentile(per_token, 0.99), 4) if per_token else None,
    }


# -- HTTP overhead -------------------------------------------------------------------------------------


def overhead(
    url: str, index: str, model_name: str | None, k: int, tokens: int, repeats: int
) -> dict[str, Any]:
    from imprag.cli._common import open_index

    args = argparse.Namespace(model=model_name, b=None, t=None, dtype="auto")
    model, idx = open_index(index, args)
    prompt = f"Q: {QUESTIONS[0]}\nA:"
    body = {"prompt": prompt, "k": k, "max_tokens": tokens}
    headers = {"Authorization": f"Bearer {KEY}"}

    def http() -> dict[str, Any]:
        return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=600).json()

    def local() -> Any:
        return model.generate([prompt], index=idx, k=k, max_new_tokens=tokens)[0]

    remote_text, local_text = http()["choices"][0]["text"], local().text  # warm both
    times: dict[str, list[float]] = {"http": [], "in_process": []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, fn in (("http", http), ("in_process", local)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    http_s, local_s = statistics.median(times["http"]), statistics.median(times["in_process"])
    return {
        "http_s": round(http_s, 4),
        "in_process_s": round(local_s, 4),
        "ratio": round(http_s / local_s, 3),
        "same_answer": remote_text == local_text,
        "repeats": repeats,
    }


# -- fuzz / soak ---------------------------------------------------------------------------------------


def hostile(rng: random.Random, valid_prompt: str) -> tuple[str, str, bytes, dict[str, str], bool]:
    """(method, path, body, headers, is_valid) of one request; every fifth is valid."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if rng.random() < 0.2:
        return (
            "POST",
            "/v1/completions",
            json.dumps({"prompt": valid_prompt, "max_tokens": 4}).encode(),
            auth,
            True,
        )
    junk_text = "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 60)))
    cases = [
        lambda: ("POST", "/v1/completions", b'{"prompt": "Q: hi', auth),
        lambda: (
            "POST",
            "/v1/completions",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))),
            auth,
        ),
        lambda: ("POST", "/v1/completions", b"[" * 5000 + b"]" * 5000, auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": 12}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": ""}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 10**12}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": -5}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "k": 10**6}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "temperature": "hot"}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "n": 4}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "bogus": junk_text}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "word " * 9000}).encode(), auth),  # > 8,192
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x" * 1_200_000}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": ["x"] * 50}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "stop": [""]}).encode(), auth),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x", "passages": [None]}).encode(), auth),
        lambda: ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "x"}]}).encode(), auth),
        lambda: ("POST", "/v1/chat/completions", json.dumps({"messages": "hello"}).encode(), auth),
        lambda: ("POST", "/v1/embeddings", json.dumps({"input": [junk_text] * 40}).encode(), auth),
        lambda: (
            "POST",
            "/v1/embeddings",
            json.dumps({"input": "x", "encoding_format": "hex"}).encode(),
            auth,
        ),
        lambda: ("POST", "/v1/retrieve", json.dumps({"input": "x", "k": 0}).encode(), auth),
        lambda: ("POST", "/v1/retrieve", json.dumps({"input": "x", "retriever": "../../etc"}).encode(), auth),
        lambda: ("GET", "/v1/completions", b"", auth),
        lambda: ("DELETE", "/v1/models", b"", auth),
        lambda: ("GET", "/v1/" + junk_text.encode("utf-8", "ignore").hex()[:200], b"", auth),
        lambda: (
            "POST",
            "/v1/completions",
            json.dumps({"prompt": "x"}).encode(),
            {"Authorization": "Bearer no"},
        ),
        lambda: ("POST", "/v1/completions", json.dumps({"prompt": "x"}).encode(), {}),
        lambda: (
            "POST",
            "/v1/completions",
            json.dumps({"prompt": "x"}).encode(),
            {**auth, "Authorization": "Bearer " + "k" * 8000},
        ),
        lambda: (
            "POST",
            "/v1/completions",
            json.dumps({"prompt": "x"}).encode(),
            {**auth, "Content-Type": "text/plain"},
        ),
    ]
    method, path, body, headers = rng.choice(cases)()
    return method, path, body, headers, False


def fuzz(server: Server, count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    prompt = f"Q: {QUESTIONS[1]}\nA:"
    statuses: dict[str, int] = {}
    failures: list[str] = []
    rss = [server.rss_mb()]
    start = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for i in range(count):
            if i == count // 2:
                rss.append(server.rss_mb())  # after a first half of the same mix: growth past here is a leak
            method, path, body, headers, valid = hostile(rng, prompt)
            try:
                r = client.request(method, path, content=body, headers=headers)
            except httpx.HTTPError as err:
                failures.append(f"#{i} {method} {path[:40]}: {type(err).__name__}")
                continue
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if valid:
                ok = r.status_code == 200 and isinstance(r.json()["choices"][0]["text"], str)
            else:
                try:
                    shaped = isinstance(r.json()["error"]["message"], str)
                except (ValueError, KeyError, TypeError):
                    shaped = False
                ok = 400 <= r.status_code < 500 and shaped
            if not ok:
                failures.append(
                    f"#{i} {method} {path[:40]} body {body[:60]!r}: {r.status_code} {r.text[:120]}"
                )
    alive = httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    return {
        "requests": count,
        "seconds": round(time.perf_counter() - start, 1),
        "statuses": dict(sorted(statuses.items())),
        "failures": len(failures),
        "failure_examples": failures[:10],
        "server_alive_after": alive,
        "rss_mb_start": round(rss[0], 1),
        "rss_mb_half": round(rss[1], 1),
        "rss_mb_end": round(server.rss_mb(), 1),
    }


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="index directory built by `imprag index`")
    parser.add_argument("--model", default=None, help="model for the index (default: the one that built it)")
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per load row (default %(default)s)"
    )
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request (default %(default)s)")
    parser.add_argument(
        "-k", type=int, default=5, help="passages retrieved per request (default %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="HTTP overhead repeats (default %(default)s)")
    parser.add_argument("--fuzz", type=int, default=600, help="fuzz/soak requests (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()

    from imprag.hardware import describe_machine, summary_line
    from imprag.io import atomic_write_text

    machine = describe_machine()
    print(summary_line(machine))
    prompts = [f"Q: {QUESTIONS[i % len(QUESTIONS)]}\nA:" for i in range(args.requests)]
    rows: list[dict[str, Any]] = []
    server = Server(args.index, args.model, "--max-batch", "8")
    try:
        asyncio.run(load(server.url, prompts[:2], 2, args.k, args.tokens))  # warm up
        for clients in (1, 4, 8):
            row = asyncio.run(load(server.url, prompts, clients, args.k, args.tokens))
            rows.append({"batching": True, **row})
            print(row)
        http = overhead(server.url, args.index, args.model, args.k, args.tokens, args.repeats)
        print("http overhead", http)
        soak = fuzz(server, args.fuzz, seed=0)
        print("fuzz", {k: v for k, v in soak.items() if k != "failure_examples"})
    finally:
        exit_code = server.stop()
    unbatched = Server(args.index, args.model, "--max-batch", "1")
    try:
        asyncio.run(load(unbatched.url, prompts[:2], 2, args.k, args.tokens))
        row = asyncio.run(load(unbatched.url, prompts, 8, args.k, args.tokens))
        rows.append({"batching": False, **row})
        print(row)
    finally:
        unbatched.stop()

    one_at_a_time = rows[0]["tokens_per_s"]
    by = {(r["batching"], r["clients"]): r for r in rows}
    result = {
        "machine": machine,
        "settings": {
            "requests": args.requests,
            "max_tokens": args.tokens,
            "k": args.k,
            "index": args.index,
            "model": args.model,
        },
        "load": rows,
        "batched_8_vs_one_at_a_time": round(by[(True, 8)]["tokens_per_s"] / one_at_a_time, 2),
        "unbatched_8_vs_one_at_a_time": round(by[(False, 8)]["tokens_per_s"] / one_at_a_time, 2),
        "http_overhead": http,
        "fuzz": soak,
        "sigterm_exit_code": exit_code,
    }
    print(
        f"\n{'batching':>8} {'clients':>7} {'tok/s':>7} {'x 1-at-a-time':>13} {'TTFT p50':>9} {'p99':>7} "
        f"{'tok p50':>8} {'p99':>7}"
    )
    for r in rows:
        print(
            f"{'yes' if r['batching'] else 'no':>8} {r['clients']:>7} {r['tokens_per_s']:>7.1f} "
            f"{r['tokens_per_s'] / one_at_a_time:>13.2f} {r['ttft_p50_s']:>9.3f} {r['ttft_p99_s']:>7.3f} "
            f"{r['per_token_p50_s'] or 0:>8.4f} {r['per_token_p99_s'] or 0:>7.4f}"
        )
    print(
        f"HTTP / in-process latency: {http['ratio']:.3f} "
        f"({http['http_s']:.3f} s vs {http['in_process_s']:.3f} s)"
    )
    print(
        f"fuzz: {soak['requests']} requests, statuses {soak['statuses']}, {soak['failures']} failures, "
        f"alive {soak['server_alive_after']}, RSS {soak['rss_mb_start']} -> {soak['rss_mb_half']} (half) -> "
        f"{soak['rss_mb_end']} MB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
