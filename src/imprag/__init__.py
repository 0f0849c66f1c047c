"""imprag: retrieval-augmented generation with implicit queries (ImpRAG) over stock Hugging Face decoders."""

from imprag.config import (
    ConfigError,
    DecodeConfig,
    EmbeddingConfig,
    ImpRAGConfig,
    IndexConfig,
    LayerSplit,
    ReaderConfig,
)
from imprag.errors import ImpragError
from imprag.model import (
    ARCHITECTURES,
    Generation,
    GenerationObserver,
    ImpRAG,
    InputError,
    RetrievedPassage,
    TokenBatch,
    UnsupportedModelError,
)
from imprag.retrieval import (
    CorpusError,
    InMemoryRetriever,
    Passage,
    PassageStore,
    Retriever,
    TextRetriever,
    read_corpus,
)
from imprag.retrieval.index import InvalidIndexError, PassageIndex, StaleIndexError, build_index

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ConfigError",
    "CorpusError",
    "DecodeConfig",
    "EmbeddingConfig",
    "Generation",
    "GenerationObserver",
    "ImpRAG",
    "ImpRAGConfig",
    "ImpragError",
    "InMemoryRetriever",
    "IndexConfig",
    "InputError",
    "InvalidIndexError",
    "LayerSplit",
    "Passage",
    "PassageIndex",
    "PassageStore",
    "ReaderConfig",
    "RetrievedPassage",
    "Retriever",
    "StaleIndexError",
    "TextRetriever",
    "TokenBatch",
    "UnsupportedModelError",
    "__version__",
    "build_index",
    "read_corpus",
]
