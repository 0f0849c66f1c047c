"""ImpRAG's training objectives as pure tensor functions (method page, "Training"): J_gen + lambda * J_ret.

Shapes: B queries, C candidate passages per query (positives, hard negatives, in-batch negatives; a
`candidates` mask marks the real ones when rows have different counts), T tokens, V vocabulary.

- `answer_log_likelihood`: from the logits at the answer positions, each row's log P(answer) (what
  self-distillation scores candidates by) and J_gen, the mean NLL over all answer tokens of the batch;
  `generation_loss` is the same J_gen from full (B, T, V) logits and a mask.
- `multi_label_nce` (warmup): each positive is normalised against itself plus the negatives only, never
  against the other positives:  -sum_{p in P} log( e^{s_p} / (e^{s_p} + sum_{n in N} e^{s_n}) ).
- `distillation_kl` (self-distillation): KL(P_T || P_R) with P_T = softmax(log P_LM(answer | p) / tau_t),
  a fixed target (no gradient), and P_R = softmax(s / tau_r).
Reductions are chosen per loss and explained where they happen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["answer_log_likelihood", "distillation_kl", "generation_loss", "multi_label_nce"]

_NEG_INF = torch.finfo(torch.float32).min


def answer_log_likelihood(
    logits: Tensor, targets: Tensor, rows: Tensor, batch: int, reduce: str = "sum"
) -> tuple[Tensor, Tensor]:
    """Each row's answer log-likelihood and J_gen, from the logits at the answer positions only.

    logits: (n, V) at the n positions that predict an answer token, over `batch` rows; targets: (n,) the
    answer token each predicts; rows: (n,) the row each position belongs to. With
    l_j = log softmax(logits_j)[targets_j] (in fp32):

        per_row[i] = sum_{j: rows_j = i} l_j        (reduce="mean": divided by row i's answer length)
        J_gen      = -(1/n) sum_j l_j               the mean over the batch's answer tokens

    J_gen is token-level, as HF's causal-LM loss: long answers weigh more than short ones, and it is not
    the mean of the rows' means. A batch without answer tokens is an error, not a silent zero.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1] or rows.shape != targets.shape:
        raise ValueError(
            f"logits (n, V) {tuple(logits.shape)}, targets (n,) {tuple(targets.shape)} and rows (n,) "
            f"{tuple(rows.shape)} must agree on n"
        )
    if targets.numel() == 0:
        raise ValueError("no answer tokens in the batch: every example needs a non-empty answer")
    token_lp = -F.cross_entropy(logits.float(), targets, reduction="none")  # (n,)
    per_row = torch.zeros(batch, device=logits.device).index_add(0, rows, token_lp)
    if reduce == "mean":
        per_row = per_row / torch.bincount(rows, minlength=batch).clamp_min(1).to(per_row)
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum' or 'mean', not {reduce!r}")
    return per_row, -token_lp.mean()


def generation_loss(logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
    """J_gen from full logits: the mean next-token cross-entropy over answer tokens.

    logits: (B, T, V) at each input position; targets: (B, T) the token each position should predict
    (the input shifted left by one); answer_mask: (B, T) True where that target is an answer token.
    The same J_gen as `answer_log_likelihood`, which the trainer uses on the answer positions' logits
    alone (a (B, T, V) tensor does not fit in memory at training sizes); this form is the reference.
    """
    if logits.shape[:2] != targets.shape or targets.shape != answer_mask.shape:
        raise ValueError(
            f"logits (B, T, V) {tuple(logits.shape)}, targets {tuple(targets.shape)} and answer_mask "
            f"{tuple(answer_mask.shape)} must agree on (B, T)"
        )
    rows = answer_mask.nonzero()[:, 0]
    return answer_log_likelihood(logits[answer_mask], targets[answer_mask], rows, logits.shape[0])[1]


def multi_label_nce(
    scores: Tensor, positives: Tensor, candidates: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Warmup retrieval loss: mean over queries of the sum over positives of -log softmax of each positive
    against {itself} + negatives.

    scores: (B, C) s(q, p) = E_q . E_p; positives: (B, C) bool; candidates: (B, C) bool, the real
    candidates (default: all). Negatives are the candidates that are not positives. Summing over
    positives follows the paper's formula; queries are averaged so the loss does not grow with the batch.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ")
    candidates = torch.ones_like(positives) if candidates is None else candidates
    positives = positives & candidates
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every query needs at least one positive candidate")
    s = scores.float() / temperature
    negatives = candidates & ~positives
    # log sum_{n in N} e^{s_n} per query (-inf when there is no negative: the positive's term is then 0)
    neg_lse = torch.logsumexp(s.masked_fill(~negatives, _NEG_INF), dim=1, keepdim=True)  # (B, 1)
    neg_lse = torch.where(negatives.any(dim=1, keepdim=True), neg_lse, torch.full_like(neg_lse, -torch.inf))
    # -log( e^{s_p} / (e^{s_p} + e^{neg_lse}) ) = log(1 + e^{neg_lse - s_p}) = softplus(neg_lse - s_p)
    per_positive = F.softplus(neg_lse - s)  # (B, C)
    return per_positive.masked_fill(~positives, 0.0).sum(dim=1).mean()


def distillation_kl(
    scores: Tensor,
    answer_logprobs: Tensor,
    candidates: Tensor | None = None,
    tau_r: float = 1.0,
    tau_t: float = 1.0,
) -> Tensor:
    """Self-distillation retrieval loss: mean over queries of KL(P_T || P_R) over each query's candidates.

    scores: (B, C) retrieval scores (gradients flow here); answer_logprobs: (B, C) log P_LM(answer | p, q)
    of each single candidate (detached here: the target never trains the generator through this loss);
    candidates: (B, C) bool mask of real candidates (default: all).
    """
    if scores.shape != answer_logprobs.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and answer_logprobs {tuple(answer_logprobs.shape)} differ"
        )
    candidates = torch.ones_like(scores, dtype=torch.bool) if candidates is None else candidates
    if not bool(candidates.any(dim=1).all()):
        raise ValueError("every query needs at least one candidate")
    log_t = torch.log_softmax(
        (answer_logprobs.detach().float() / tau_t).masked_fill(~candidates, _NEG_INF), 1
    )
    log_r = torch.log_softmax((scores.float() / tau_r).masked_fill(~candidates, _NEG_INF), dim=1)
    kl = (log_t.exp() * (log_t - log_r)).masked_fill(~candidates, 0.0)  # masked terms have P_T = 0
    return kl.sum(dim=1).mean()
