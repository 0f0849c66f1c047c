"""The systems the benchmark compares, behind one interface: `answer(prompts, queries, decode, demos)`.

| name | retrieval | reading |
|---|---|---|
| closed-book | none | the prompt alone |
| bm25, minilm | BM25 / all-MiniLM-L6-v2 with the whole prompt | passages pasted before the prompt |
| minilm-oracle | MiniLM with the item's hand-built ideal query | passages pasted before the prompt |
| imprag-zero-shot | the model's own layer-b query state (implicit) | middle layers b..t (ImpRAG) |
| imprag-warmup, imprag | as above, after training (stage 1 only / both stages) | middle layers b..t |
| imprag-frozen-warmup, imprag-frozen | as above, trained with frozen passages (the base index) | b..t |
| ra-it | MiniLM with the whole prompt (as minilm), the LM fine-tuned with passages pasted | pasted |
| ra-dit-llama | a separately trained copy of layers 0..b, queried with the prompt | pasted (ra-it LM) |

Every system generates with the same model and greedy decoding, so differences come from what is read.
Trained systems are the same classes over a trained model (`imprag eval --model runs/X/model`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imprag.config import DecodeConfig
from imprag.model.generation import RetrievedPassage
from imprag.model.imprag import ImpRAG
from imprag.retrieval.memory import Retriever, TextRetriever

__all__ = [
    "SYSTEMS",
    "ClosedBook",
    "ImplicitRetrieval",
    "ImplicitTextRetriever",
    "Prediction",
    "RetrieveThenRead",
    "System",
    "paste_passages",
    "separate_retriever",
]


@dataclass
class Prediction:
    text: str
    passages: list[RetrievedPassage] = field(default_factory=list)
    """What was read, best first (empty for closed-book)."""


class System(Protocol):
    name: str
    retrieves: bool

    def answer(
        self, prompts: Sequence[str], queries: Sequence[str], decode: DecodeConfig, demos: str = ""
    ) -> list[Prediction]:
        """Answer each prompt; `queries[i]` is the item's hand-built ideal query (used by oracle systems);
        `demos` are solved examples placed before each prompt (few-shot; text retrievers never see them)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings recorded next to the numbers."""
        ...


def paste_passages(prompt: str, passages: Sequence[RetrievedPassage], demos: str = "") -> str:
    """Retrieve-then-read input: the demonstrations, each passage (title line, text) as a paragraph, then
    the prompt (so the passages sit right before the question they were retrieved for)."""
    return demos + "".join(f"{p.content}\n\n" for p in passages) + prompt


class ClosedBook:
    retrieves = False

    def __init__(self, model: ImpRAG, name: str = "closed-book") -> None:
        self.model, self.name = model, name

    def answer(
        self, prompts: Sequence[str], queries: Sequence[str], decode: DecodeConfig, demos: str = ""
    ) -> list[Prediction]:
        generations = self.model.generate([demos + p for p in prompts], decode_config=decode)
        return [Prediction(g.text) for g in generations]

    def describe(self) -> dict[str, Any]:
        return {"system": self.name, "reads": "nothing"}


class RetrieveThenRead:
    """A text retriever fetches k passages for a text query; the model reads them pasted in its prompt."""

    retrieves = True

    def __init__(
        self,
        model: ImpRAG,
        retriever: TextRetriever,
        name: str,
        k: int = 5,
        oracle_query: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        """`details`: what else identifies the retriever in the run record (a resumed evaluation with
        another retriever is refused)."""
        self.model, self.retriever, self.name, self.k = model, retriever, name, k
        self.oracle_query, self.details = oracle_query, dict(details or {})

    def answer(
        self, prompts: Sequence[str], queries: Sequence[str], decode: DecodeConfig, demos: str = ""
    ) -> list[Prediction]:
        found = self.retriever.retrieve(list(queries if self.oracle_query else prompts), self.k)
        pasted = [paste_passages(p, read, demos) for p, read in zip(prompts, found, strict=True)]
        generations = self.model.generate(pasted, decode_config=decode)
        return [Prediction(g.text, read) for g, read in zip(generations, found, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "system": self.name,
            "retriever": type(self.retriever).__name__,
            "query": "oracle" if self.oracle_query else "prompt",
            "k": self.k,
            "reads": "passages pasted before the prompt",
            **self.details,
        }


class ImplicitRetrieval:
    """ImpRAG: the prompt's layer-b query state searches the index; layers b..t read the passages."""

    retrieves = True

    def __init__(self, model: ImpRAG, index: Retriever, name: str = "imprag-zero-shot", k: int = 5) -> None:
        self.model, self.index, self.name, self.k = model, index, name, k

    def answer(
        self, prompts: Sequence[str], queries: Sequence[str], decode: DecodeConfig, demos: str = ""
    ) -> list[Prediction]:
        # The implicit query is the last prompt token's state, so with demonstrations it attends to them too.
        full = [demos + p for p in prompts]
        generations = self.model.generate(full, index=self.index, k=self.k, decode_config=decode)
        return [Prediction(g.text, g.passages) for g in generations]

    def describe(self) -> dict[str, Any]:
        split = self.model.split
        return {"system": self.name, "query": "implicit (layer b)", "k": self.k, "b": split.b, "t": split.t}


class ImplicitTextRetriever:
    """Another ImpRAG model's layer-b query state as a text retriever (`TextRetriever`): the prompt is the
    explicit query of a separate retriever model, whose passages are pasted for the generator."""

    def __init__(self, model: ImpRAG, index: Retriever) -> None:
        self.model, self.index = model, index

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        return self.model.retrieve(list(queries), self.index, k)


# name -> factory(model, index directory, k); the index directory holds the implicit index and the
# baselines (`imprag index ... --baselines bm25,minilm`).
Factory = Callable[[ImpRAG, Path, int], System]


