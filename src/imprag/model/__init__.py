"""The ImpRAG model: backbone adapter, retrieval embeddings, reader layout, generation."""

from imprag.model.backbone import ARCHITECTURES, UnsupportedModelError
from imprag.model.generation import Generation, GenerationObserver, RetrievedPassage
from imprag.model.imprag import ImpRAG
from imprag.model.reader import InputError, TokenBatch

__all__ = [
    "ARCHITECTURES",
    "Generation",
    "GenerationObserver",
    "ImpRAG",
    "InputError",
    "RetrievedPassage",
    "TokenBatch",
    "UnsupportedModelError",
]
