"""Typed configuration, one small dataclass per concern.

Dataclasses are the source of truth: they validate themselves when built and name the offending field in
every error. `to_dict`/`from_dict` round-trip them through JSON (unknown keys are errors), which is how
`imprag_config.json` is written next to a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from imprag.errors import ImpragError

__all__ = [
    "ConfigError",
    "DecodeConfig",
    "EmbeddingConfig",
    "ImpRAGConfig",
    "LayerSplit",
    "ReaderConfig",
    "differing_fields",
]

IMPRAG_CONFIG_NAME = "imprag_config.json"


class ConfigError(ImpragError, ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


@dataclass(frozen=True)
class LayerSplit:
    """Where an N-layer decoder is cut into bottom (retriever), middle (reader) and top groups.

    Layers 0..b run over the prompt only and yield the retrieval states at layer b; layers b..t also attend
    to the retrieved passages' key/values; layers t+1..N-1 see the prompt only. Layer b belongs to both
    the bottom and the middle group (method page, "Layer groups").
    """

    b: int
    """Retrieval layer: E_q / E_p are the query / key states of this layer's attention."""
    t: int
    """Last reading layer: passages are visible to the prompt in layers b..t inclusive."""

    def __post_init__(self) -> None:
        if not isinstance(self.b, int) or not isinstance(self.t, int):
            raise ConfigError(f"LayerSplit.b and .t must be integers, got b={self.b!r}, t={self.t!r}")
        if self.b < 0:
            raise ConfigError(f"LayerSplit.b must be >= 0, got b={self.b}")
        if self.t < self.b:
            raise ConfigError(f"LayerSplit.t must be >= b, got b={self.b}, t={self.t}")

    def validate_for(self, num_layers: int) -> LayerSplit:
        """Check the split against a model with `num_layers` decoder layers; return self."""
        if self.t >= num_layers:
            raise ConfigError(
                f"LayerSplit(b={self.b}, t={self.t}) does not fit a model with {num_layers} layers: "
                f"t must be <= {num_layers - 1} (layers are numbered 0..{num_layers - 1})"
            )
        return self

    @classmethod
    def default_for(cls, num_layers: int) -> LayerSplit:
        """The default split for an N-layer model: b ~ 25% and t ~ 70% of depth (method page, [D]).

        This gives b=7, t=19 for 28 layers (Llama-3.2-3B, exactly the paper's split), b=7, t=20 for 30
        layers (SmolLM2-135M) and b=8, t=21 for 32 layers (the paper used b=7, t=23 for Llama-3.1-8B).
        """
        if num_layers < 1:
            raise ConfigError(f"a model needs at least one layer, got num_layers={num_layers}")
        b = min(int(0.25 * num_layers), num_layers - 1)
        t = max(b, min(num_layers - 1, round(0.70 * num_layers) - 1))
        return cls(b=b, t=t)

    @property
    def middle(self) -> range:
        """The reading layers b..t."""
        return range(self.b, self.t + 1)


