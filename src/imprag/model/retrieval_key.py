"""The trained retrieval key (`EmbeddingConfig.retrieval_key="trained"`): E_p = W_ret f_p over frozen inputs.

f_p is the mean over a passage's tokens of layer b's normalised attention input, computed with the base
weights; W_ret (D x hidden) starts as layer b's own key projection, so before training E_p = W_ret f_p is
exactly the base model's mean-pooled pre-RoPE key (no bias term matters: a bias b adds E_q . b to every
passage's score of one query, which changes no ranking and no softmax over passages). An index holds f_p;
search maps the query, W_ret^T (E_q - mu_q), so W_ret can change without re-encoding anything.

W_ret is saved beside the model's weights as `retrieval_key.safetensors` (one tensor, "weight").
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from imprag.model.embeddings import pool
from imprag.model.weight_file import load_weight

__all__ = ["RETRIEVAL_KEY_FILE", "base_key_weight", "key_inputs", "load_retrieval_key"]

RETRIEVAL_KEY_FILE = "retrieval_key.safetensors"


def base_key_weight(k_proj: nn.Module) -> Tensor:
    """Layer b's key projection weight (D, hidden) without any LoRA update (peft wraps it as base_layer)."""
    return getattr(k_proj, "base_layer", k_proj).weight.detach()


def key_inputs(x: Tensor, valid: Tensor) -> Tensor:
    """f (B, hidden): the mean over valid tokens (B, T) of layer b's normalised attention input x
    (B, T, hidden), in fp32 (`pool`'s mean, over one head of width hidden)."""
    return pool(x.float()[:, None], valid, "mean")


def load_retrieval_key(directory: str | Path, key: nn.Parameter) -> None:
    """Copy the W_ret saved in `directory` into `key`; a missing, unreadable or misshapen file is a
    one-line InputError."""
    load_weight(
        directory,
        RETRIEVAL_KEY_FILE,
        key,
        f"says retrieval_key='trained' (imprag_config.json) but has no {RETRIEVAL_KEY_FILE}: copy it from "
        "the run that trained the model, or set embedding.retrieval_key to 'base'",
    )
