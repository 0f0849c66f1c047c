"""A retrieval step's math, apart from the loop that runs it (method page, "Training"): what each query is
scored against, the masks, the retrieval losses, and which passages the generator reads.

Two sources of candidates, both giving a `Scored` (scores (m, C) over columns of store rows):

    SampledCandidates  the step's own: every example's positives + hard negatives + a few random corpus rows,
                       encoded with gradient and gathered from every process as in-batch negatives.
    CorpusCandidates   every passage of the index, C = N: scores = E_q @ E_all^T, one matmul. With frozen
                       passages E_all is the index's exact E_p (the base model's; nothing to encode). With
                       shared passages (ANCE-style) E_all is as of the last refresh, re-encoded every
                       `refresh_every` steps, and each query's own positives are re-encoded with gradient,
                       so the positives train the passage side while the negatives are slightly stale.

Masks: a column is `valid` for a query when it is a real passage seen once (a passage gathered from several
processes counts once) and not one of the query's gold articles (a gold article ranked anywhere is never its
negative, as for the hard negatives, training/targets.py) unless it is a positive.

Losses (training/losses.py):
    warmup    J_ret = NCE(each positive against the valid non-positives)
                      + teacher_kl_weight * KL(P_teacher || P_model) over the teacher's top-m (corpus only)
    distill   J_ret = distill_kl_weight * KL(P_LM || P_model) over the item's own candidates (the
                      reader share of the slice: P_LM costs a forward per candidate)
                      + distill_nce_weight * NCE (every query of the slice)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imprag.distributed import Dist
from imprag.model.imprag import ImpRAG
from imprag.model.reader import batch_tokens
from imprag.retrieval.store import PassageStore
from imprag.training.config import ObjectiveConfig, TrainConfig
from imprag.training.data import Example, TrainingData
from imprag.training.losses import distillation_kl, multi_label_nce

__all__ = ["CorpusCandidates", "SampledCandidates", "Scored", "choose_reads", "retrieval_loss"]

log = logging.getLogger(__name__)

TargetFn = Callable[[list[Example], list[list[int]]], Tensor]
"""log P_LM(answer | one passage, prompt) for each example's listed rows, (m, c) padded with 0."""


