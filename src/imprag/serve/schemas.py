"""Request bodies, in OpenAI's field names and shapes where OpenAI defines them (pydantic validates them;
the app turns every validation error into a 400 in OpenAI's error shape).

Fields OpenAI has that this server cannot honour are accepted only at their neutral value (`n=1`,
`echo=false`, `logprobs` unset, penalties 0, ...) so that clients which always send them still work, and
are refused with a message at any other value. Unknown fields are refused (a misspelt `max_token` would
otherwise be ignored silently). Our own fields: `k` (passages to read: retrieved by the model's implicit
query, or 0 for closed book) and `passages` (read these instead of retrieving).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}),
}


def _texts(value: str | list[str], field: str) -> list[str]:
    """One string or a non-empty list of them, none empty."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ValueError(f"{field} is an empty list; give at least one")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{field} {i} is empty; give it some text")
    return texts


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    @model_validator(mode="before")
    @classmethod
    def _neutral_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, allowed in _NEUTRAL.items():
                if name in data and name in cls.model_fields and data[name] not in allowed:
                    raise ValueError(
                        f"{name}={data[name]!r} is not supported by this server; leave it out (or set "
                        f"{allowed[-1]!r})"
                    )
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Generate(_Body):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    """0 or absent: greedy (the deterministic answer); > 0 samples at that temperature."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    k: int | None = Field(default=None, ge=0)
    passages: list[str] | None = None
    # accepted at their neutral values only (see _NEUTRAL)
    n: int | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("passages")
    @classmethod
    def _passages(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not p.strip() for p in value)):
            raise ValueError(
                "passages must be a non-empty list of non-empty strings (leave it out to retrieve)"
            )
        return value

    @model_validator(mode="after")
    def _k_or_passages(self) -> _Generate:
        if self.passages is not None and self.k is not None:
            raise ValueError("give k (passages to retrieve) or passages (read these), not both")
        return self


class CompletionRequest(_Generate):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> list[str]:
        return _texts(value, "prompt")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Generate):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_max(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ; give one of them")
            self.max_tokens = self.max_completion_tokens
        if not any(m.text().strip() for m in self.messages):
            raise ValueError("every message is empty; give the conversation some text")
        return self


class EmbeddingRequest(_Body):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "query"
    """query: E_q of the text as a prompt, mapped into the index's space; passage: the vector an index
    holds for the text. Their dot product is the retrieval score."""
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str]) -> list[str]:
        return _texts(value, "input")


class RetrieveRequest(_Body):
    input: str | list[str]
    """Prompts: the implicit retriever reads each as the model would before answering it."""
    k: int = Field(default=5, ge=1)
    retriever: Literal["implicit", "bm25", "minilm"] = "implicit"
    model: str | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str]) -> list[str]:
        return _texts(value, "input")
