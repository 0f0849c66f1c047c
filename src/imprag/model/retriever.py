"""What the model needs from a retriever, declared on the model's side so `model/` imports nothing above it.

`ImpRAG.generate(..., index=...)` and `ImpRAG.retrieve` search with the implicit query E_q and fetch the
passages behind the ids. The FAISS `PassageIndex` and the in-memory `InMemoryRetriever` (retrieval/)
implement it; `imprag.retrieval.memory` re-exports `Retriever` beside its text-query sibling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["FetchedPassage", "Retriever"]


class FetchedPassage(Protocol):
    """A passage as the model reads it back (`imprag.retrieval.corpus.Passage` is one)."""

    id: str
    title: str
    text: str


@runtime_checkable
class Retriever(Protocol):
    """What `ImpRAG.generate(..., index=...)` and `ImpRAG.retrieve` rely on."""

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k by inner product for each query (B, D): ids (B, k) long and scores (B, k), best first."""
        ...

    def fetch(self, ids: Sequence[int]) -> Sequence[FetchedPassage]:
        """The passages behind the given ids, in order."""
        ...