@dataclass
class Scored:
    """Scores of a step's queries against its candidate columns, and the masks the losses need."""

    scores: Tensor  # (m, C) E_q . E_p in fp32; gradients flow to E_q (and to E_p encoded with gradient)
    ids: Tensor  # (C,) store row of each column (-1: padding)
    valid: Tensor  # (m, C) bool: may enter query i's softmax
    positives: Tensor  # (m, C) bool: query i's positives (valid ones; data.positives_from's labels)
    column_of: Callable[[Sequence[int]], list[int]]  # store rows -> their columns (this process's copy)

    def columns(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Columns of each query's `rows` (ragged), as an index (m, c) and a mask of the real ones."""
        return _ragged([self.column_of(r) for r in rows], self.scores.device)

    def gathered(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Each query's scores of its `rows`, (m, c), and the mask of the real ones."""
        idx, mask = self.columns(rows)
        return self.scores.gather(1, idx), mask

    def top(self, k: int, allowed: Tensor | None = None) -> Tensor:
        """The top-k columns per query among the valid (and `allowed`) ones, (m, k), best first."""
        mask = self.valid if allowed is None else self.valid & allowed
        ranked = self.scores.detach().masked_fill(~mask, float("-inf"))
        return ranked.topk(min(k, ranked.shape[1]), dim=1).indices


def _gold_masks(ids: Tensor, examples: Sequence[Example]) -> tuple[Tensor, Tensor]:
    """(positives, gold) (m, C) bool over columns `ids`."""
    positives = torch.stack([torch.isin(ids, torch.tensor(e.positives, device=ids.device)) for e in examples])
    gold = torch.stack(
        [torch.isin(ids, torch.tensor(e.evidence or (-2,), device=ids.device)) for e in examples]
    )
    return positives, gold


class SampledCandidates:
    """The step's own candidates, encoded with gradient, gathered over processes (in-batch negatives)."""

    def __init__(self, model: ImpRAG, data: TrainingData, config: TrainConfig, dist: Dist) -> None:
        self.model, self.data, self.config, self.dist = model, data, config, dist

    def score(self, examples: list[Example], e_q: Tensor, step: int, stage: str) -> Scored:
        model, d = self.model, self.config.data
        # stage 1 only: the stage-2 KL is over each item's own candidates [D], see ObjectiveConfig
        n_random = d.random_negatives if stage == "warmup" else 0
        rows = [r for e in examples for r in e.candidates]
        rows = list(dict.fromkeys(rows + self.data.random_rows(step, self.dist.rank, n_random)))
        width = self.dist.max_(len(rows))  # gold positives vary in number: the processes agree on a width
        texts = [p.content for p in self.data.store.get(rows)]
        ids = model.passage_tokens(texts)
        e_p = model.encode_passages(batch_tokens(ids, [0] * len(ids), model.pad_id)).float()  # (n, D)
        e_p = F.pad(e_p, (0, 0, 0, width - len(rows)))  # (width, D): equal shapes for all_gather
        local_ids = torch.tensor(rows + [-1] * (width - len(rows)), device=e_p.device)
        all_p, all_ids = self.dist.all_gather(e_p), self.dist.all_gather(local_ids)  # (W*width, ...)
        # A passage on several processes counts once, preferring this process's copy (it has a gradient).
        base = self.dist.rank * width
        order = list(range(base, base + width)) + [
            j for j in range(len(all_ids)) if not base <= j < base + width
        ]
        seen: set[int] = set()
        first = torch.zeros(len(all_ids), dtype=torch.bool)
        for j in order:
            r = int(all_ids[j])
            if r >= 0 and r not in seen:
                seen.add(r)
                first[j] = True
        with torch.autocast(e_q.device.type, enabled=False):  # scores ~1e2 apart by ~1: bf16 would merge them
            scores = e_q.float() @ all_p.float().T  # (m, W*width)
        positives, gold = _gold_masks(all_ids, examples)
        valid = first.to(e_p.device)[None, :] & (positives | ~gold)
        local = {r: base + j for j, r in enumerate(rows)}
        return Scored(scores, all_ids, valid, positives & valid, lambda rs: [local[r] for r in rs])


class CorpusCandidates:
    """Every passage of the corpus as a column: E_p fixed (frozen passages) or refreshed (shared, ANCE)."""

    def __init__(
        self,
        rows: Tensor,
        vectors: Tensor,
        model: ImpRAG,
        store: PassageStore,
        refresh_every: int = 0,
        progress: bool = False,
    ) -> None:
        if vectors.ndim != 2 or len(rows) != len(vectors) or vectors.shape[1] != model.index_dim:
            raise ValueError(
                f"corpus vectors {tuple(vectors.shape)} and rows {tuple(rows.shape)} do not fit a model of "
                f"dim {model.index_dim}"
            )
        self.model, self.store, self.refresh_every, self.progress = model, store, refresh_every, progress
        self.rows = rows.long()
        self.vectors = vectors.float()
        self.lookup = torch.full((int(self.rows.max()) + 1 if len(rows) else 0,), -1, dtype=torch.long)
        self.lookup[self.rows] = torch.arange(len(self.rows))
        self.refreshed_at: int | None = None

    @classmethod
    def encode(
        cls, model: ImpRAG, store: PassageStore, refresh_every: int = 0, progress: bool = False
    ) -> CorpusCandidates:
        """E_p of every stored passage with the model as it is now."""
        rows = torch.arange(len(store))
        return cls(rows, _encode_store(model, store, progress), model, store, refresh_every, progress)

    @property
    def frozen(self) -> bool:
        return self.model.config.passages == "frozen"

    def column_of(self, rows: Sequence[int]) -> list[int]:
        cols = self.lookup[torch.tensor(list(rows), dtype=torch.long)].tolist() if len(rows) else []
        if any(c < 0 for c in cols):
            raise ValueError(
                f"store rows {[r for r, c in zip(rows, cols, strict=True) if c < 0]} have no vector"
            )
        return cols

    def maybe_refresh(self, step: int) -> None:
        """Shared passages: re-encode the corpus every refresh_every steps (ANCE's stale negatives)."""
        if self.frozen or not self.refresh_every:
            return
        if self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every:
            if self.refreshed_at is not None or step > 0:
                log.info(
                    "step %d: re-encoding the corpus (objective.refresh_every=%d)", step, self.refresh_every
                )
                self.vectors = _encode_store(self.model, self.store, self.progress)[self.rows]
            self.refreshed_at = step

    def score(self, examples: list[Example], e_q: Tensor, step: int, stage: str) -> Scored:
        self.maybe_refresh(step)
        with torch.autocast(e_q.device.type, enabled=False):
            scores = e_q.float() @ self.vectors.to(e_q.device).T  # (m, N)
            if not self.frozen:  # the positives re-encoded with gradient replace their stale columns
                fresh = list(dict.fromkeys(r for e in examples for r in e.positives))
                texts = [p.content for p in self.store.get(fresh)]
                ids = self.model.passage_tokens(texts)
                e_p = self.model.encode_passages(batch_tokens(ids, [0] * len(ids), self.model.pad_id))
                cols = torch.tensor(self.column_of(fresh), device=scores.device)
                scores = scores.index_copy(1, cols, e_q.float() @ e_p.float().T)
        ids = self.rows.to(e_q.device)
        positives, gold = _gold_masks(ids, examples)
        valid = positives | ~gold
        return Scored(scores, ids, valid, positives, self.column_of)


@torch.no_grad()
def _encode_store(model: ImpRAG, store: PassageStore, progress: bool) -> Tensor:
    from tqdm.auto import tqdm

    chunk, parts = 512, []
    with tqdm(total=len(store), desc="encode corpus", unit="passage", disable=not progress) as bar:
        for start in range(0, len(store), chunk):
            rows = list(range(start, min(len(store), start + chunk)))
            parts.append(model.embed_passages([p.content for p in store.get(rows)]))
            bar.update(len(rows))
    return torch.cat(parts) if parts else torch.zeros(0, model.index_dim)


def teacher_kl(scored: Scored, examples: Sequence[Example], tau_r: float, tau_teacher: float) -> Tensor:
    """KL(P_teacher || P_model) over each query's teacher top-m: P_teacher = softmax(teacher score /
    tau_teacher), P_model = softmax(s / tau_r) restricted to those passages."""
    if any(len(e.teacher_rows) < 2 for e in examples):
        raise ValueError(
            "the dense teacher signal needs each example's teacher top-m (data.teacher_top_m >= 2)"
        )
    model_scores, mask = scored.gathered([e.teacher_rows for e in examples])
    teacher = torch.zeros_like(model_scores)
    for i, e in enumerate(examples):
        teacher[i, : len(e.teacher_scores)] = torch.tensor(e.teacher_scores, dtype=teacher.dtype)
    return distillation_kl(model_scores, teacher, mask, tau_r=tau_r, tau_t=tau_teacher)


def retrieval_loss(
    scored: Scored,
    examples: list[Example],
    stage: str,
    objective: ObjectiveConfig,
    target: TargetFn,
    distill_on: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """J_ret of the stage (module docstring) and its logged parts. The stage-2 KL covers the first
    `distill_on` queries (default all): its target costs one reader forward per candidate, so a step with a
    large retrieval slice distills on its reader share; the other queries train only through
    `distill_nce_weight` x NCE (nothing at the default weight 0)."""
    o, metrics = objective, {}
    nce = multi_label_nce(scored.scores, scored.positives, scored.valid, temperature=o.tau_r)
    if stage == "warmup":
        j_ret = nce
        if o.teacher_kl_weight > 0:
            kd = teacher_kl(scored, examples, o.tau_r, o.tau_teacher)
            metrics["j_teacher"] = round(kd.item(), 4)
            j_ret = j_ret + o.teacher_kl_weight * kd
    else:
        head = examples[: distill_on or len(examples)]
        own = [list(e.candidates) for e in head]
        idx, own_mask = scored.columns(own)
        own_scores = scored.scores[: len(head)].gather(1, idx)
        kl = distillation_kl(own_scores, target(head, own), own_mask, tau_r=o.tau_r, tau_t=o.tau_t)
        metrics["j_distill"] = round(kl.item(), 4)
        j_ret = o.distill_kl_weight * kl + o.distill_nce_weight * nce
    metrics["j_nce"] = round(nce.item(), 4)
    metrics.update(_ranking_metrics(scored, examples))
    return j_ret, {"j_ret": round(j_ret.item(), 4), **metrics}


def _ranking_metrics(scored: Scored, examples: Sequence[Example]) -> dict[str, float]:
    """top1_positive: the query's best valid column is a positive; gold_top10: a gold article is among its
    top 10 columns (over the whole corpus with corpus candidates: the training-time full-corpus recall)."""
    top = scored.ids[scored.top(10)]  # (m, 10) store rows
    rows = top.tolist()
    n = len(examples)
    return {
        "top1_positive": round(sum(r[0] in e.positives for r, e in zip(rows, examples, strict=True)) / n, 3),
        "gold_top10": round(
            sum(bool(set(r) & set(e.evidence)) for r, e in zip(rows, examples, strict=True)) / n, 3
        ),
    }


def choose_reads(
    scored: Scored,
    examples: list[Example],
    read_k: int,
    read: str,
    corpus: bool,
    exclude: Collection[int] = (),
) -> list[list[int]]:
    """The store rows each example's generator reads: its positives (data.positives_from's), or the
    retriever's current top read_k -- among the item's own candidates (sampled), or the whole corpus but
    `exclude` (corpus)."""
    if read == "positives":
        return [list(e.positives[:read_k]) for e in examples]
    m = len(examples)
    if not corpus:
        own_scores, own_mask = scored.gathered([list(e.candidates) for e in examples])
        ranked = own_scores.detach().masked_fill(~own_mask, float("-inf")).argsort(dim=1, descending=True)
        return [
            [e.candidates[j] for j in ranked[i, :read_k].tolist() if j < len(e.candidates)]
            for i, e in enumerate(examples)
        ]
    allowed = ~torch.isin(scored.ids, torch.tensor(sorted(exclude), dtype=scored.ids.dtype))[None, :]
    top = scored.top(read_k, allowed.expand(m, -1))
    return [scored.ids[top[i]].tolist() for i in range(m)]


def _ragged(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(1, max(len(r) for r in rows))
    idx = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return idx, mask
