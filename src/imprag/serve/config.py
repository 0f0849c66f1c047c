"""The server's limits and batching settings."""

from __future__ import annotations

from dataclasses import dataclass

from imprag.config import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    max_tokens: int = 256
    """Cap on a request's `max_tokens`; larger values are refused (400), not cut."""
    default_max_tokens: int = 64
    """`max_tokens` when a request leaves it out."""
    max_k: int = 20
    """Cap on a request's `k` (passages read or retrieved); also never more than the index holds."""
    max_prompts: int = 8
    """Prompts (or embedding inputs) in one request."""
    max_body_bytes: int = 1_000_000
    """Requests with a larger body get 413 before it is parsed."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests to batch with the first one it takes."""
    max_batch: int = 8
    """Prompts decoded together in one batch at most."""
    api_key: str | None = None
    """When set, every /v1 route and /metrics need `Authorization: Bearer <api_key>`."""
    threads: int = 0
    """Intra-op threads of the model's worker thread (0: leave torch's setting). `imprag serve` sets it to
    the machine's count after loading the model with one thread: see `Engine`."""

    def __post_init__(self) -> None:
        for name in (
            "max_tokens",
            "default_max_tokens",
            "max_k",
            "max_prompts",
            "max_body_bytes",
            "max_batch",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be a positive integer, got {value!r}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError(
                f"ServeConfig.default_max_tokens={self.default_max_tokens} is above its cap "
                f"max_tokens={self.max_tokens}"
            )
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ConfigError(f"ServeConfig.threads must be an integer >= 0, got {self.threads!r}")
        if not self.batch_wait_ms >= 0:
            raise ConfigError(f"ServeConfig.batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("ServeConfig.api_key is empty; leave it unset to serve without a key")
