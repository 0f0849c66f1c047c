"""Retrieval health: the model's report against a naive recompute, and the teacher's reference ranked within
the pool (including when the pool's passages sit deep in the teacher's whole-corpus ranking)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from conftest import tiny_model
from synthetic import passage_store

from imprag import ImpRAG, LayerSplit
from imprag.model.generation import RetrievedPassage
from imprag.training.health import RetrievalHealth

PROMPTS = {"describe": ["Q: one? A:", "Q: two? A:", "Q: three? A:"], "trivia": ["Q: four? A:"]}


@pytest.fixture
def health(tmp_path) -> RetrievalHealth:
    store = passage_store(tmp_path / "p.sqlite", 60)
    gold = {"describe": [{40}, {45}, {3}], "trivia": [{50}]}
    pool = sorted(set(range(0, 60, 2)) | {3, 41, 45, 55})  # 34 rows: the even ones and the gold ones
    return RetrievalHealth(PROMPTS, gold, pool=pool, store=store, k=2)


class Ranking:
    """A fake whole-corpus retriever: every query ranks rows 0, 1, 2, ... except its `first` rows on top;
    it records the depths it was asked for."""

    def __init__(self, first: dict[str, list[int]], size: int) -> None:
        self.first, self.size, self.depths = first, size, []

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        self.depths.append(k)
        out = []
        for q in queries:
            top = self.first.get(q, [])
            order = top + [r for r in range(self.size) if r not in top]
            out.append([RetrievedPassage(text="", row=r) for r in order[:k]])
        return out


def test_the_reference_ranks_within_the_pool_however_deep_it_must_look(health: RetrievalHealth) -> None:
    pool = set(health.pool)
    buried = [r for r in range(60) if r not in pool]  # all 26 rows outside the pool, ahead of it
    first = {"Q: one? A:": [41, 40], "Q: two? A:": buried, "Q: three? A:": [9]}
    teacher = Ranking(first, 60)
    report = health.reference("fake", teacher)
    # the first depth, 4*k*max(1, 60 // 34) = 8, holds no pool row for "two?": describe is asked again at
    # 4x the depth; trivia's one prompt finds its 2 at the first depth
    assert teacher.depths == [8, 32, 8]
    # naive: each query's whole ranking, filtered to the pool, top 2
    ranked = Ranking(first, 60).retrieve(list(first), 60)
    expected = {q: [h.row for h in hits if h.row in pool][:2] for q, hits in zip(first, ranked, strict=True)}
    assert expected == {"Q: one? A:": [41, 40], "Q: two? A:": [0, 2], "Q: three? A:": [0, 2]}
    assert report["retriever"] == "fake" and report["pool"] == 34
    # gold: one? 40 (found), two? 45 (missed), three? 3 (missed); top-1s 41, 0, 0
    assert report["describe"] == {"recall": round(1 / 3, 3), "hub_share": round(2 / 3, 3), "distinct_top1": 2}
    assert report["trivia"] == {"recall": 0.0, "hub_share": 1.0, "distinct_top1": 1}  # [0, 2], gold 50
    want = {"recall": (1 / 3 + 0) / 2, "hub_share": (2 / 3 + 1) / 2}
    assert report["mean"] == pytest.approx(want, abs=1e-3)


def test_the_model_report_equals_a_naive_recompute(health: RetrievalHealth, tokenizer) -> None:
    """Gold rows are picked from the naive ranking, so recall is a known nonzero value: a wrong mapping from
    pool positions to store rows (which leaves hub share and distinct top-1s unchanged) shows up."""
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3))
    texts = [p.content for p in health.store.get(health.pool)]
    with torch.no_grad():
        e_p = torch.stack([model.embed_passages([t])[0] for t in texts])
    ranked: dict[str, list[list[int]]] = {}  # task -> each prompt's whole pool, best first, as store rows
    for task, prompts in PROMPTS.items():
        ranked[task] = []
        for prompt in prompts:
            scores = model.embed_queries([prompt])[0] @ e_p.T
            ranked[task].append([health.pool[j] for j in scores.argsort(descending=True).tolist()])
    # one? its top-1 is gold, two? its 2nd, three? only its last (missed at k=2); four? its 2nd
    describe, trivia = ranked["describe"], ranked["trivia"]
    gold = {
        "describe": [{describe[0][0]}, {describe[1][1]}, {describe[2][-1]}],
        "trivia": [{trivia[0][1]}],
    }
    health = RetrievalHealth(PROMPTS, gold, pool=health.pool, store=health.store, k=2)
    report = health(model)
    assert report["describe"]["recall"] == round(2 / 3, 3)
    assert report["trivia"]["recall"] == 1.0
    assert report["mean"]["recall"] == round((round(2 / 3, 3) + 1.0) / 2, 3)
    assert report["pool"] == len(health.pool) == 34
    for task, rankings in ranked.items():
        tops = [row[:2] for row in rankings]
        hits = sum(bool(set(top) & g) for top, g in zip(tops, gold[task], strict=True))
        assert report[task]["recall"] == round(hits / len(tops), 3)
        firsts = [top[0] for top in tops]
        assert report[task]["distinct_top1"] == len(set(firsts))
        assert report[task]["hub_share"] == round(max(map(firsts.count, firsts)) / len(firsts), 3)
