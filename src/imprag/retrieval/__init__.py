"""Retrieval: corpora, the on-disk passage store, vector indexes and baseline retrievers."""

from imprag.retrieval.corpus import CorpusError, Passage, read_corpus
from imprag.retrieval.memory import InMemoryRetriever, Retriever, TextRetriever
from imprag.retrieval.store import PassageStore

__all__ = [
    "CorpusError",
    "InMemoryRetriever",
    "Passage",
    "PassageStore",
    "Retriever",
    "TextRetriever",
    "read_corpus",
]
