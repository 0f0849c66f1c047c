"""imprag: retrieval-augmented generation with implicit queries (ImpRAG) over stock Hugging Face decoders."""

from imprag.config import (
    ConfigError,
    DecodeConfig,
    EmbeddingConfig,
    ImpRAGConfig,
    LayerSplit,
    ReaderConfig,
)
from imprag.model import (
    ARCHITECTURES,
    Generation,
    ImpRAG,
    InputError,
    RetrievedPassage,
    TokenBatch,
    UnsupportedModelError,
)
from imprag.retrieval import InMemoryRetriever, Retriever

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ConfigError",
    "DecodeConfig",
    "EmbeddingConfig",
    "Generation",
    "ImpRAG",
    "ImpRAGConfig",
    "InMemoryRetriever",
    "InputError",
    "LayerSplit",
    "ReaderConfig",
    "RetrievedPassage",
    "Retriever",
    "TokenBatch",
    "UnsupportedModelError",
    "__version__",
]