@dataclass(frozen=True)
class EmbeddingConfig:
    """How the retrieval vectors E_q (queries) and E_p (passages) are read off layer b."""

    rope: Literal["pre", "post"] = "pre"
    """'pre': states before rotary position encoding (position-free scores, our default); 'post': after it."""
    pooling: Literal["last", "mean"] = "last"
    """'last': the last non-pad token (the paper); 'mean': mean over all non-pad tokens."""
    query_pooling: Literal["last", "mean", "attention"] | None = None
    """E_q's pooling when it differs from E_p's (None: `pooling` for both). [D] 'last' with pooling 'mean'
    scores the prompt's last-token query (the paper's E_q, the same " A:" token in every template) against
    mean-pooled keys (which retrieve with the base weights, so frozen passages have a usable index).
    'attention' [D]: a learned weighted mean, E_q = sum_i a_i q_i with a = softmax over the prompt's tokens
    of v . x_i (x_i layer b's normalised input, v the model's `query_scorer`, one hidden-size vector that
    training learns; it starts at 0, where the weights are uniform and E_q is the mean's), so the query can
    weigh "Kenya" above the instruction words around it (model/query_pooling.py). E_p, and so every index,
    does not depend on it."""
    query_center: tuple[float, ...] | None = None
    """mu_q, subtracted from every E_q (None: the paper's plain score). Scoring (E_q - mu_q) . E_p removes
    the per-passage bias mu_q . E_p that sends every prompt to the same hub passage; it changes no E_p, so
    indexes stay valid. Estimated by `ImpRAG.calibrate` (training does it at every epoch end)."""
    retrieval_key: Literal["base", "trained"] = "base"
    """The key projection E_p is read through. 'base': layer b's own `k_proj` (the method). 'trained' [D]:
    a retrieval copy W_ret of it (D x hidden, starting at the base weights, so an untrained model scores as
    'base' does) that training learns while passages stay frozen: E_p = W_ret f_p, with f_p the mean over
    the passage's tokens of layer b's normalised attention input under the base weights (exact: the mean
    commutes with a linear map). An index then holds f_p (hidden-size vectors) and search maps the query
    instead, (E_q - mu_q) . W_ret f_p = (W_ret^T (E_q - mu_q)) . f_p, so one index of the base model serves
    every adapter, and whole-corpus negatives cost one (N x hidden) matmul a step. The attention of layers
    b..t still reads the base keys. Needs pooling 'mean', rope 'pre', passages 'frozen' and no k-norm."""

    @property
    def query_side_pooling(self) -> str:
        """The pooling E_q uses."""
        return self.query_pooling or self.pooling

    def passage_side(self) -> dict[str, Any]:
        """The settings E_p depends on (all but the query side's): what an index records and must match.
        `retrieval_key` appears only when 'trained' (the index then holds layer-b inputs), so indexes built
        before it existed keep their fingerprints."""
        side = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("query_center", "query_pooling")
        }
        if side["retrieval_key"] == "base":
            del side["retrieval_key"]
        return side

    def __post_init__(self) -> None:
        if self.query_center is not None:
            try:
                center = tuple(self.query_center)
            except TypeError:
                center = ()
            ok = all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in center
            )
            if not center or not ok:
                raise ConfigError("EmbeddingConfig.query_center must be a non-empty list of finite numbers")
            object.__setattr__(self, "query_center", tuple(float(x) for x in center))
        if self.rope not in ("pre", "post"):
            raise ConfigError(f"EmbeddingConfig.rope must be 'pre' or 'post', got {self.rope!r}")
        if self.pooling not in ("last", "mean"):
            raise ConfigError(f"EmbeddingConfig.pooling must be 'last' or 'mean', got {self.pooling!r}")
        if self.retrieval_key not in ("base", "trained"):
            raise ConfigError(
                f"EmbeddingConfig.retrieval_key must be 'base' or 'trained', got {self.retrieval_key!r}"
            )
        if self.retrieval_key == "trained" and (self.pooling, self.rope) != ("mean", "pre"):
            raise ConfigError(
                "EmbeddingConfig.retrieval_key='trained' needs pooling='mean' and rope='pre' (E_p must be a "
                f"linear map of the mean input), got pooling={self.pooling!r}, rope={self.rope!r}"
            )
        if self.query_pooling not in (None, "last", "mean", "attention"):
            raise ConfigError(
                "EmbeddingConfig.query_pooling must be null, 'last', 'mean' or 'attention', got "
                f"{self.query_pooling!r}"
            )


