"""Retrieval health during training: gold-article recall of held-out dev prompts, and hubness.

`environment.md` shows a naive warmup collapsing into hubs (one passage the top-1 of most queries) while its
training loss looks fine, so the loop measures what matters at every epoch end: for up to `per_task` dev
items of each task, whether a gold article is among the top-k of what is searched, and the hub share and
number of distinct top-1 passages (`evaluation.metrics.hubness`). What is searched (`EvalConfig.scope`):
the whole corpus (with frozen passages one matmul against the index's exact E_p, given as `vectors`), or a
pool of every item's gold articles plus `pool` random corpus passages, re-encoded each time (cheap, but it
ranked runs differently from the corpus and flattered them: 0.30-0.72 on the pool for 1-7% on the
corpus). `reference(name, teacher)` gives the same numbers for the run's teacher ranked within the same
pool, logged once at the start of a run: pool numbers get a yardstick.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from imprag.data.benchmark import Benchmark
from imprag.evaluation.metrics import hubness
from imprag.model.imprag import ImpRAG
from imprag.retrieval.memory import TextRetriever
from imprag.retrieval.store import PassageStore
from imprag.training.config import EvalConfig

__all__ = ["RetrievalHealth"]


@dataclass
class RetrievalHealth:
    prompts: dict[str, list[str]]
    """Task -> dev prompts."""
    gold: dict[str, list[set[int]]]
    """Task -> the gold article rows of each prompt."""
    pool: list[int]
    """Store rows searched (every gold row plus random ones), sorted."""
    store: PassageStore
    k: int = 10
    vectors: torch.Tensor | None = None
    """E_p of the `pool` rows in pool order, when fixed (frozen passages); None: encoded at each call."""
    scope: str = "pool"
    """What `pool` is: "corpus" (every stored passage) or "pool" (gold articles plus random ones)."""

    @classmethod
    def from_benchmark(
        cls,
        bench: Benchmark,
        store: PassageStore,
        config: EvalConfig,
        seed: int = 0,
        scope: str = "pool",
        corpus: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> RetrievalHealth:
        """`scope` "corpus": every stored passage, with `corpus` = (rows, E_p) when they are fixed (the
        index's); "pool": the gold articles plus `config.pool` random passages."""
        prompts: dict[str, list[str]] = {}
        gold: dict[str, list[set[int]]] = {}
        for task in config.tasks:
            items = bench.items(task, "dev")[: config.per_task]
            prompts[task] = [it.prompt for it in items]
            gold[task] = [{r for r in store.rows_of(it.evidence) if r is not None} for it in items]
        if scope == "corpus":
            if corpus is not None:
                return cls(prompts, gold, corpus[0].tolist(), store, config.k, corpus[1].float(), "corpus")
            return cls(prompts, gold, list(range(len(store))), store, config.k, scope="corpus")
        rng = random.Random(f"{seed}/health")
        extra = rng.sample(range(len(store)), min(config.pool, len(store)))
        pool = sorted(set(extra).union(*(g for rows in gold.values() for g in rows)))
        return cls(prompts, gold, pool, store, config.k)

    def __call__(self, model: ImpRAG) -> dict[str, Any]:
        """Per task: recall@k of a gold article, hub share and distinct top-1s; and their means."""
        if self.vectors is not None:
            e_p = self.vectors
        else:
            e_p = torch.cat(
                [
                    model.embed_passages([p.content for p in self.store.get(self.pool[i : i + 1024])])
                    for i in range(0, len(self.pool), 1024)
                ]
            )  # (P, D), read in bounded chunks
        pool = torch.tensor(self.pool)
        k = min(self.k, len(self.pool))
        return self.report(
            lambda prompts: pool[
                (model.index_query(model.embed_queries(prompts)) @ e_p.T).topk(k, dim=1).indices
            ].tolist()
        )

    def reference(self, name: str, retriever: TextRetriever) -> dict[str, Any]:
        """The same report for a text retriever over the whole corpus (the run's teacher, `name`), ranked
        within the pool, with each prompt as its query: the yardstick the model's pool numbers are read
        against.

        The retriever's own ranking restricted to the pool: it is asked for ever deeper lists (x4) until
        every prompt has k pool passages among them."""
        pool, k, size = set(self.pool), min(self.k, len(self.pool)), len(self.store)

        def top(prompts: list[str]) -> list[list[int]]:
            depth = min(size, 4 * k * max(1, size // len(self.pool)))
            while True:
                ranked = retriever.retrieve(prompts, depth)
                rows = [[hit.row for hit in hits if hit.row in pool][:k] for hits in ranked]
                if depth >= size or all(len(row) == k for row in rows):
                    return rows
                depth = min(size, 4 * depth)

        return {"retriever": name, **self.report(top)}

    def report(self, top: Callable[[list[str]], list[list[int]]]) -> dict[str, Any]:
        """The report for any ranking: `top(prompts)` gives each prompt's top-k store rows, best first
        (`__call__` ranks with a model, `reference` with a text retriever, probes with their own scores)."""
        report: dict[str, Any] = {}
        for task, prompts in self.prompts.items():
            rows = top(prompts)
            hits = [bool(set(row) & g) for row, g in zip(rows, self.gold[task], strict=True)]
            share, distinct = hubness([str(row[0]) for row in rows]) or (0.0, 0)
            report[task] = {
                "recall": round(sum(hits) / len(hits), 3),
                "hub_share": round(share, 3),
                "distinct_top1": distinct,
            }
        values = list(report.values())
        report["mean"] = {
            key: round(sum(r[key] for r in values) / len(values), 3) for key in ("recall", "hub_share")
        }
        report["pool"] = len(self.pool)
        report["scope"] = self.scope
        return report
