"""The retriever interfaces, and a small exact in-memory retriever over a list of passages.

`ImpRAG.generate` needs only two things from a retriever (`Retriever`, declared in model/retriever.py and
re-exported here): `search` over query vectors and `fetch` of the passages (id, title, text) behind the
returned ids. The FAISS `PassageIndex` over an on-disk passage store implements the same two methods; this
one keeps everything in memory, for tests, demos and small lists. `TextRetriever` is the text-query side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from imprag.model.generation import RetrievedPassage
from imprag.model.retriever import Retriever
from imprag.retrieval.corpus import Passage

__all__ = ["InMemoryRetriever", "Retriever", "TextRetriever"]


@runtime_checkable
class TextRetriever(Protocol):
    """A retriever queried with text (BM25, MiniLM, or ImpRAG's implicit query behind an adapter).

    Evaluation and baselines use this interface; what each returns is the same `RetrievedPassage` list.
    """

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        """Top-k passages for each query text, best first."""
        ...


class InMemoryRetriever:
    """Exact inner-product search over passage vectors held in memory.

    Build it with `InMemoryRetriever.build(model, texts)` (embeds with the model's bottom layers) or from
    precomputed vectors. Passage i gets the id str(i) and no title.
    """

    def __init__(self, texts: Sequence[str], vectors: Tensor) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(
                f"vectors must have shape (len(texts), D) = ({len(texts)}, D), got {tuple(vectors.shape)}"
            )
        if len(texts) == 0:
            raise ValueError("an InMemoryRetriever needs at least one passage")
        self.texts = list(texts)
        self.vectors = vectors.detach().float().clone()

    @classmethod
    def build(cls, model, texts: Sequence[str], batch_size: int = 16) -> InMemoryRetriever:
        """Embed `texts` with `model.embed_passages` and index them."""
        return cls(texts, model.embed_passages(texts, batch_size=batch_size))

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"queries must have shape (B, {self.vectors.shape[1]}), got {tuple(queries.shape)}: "
                "were the passages embedded by a different model or layer split?"
            )
        if k > len(self):
            raise ValueError(f"k={k} passages requested but this retriever holds only {len(self)}")
        scores = queries.detach().float().to(self.vectors.device) @ self.vectors.T  # (B, N)
        top = torch.topk(scores, k, dim=1)
        return top.indices, top.values

    def fetch(self, ids: Sequence[int]) -> list[Passage]:
        return [Passage(id=str(int(i)), title="", text=self.texts[int(i)]) for i in ids]
