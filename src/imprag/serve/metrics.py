"""The server's Prometheus metrics, in a registry of their own (two apps in one process do not clash)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ROUTES = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/retrieve",
    "/v1/models",
    "/health",
    "/metrics",
    "/",
)
"""Paths counted under their own label; any other path counts as "other" (a fuzzer cannot grow the
label set)."""


class Metrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imprag_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "imprag_request_seconds",
            "Time from request to the end of the response, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.first_token = Histogram(
            "imprag_time_to_first_token_seconds",
            "Streaming: time from request to the first text sent",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tokens = Counter("imprag_tokens", "Prompt and completion tokens", ["kind"], registry=r)
        self.batch_size = Histogram(
            "imprag_batch_size",
            "Prompts decoded together in one generate call",
            buckets=tuple(range(1, max_batch + 1)),
            registry=r,
        )
        self.queue = Gauge("imprag_queue_depth", "Jobs waiting for the model's thread", registry=r)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue.set_function(depth)

    def route(self, path: str) -> str:
        return path if path in ROUTES else "other"

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