@dataclass(frozen=True)
class ReaderConfig:
    """How retrieved passages are laid out for the middle layers."""

    k: int = 5
    """Passages read per prompt when retrieving (the paper reads 10)."""
    l_max: int = 128
    """Maximum tokens per passage (~100 words, the paper's passage size); longer passages are truncated.
    The prompt starts at position k*l_max."""
    layout: Literal["start", "flush"] = "start"
    """Where the P passage tokens sit below the prompt's start k*l_max: 'start' at [0, P) (the paper),
    leaving a gap of k*l_max - P positions; 'flush' at [k*l_max - P, k*l_max), no gap (model/reader.py)."""

    def __post_init__(self) -> None:
        _check_ints(self, "ReaderConfig", ("k", "l_max"))
        if self.k < 1:
            raise ConfigError(f"ReaderConfig.k must be >= 1, got {self.k}")
        if self.l_max < 1:
            raise ConfigError(f"ReaderConfig.l_max must be >= 1, got {self.l_max}")
        if self.layout not in ("start", "flush"):
            raise ConfigError(f"ReaderConfig.layout must be 'start' or 'flush', got {self.layout!r}")

    def prompt_start(self, n: int) -> int:
        """Position of a prompt's first token when it reads `n` passages: n * l_max (the passages sit
        below it). The one place this offset is computed."""
        return n * self.l_max


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings for `ImpRAG.generate`."""

    max_new_tokens: int = 32
    """Upper bound on generated tokens per prompt."""
    do_sample: bool = False
    """Greedy decoding when False; sampling with temperature/top_k/top_p when True."""
    temperature: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    top_p: float = 1.0
    """1.0 disables nucleus filtering."""
    stop: tuple[str, ...] = ()
    """Generation stops at the first occurrence of any of these strings (which are cut from the text),
    searched after the answer's leading whitespace: a stop "\n" ends a one-line answer, and an answer
    that starts with a newline is not cut to nothing."""
    seed: int | None = None
    """Seed for sampling; None uses torch's global generator."""
    ignore_eos: bool = False
    """Keep generating past EOS until max_new_tokens or a stop string (benchmarks, tests)."""

    def __post_init__(self) -> None:
        _check_ints(self, "DecodeConfig", ("max_new_tokens", "top_k"))
        if self.max_new_tokens < 1:
            raise ConfigError(f"DecodeConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"DecodeConfig.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"DecodeConfig.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ConfigError("DecodeConfig.stop must not contain empty strings")


@dataclass(frozen=True)
class IndexConfig:
    """How a passage index is built and searched."""

    factory: str = "Flat"
    """FAISS index factory string over inner product: 'Flat' (exact), 'IVF1024,PQ32', 'HNSW32', ..."""
    train_size: int = 100_000
    """At most this many vectors (spread over the corpus) train indexes that need training (IVF, PQ)."""
    nprobe: int = 16
    """IVF lists probed per query (ignored by other index types)."""
    ef_search: int = 64
    """HNSW search breadth (ignored by other index types)."""
    ef_construction: int = 40
    """HNSW build breadth (FAISS's default 40; ignored by other index types): how many candidates each new
    vector's links are chosen from. Under inner product, more is worse on E_p: above 2*M candidates FAISS
    prunes them with a heuristic (written for metrics), and the graph keeps 12-18 links a vector instead
    of 41 (efConstruction 80 against 40 at 1M: recall@10 0.915 against 0.959 at efSearch 1024; README
    "Approximate search that keeps its recall")."""
    center: bool | Literal["auto"] = "auto"
    """Store every E_p minus the mean E_p (of the training sample) and add E_q . mean back to the scores:
    each query's scores then change by a constant, so no ranking and no reported score changes, but the
    vectors FAISS organises no longer share one large direction (E_p's mean is ~5x its spread). That is
    what HNSW's graph and IVF's clusters need under inner product: on the committed adapter's real
    queries HNSW32 finds 0.39 of the exact top-10 uncentred (efSearch 128) and 0.99 centred (efSearch 64)
    (README "Approximate search that keeps its recall"). "auto": on for every factory but Flat (exact
    either way)."""
    rerank: int = 4
    """With a factory ending in ',Refine(...)' (say 'IVF4096,PQ48,Refine(SQ8)'): the compressed index
    proposes k * rerank candidates and the refine codes re-score them (FAISS `k_factor_rf`); ignored
    otherwise. README "Approximate search that keeps its recall" measures the trade."""
    mmap: bool = False
    """Searches read every array FAISS can memory-map from `vectors.faiss` instead of loading it into RAM
    (FAISS `IO_FLAG_MMAP_IFC`): flat codes (a Flat index's vectors, an HNSW's storage, a ',Refine(Flat)'
    factory's exact vectors), an HNSW's links and an IVF's lists, except a fast-scan IVF's ('...x4fs'),
    which stay in RAM with imprag's ID map. With 'IVF4096,PQ96x4fs,Refine(Flat)' that left 79 bytes of RAM
    a passage at 1M while the exact re-scoring reads k * rerank rows from the file (the OS page cache
    keeps the rows searches touch; a cold disk is far slower: README "Approximate search that keeps its
    recall" measures both). `imprag update` loads the whole index to change it."""
    batch_size: int = 32
    """Passages per forward pass while encoding (batches are sorted by length)."""
    shard_size: int = 2048
    """Passages per shard file; a resumed build skips finished shards."""

    def __post_init__(self) -> None:
        names = ("train_size", "nprobe", "ef_search", "ef_construction", "rerank", "batch_size", "shard_size")
        _check_ints(self, "IndexConfig", names)
        if not isinstance(self.mmap, bool):
            raise ConfigError(f"IndexConfig.mmap must be true or false, got {self.mmap!r}")
        if self.center not in (True, False, "auto"):
            raise ConfigError(f'IndexConfig.center must be true, false or "auto", got {self.center!r}')
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.factory or self.factory.startswith("IDMap"):
            raise ConfigError(
                f"IndexConfig.factory must be a FAISS factory string such as 'Flat', 'IVF1024,PQ32' or "
                f"'HNSW32' (ids are mapped by imprag, do not add IDMap), got {self.factory!r}"
            )


@dataclass(frozen=True)
class ImpRAGConfig:
    """Everything that turns a stock decoder into an ImpRAG model; saved as `imprag_config.json`."""

    split: LayerSplit
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    passages: Literal["shared", "frozen"] = "shared"
    """Which weights encode passages. 'shared' (the paper): the model's own, adapter included, so every
    training step changes E_p and the K/V the middle layers read, and an index must be re-encoded after
    training. 'frozen': the base weights, with a LoRA adapter switched off for every passage pass (E_p
    and the passages' K/V in layers b..t); the adapter acts on the prompt's pass only. Then one index of
    the base model serves every adapter trained on it (`retrieval_fingerprint` is the base's)."""

    def __post_init__(self) -> None:
        if self.passages not in ("shared", "frozen"):
            raise ConfigError(f"ImpRAGConfig.passages must be 'shared' or 'frozen', got {self.passages!r}")
        if self.embedding.retrieval_key == "trained" and self.passages != "frozen":
            raise ConfigError(
                "EmbeddingConfig.retrieval_key='trained' needs passages='frozen' (the index holds the base "
                f"model's layer-b inputs), got passages={self.passages!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImpRAGConfig:
        _check_keys(cls, data, "ImpRAGConfig")
        if "split" not in data:
            raise ConfigError('ImpRAGConfig needs a "split" with "b" and "t"')
        return cls(
            split=_build(LayerSplit, data["split"], "split"),
            embedding=_build(EmbeddingConfig, data.get("embedding", {}), "embedding"),
            reader=_build(ReaderConfig, data.get("reader", {}), "reader"),
            passages=data.get("passages", "shared"),
        )

    def save(self, directory: str | Path) -> Path:
        """Write `imprag_config.json` into `directory` atomically."""
        from imprag.io import atomic_write_text

        path = Path(directory) / IMPRAG_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ImpRAGConfig | None:
        """Read `imprag_config.json` from `directory`, or None when there is none."""
        path = Path(directory) / IMPRAG_CONFIG_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); delete it or rewrite it") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


T = TypeVar("T")


def differing_fields(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, value in a, value in b) of every field that differs between two nested settings dicts,
    e.g. [("model.dtype", "float32", "bfloat16")]: what a refused resume names."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += differing_fields(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append((f"{prefix}{key}", x, y))
    return out


def _check_ints(obj: object, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known keys are {sorted(known)}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    _check_keys(cls, data, where)
    values = dict(data)
    if cls is DecodeConfig and "stop" in values:
        values["stop"] = tuple(values["stop"])
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