def trained_as(source: str | Path) -> str | None:
    """The `objective.system` a model directory was trained with (its `train_config.json`), or None."""
    config = Path(source) / "train_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("objective", {}).get("system", "imprag")


def _require_trained(model: ImpRAG, name: str, system: str, untrained: str = "") -> None:
    """A trained system's name must not report another model: refuse one not trained as `system`."""
    from imprag.model.reader import InputError

    found = trained_as(model.source)
    if found != system:
        what = "has no train_config.json" if found is None else f"was trained as {found!r}"
        instead = f", or evaluate this model as {untrained}" if untrained else ""
        raise InputError(
            f"--system {name} reports a model trained with `imprag train ... objective.system={system}`, "
            f"but --model {model.source!r} {what}; pass --model RUN/model of such a run{instead}"
        )


def _text(kind: str, name: str, oracle: bool = False, trained: str | None = None) -> Factory:
    def make(model: ImpRAG, index_dir: Path, k: int) -> System:
        from imprag.retrieval.baselines import baseline_dir, load_baseline
        from imprag.retrieval.index import PassageIndex

        if trained:
            _require_trained(model, name, trained, untrained=kind)
        store = PassageIndex.load(index_dir).store
        return RetrieveThenRead(
            model, load_baseline(kind, baseline_dir(index_dir, kind), store), name, k, oracle
        )

    return make


def _implicit(name: str, trained: bool, passages: str | None = None) -> Factory:
    """ImpRAG under `name`: the zero-shot model, or a trained one (`--model runs/X/model`) reported as
    `imprag-warmup` (stage 1 only), `imprag` (warmup + distillation, shared passages: the index refreshed
    with it), or `imprag-frozen-warmup` / `imprag-frozen` (the same with frozen passages: the base model's
    index)."""

    def make(model: ImpRAG, index_dir: Path, k: int) -> System:
        from imprag.model.reader import InputError
        from imprag.retrieval.index import PassageIndex

        if trained:
            _require_trained(model, name, "imprag", untrained="imprag-zero-shot")
        if passages is not None and model.config.passages != passages:
            other = (
                name.replace("imprag-frozen", "imprag")
                if passages == "frozen"
                else name.replace("imprag", "imprag-frozen", 1)
            )
            raise InputError(
                f"--system {name} reports a model trained with passages={passages}, but --model "
                f"{model.source!r} has passages={model.config.passages}; evaluate it as --system {other}"
            )
        return ImplicitRetrieval(model, PassageIndex.load(index_dir, model), name, k)

    return make


def separate_retriever(model: ImpRAG, index_dir: Path, k: int, retriever: str | Path | None = None) -> System:
    """RA-DIT-Llama: the generator `model` (an `ra-it` run) reads, pasted, what a separate retriever finds
    (`imprag train ... objective.system=retriever`). The retriever is `retriever` (its RUN/model), or by
    default the model the index was built with (`imprag index --refresh --model RUN/model`). One trained
    with frozen passages reads the index of its base model, as `imprag-frozen` does; one with shared
    passages needs an index built with it (the index's staleness check says so)."""
    from imprag.model.reader import InputError
    from imprag.retrieval.index import PassageIndex, read_manifest

    _require_trained(model, "ra-dit-llama", "ra-it")  # the generator
    built = read_manifest(index_dir)["model"]
    source = str(retriever) if retriever is not None else built["source"]
    if trained_as(source) != "retriever":
        trained = "a retriever trained with `imprag train ... objective.system=retriever`"
        if retriever is not None:
            raise InputError(f"--retriever {source!r} is not {trained}; pass RUN/model of such a run")
        raise InputError(
            f"ra-dit-llama retrieves with the model {index_dir} was built with ({source!r}), which is not "
            f"{trained}; pass --retriever /abs/path/to/RUN/model (trained with frozen passages: it reads its "
            f"base model's index), or refresh the index with one: imprag index --refresh --out {index_dir} "
            "--model /abs/path/to/RUN/model"
        )
    # the dtype it was built in is not reused: "auto" is this machine's fast one (the fingerprint ignores it)
    found = ImpRAG.from_pretrained(source, b=built["b"], t=built.get("t"))
    index = PassageIndex.load(index_dir, found)
    about = {"retriever_model": found.source, "retriever_fingerprint": found.retrieval_fingerprint()}
    return RetrieveThenRead(model, ImplicitTextRetriever(found, index), "ra-dit-llama", k, details=about)


SYSTEMS: dict[str, Factory] = {
    "closed-book": lambda model, index_dir, k: ClosedBook(model),
    "bm25": _text("bm25", "bm25"),
    "minilm": _text("minilm", "minilm"),
    "minilm-oracle": _text("minilm", "minilm-oracle", oracle=True),
    "imprag-zero-shot": _implicit("imprag-zero-shot", trained=False),
    "imprag-warmup": _implicit("imprag-warmup", trained=True, passages="shared"),
    "imprag": _implicit("imprag", trained=True, passages="shared"),
    "imprag-frozen-warmup": _implicit("imprag-frozen-warmup", trained=True, passages="frozen"),
    "imprag-frozen": _implicit("imprag-frozen", trained=True, passages="frozen"),
    # RA-IT: MiniLM with the whole prompt, passages pasted, the LM fine-tuned on the same data
    # (`imprag train ... objective.system=ra-it`, evaluated with --model runs/X/model).
    "ra-it": _text("minilm", "ra-it", trained="ra-it"),
    # RA-DIT-Llama: a separately trained copy of layers 0..b as the retriever (the index's model), the
    # ra-it generator (--model) reading its passages pasted.
    "ra-dit-llama": separate_retriever,
}
