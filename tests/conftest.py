"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random models of every supported family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tok_decoders
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from imprag import ImpRAG, LayerSplit

TRAINING_TEXT = [
    "The capital of Veloria is Quantum City.",
    "Paris is the capital of France. Rome is the capital of Italy.",
    "Q: What is the capital of Veloria?\nA: Quantum City",
    "Mozart was a composer from Salzburg. The Nile flows into the Mediterranean Sea.",
    "Is this statement true? The sky is blue. A: True",
]
VOCAB = 320


def pytest_report_header(config) -> str:
    """The machine first, so a slow run explains itself (bf16 is ~70x slower without native kernels)."""
    from imprag.hardware import describe_machine, summary_line

    return f"imprag machine: {summary_line(describe_machine())}"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine's spinning OpenMP threads slow them 100x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real (byte-level BPE) tokenizer trained in a few milliseconds; no BOS, '</s>' is EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tok_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=None,
    tie_word_embeddings=False,
)

CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**{**COMMON, "rope_theta": 10000.0, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**COMMON, **kw}),  # attention biases
    "qwen3": lambda **kw: Qwen3Config(**{**COMMON, **kw}),  # q/k norms
    "mistral": lambda **kw: MistralConfig(**{**COMMON, "sliding_window": None, **kw}),
}
FAMILIES = sorted(CONFIGS)


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model of `family`; weights are scaled up so layers visibly change the output."""
    torch.manual_seed(seed)
    config = CONFIGS[family](**overrides)
    config._attn_implementation = "eager"  # the reference path: HF's own eager attention
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.08)
            elif "bias" in name:
                param.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="session")
def smol() -> ImpRAG:
    """The real embedded SmolLM2-135M in this machine's auto dtype, loaded once per test session."""
    return ImpRAG.from_pretrained("smollm2-135m")


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family: str, tokenizer) -> ImpRAG:
    """ImpRAG over a tiny random model of each family, split b=1, t=3 of 5 layers (all three groups)."""
    return ImpRAG(tiny_model(family), tokenizer, LayerSplit(b=1, t=3))
