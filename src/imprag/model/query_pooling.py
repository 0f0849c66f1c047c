"""Learned attention pooling of the implicit query (`EmbeddingConfig.query_pooling="attention"`).

Mean pooling weighs every prompt token alike, and most tokens of the unseen formats' prompts are the
template's: "Kenya [SEP] capital" is followed by 20 instruction words, a claim by "Is this statement
true?". With attention pooling E_q = sum_i a_i q_i, a = softmax over the prompt's valid tokens of
s_i = v . x_i, where x_i is layer b's normalised input (what q_i is projected from) and v the query scorer,
one vector of the hidden size. v starts at 0: the weights are uniform and E_q is exactly the mean's, so a
model switched to attention pooling scores as before until training moves v. Only the query side changes:
E_p, and so every index, does not depend on it.

v is saved beside the model's weights as `query_scorer.safetensors` (one tensor, "weight").
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from imprag.model.weight_file import load_weight

__all__ = ["QUERY_SCORER_FILE", "load_query_scorer", "token_scores"]

QUERY_SCORER_FILE = "query_scorer.safetensors"


def token_scores(x: Tensor, scorer: Tensor) -> Tensor:
    """s (B, T) = x (B, T, hidden) . v (hidden,), in fp32: each token's pooling score."""
    return x.float() @ scorer.to(x.device)


def load_query_scorer(directory: str | Path, scorer: nn.Parameter) -> None:
    """Copy the v saved in `directory` into `scorer`; a missing, unreadable or misshapen file is a
    one-line InputError."""
    load_weight(
        directory,
        QUERY_SCORER_FILE,
        scorer,
        f"says query_pooling='attention' (imprag_config.json) but has no {QUERY_SCORER_FILE}: copy it from "
        "the run that trained the model, or set embedding.query_pooling to 'mean'",
    )
