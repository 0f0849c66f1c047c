"""Retrievers: anything with `search(E_q, k) -> (ids, scores)` and `fetch(ids) -> texts`."""

from imprag.retrieval.memory import InMemoryRetriever, Retriever

__all__ = ["InMemoryRetriever", "Retriever"]
