"""Retrieval vectors read off layer b's attention: E_q from query states, E_p from key states.

The score s(q, p) = E_q . E_p is, up to pooling and the GQA group mean, exactly the query-key dot product
that layer b's attention was pretrained to use as relevance (method page, "Retrieval embeddings").

Shape legend: B batch, T tokens, H query heads, G KV heads, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imprag.config import EmbeddingConfig
from imprag.model.backbone import Projection
from imprag.model.reader import InputError

__all__ = ["group_queries", "passage_embedding", "pool", "query_embedding"]


def group_queries(q: Tensor, num_kv_heads: int) -> Tensor:
    """Average the query heads that share a KV head: (B, H, T, D) -> (B, G, T, D).

    Follows the model's own GQA mapping: KV head i serves query heads i*g .. i*g+g-1 (g = H / G), which is
    how `repeat_kv` and SDPA's `enable_gqa` expand keys, so head i of the result lives in the same space as
    KV head i.
    """
    b, h, t, d = q.shape
    return q.view(b, num_kv_heads, h // num_kv_heads, t, d).mean(dim=2)


def pool(states: Tensor, valid: Tensor, pooling: str, scores: Tensor | None = None) -> Tensor:
    """Pool per-token states (B, G, T, D) over valid tokens (B, T) into vectors (B, G*D).

    'last' takes the last valid token whatever the padding side; 'mean' averages all valid tokens;
    'attention' weighs them by a softmax of `scores` (B, T) over the valid tokens (in fp32; uniform
    scores give the mean).
    """
    b, g, t, d = states.shape
    if pooling == "attention":
        if scores is None or scores.shape != valid.shape:
            raise ValueError(f"attention pooling needs per-token scores shaped {tuple(valid.shape)}")
        weights = torch.softmax(scores.float().masked_fill(~valid, float("-inf")), dim=1)
        weights = torch.where(valid.any(dim=1, keepdim=True), weights, 0.0)  # an empty row pools to 0
        pooled = (states.float() * weights[:, None, :, None]).sum(dim=2)
        return pooled.to(states.dtype).reshape(b, g * d)
    if pooling == "last":
        last = t - 1 - valid.flip(1).int().argmax(dim=1)  # (B,) index of the last valid token
        picked = states[torch.arange(b, device=states.device), :, last]  # (B, G, D)
        return picked.reshape(b, g * d)
    if pooling == "mean":
        weights = valid.to(states.dtype)[:, None, :, None]  # (B, 1, T, 1)
        summed = (states * weights).sum(dim=2)  # (B, G, D)
        count = weights.sum(dim=2).clamp_min(1.0)
        return (summed / count).reshape(b, g * d)
    raise ValueError(f"unknown pooling {pooling!r}; expected 'last', 'mean' or 'attention'")


def query_embedding(
    proj: Projection, valid: Tensor, num_kv_heads: int, cfg: EmbeddingConfig, scores: Tensor | None = None
) -> Tensor:
    """E_q (B, G*D) from layer b's projection of the prompt, minus `cfg.query_center` when set
    (then in fp32). `scores` (B, T): the tokens' pooling scores when E_q's pooling is 'attention'."""
    q = proj.q_pre if cfg.rope == "pre" else proj.q
    if cfg.query_center is None:
        return pool(group_queries(q, num_kv_heads), valid, cfg.query_side_pooling, scores)
    if len(cfg.query_center) != num_kv_heads * q.shape[-1]:
        raise InputError(
            f"EmbeddingConfig.query_center has {len(cfg.query_center)} values but E_q has "
            f"{num_kv_heads * q.shape[-1]}: it was estimated for another model; re-run ImpRAG.calibrate"
        )
    # In fp32 from the per-token states on: E_q and mu_q are large and close, and their difference is
    # what separates one prompt from another.
    e_q = pool(group_queries(q.float(), num_kv_heads), valid, cfg.query_side_pooling, scores)
    return e_q - torch.tensor(cfg.query_center, dtype=torch.float32, device=e_q.device)


def passage_embedding(proj: Projection, valid: Tensor, cfg: EmbeddingConfig) -> Tensor:
    """E_p (B, G*D) from layer b's projection of the passages."""
    k = proj.k_pre if cfg.rope == "pre" else proj.k
    return pool(k, valid, cfg.pooling)
