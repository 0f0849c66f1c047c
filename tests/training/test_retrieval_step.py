"""One retrieval step of the trainer against recomputes by hand (tiny random llama, fp32, no autocast):
which passages the generator reads (the retriever's top read_k own candidates, or the teacher's
positives) and its J_gen over them; the ra-it objective's J_gen over the prompt with the teacher's
passages pasted; and the warmup NCE never using an item's gold article as its negative."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_model
from synthetic import passage_store
from torch.testing import assert_close

from imprag import ImpRAG, LayerSplit
from imprag.config import ConfigError
from imprag.evaluation.systems import paste_passages
from imprag.model.generation import RetrievedPassage
from imprag.retrieval.store import PassageStore
from imprag.training.config import TrainConfig, load_train_config
from imprag.training.data import Example, TrainingData
from imprag.training.loop import Trainer, build_sequences
from imprag.training.losses import generation_loss, multi_label_nce

READ_K = 2
BASE = [
    "data.mix=[1, 0, 0]",
    "data.positives=3",
    "data.hard_negatives=3",
    "data.random_negatives=3",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.steps_per_epoch=3",
    "optim.warmup_steps=1",
    "objective.warmup_epochs=1",
    f"objective.read_k={READ_K}",
    "model.dtype=float32",
    "engine.autocast=false",
]
PROMPTS = [
    "Q: What is the capital of Veloria? A:",
    "Q: Where is Mozart from? A:",
    "Is this statement true? The sky is blue. A:",
    "Q: Where does the Nile flow? A:",
]
ANSWERS = [" Quantum City\n", " Salzburg\n", " True\n", " The Mediterranean Sea\n"]
# 3 positives + 3 hard negatives each, one item with fewer (a ragged row); some rows shared between items.
# Item 2 scores row 37 (item 0's) above all of its own candidates: it must still read only its own.
CANDIDATES = [
    ((37, 1, 2), (20, 21, 22)),
    ((3, 4, 5), (23, 24, 25)),
    ((6, 7), (26, 2)),
    ((8, 9, 10), (27, 28, 29)),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PassageStore:
    return passage_store(tmp_path_factory.mktemp("store") / "p.sqlite", 40)


def config(*overrides: str) -> TrainConfig:
    return load_train_config(None, [*BASE, *overrides])


def content(row: int) -> str:
    """Passage `row` of `synthetic.passage_store` as the model reads it (title line, then text)."""
    return f"Title {row}\nText number {row} about things {row * 7}."


def batch_of(evidence: list[tuple[int, ...]]) -> list[Example]:
    """The four items of CANDIDATES with these gold rows."""
    return [
        Example(f"r{i}", "retrieval", PROMPTS[i], ANSWERS[i], pos, neg, ev)
        for i, ((pos, neg), ev) in enumerate(zip(CANDIDATES, evidence, strict=True))
    ]


def trainer(tokenizer, store, tmp_path, *overrides: str) -> Trainer:
    cfg = config(*overrides)
    examples = {"retrieval": batch_of([()] * 4)}
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3))
    return Trainer(model, TrainingData(examples, store, cfg.data.mix, seed=0), cfg, tmp_path)


@torch.no_grad()
def hand_ranking(model: ImpRAG, batch: list[Example]) -> list[list[int]]:
    """Each item's own candidates, best first by E_q . E_p (E_q read where the generator reads: after
    read_k passages), checked to be far from ties."""
    e_q = model.embed_queries([e.prompt for e in batch], k=READ_K)
    out = []
    for i, e in enumerate(batch):
        scores = model.embed_passages([content(r) for r in e.candidates]) @ e_q[i]
        order = scores.argsort(descending=True).tolist()
        ordered = scores[order]
        assert (ordered[:-1] - ordered[1:]).min() > 1e-3, "near-tied scores: the ranking is not robust"
        out.append([e.candidates[j] for j in order])
    return out


@torch.no_grad()
def hand_j_gen(model: ImpRAG, batch: list[Example], reads: list[list[int]]) -> torch.Tensor:
    """Token-mean answer NLL reading `reads` (full logits and losses.generation_loss, not the trainer's
    answer_logprobs)."""
    seqs = build_sequences(
        model, [e.prompt for e in batch], [e.answer for e in batch], [len(r) for r in reads]
    )
    passages = model.passage_batch([[content(r) for r in row] for row in reads])  # below each prompt
    return generation_loss(model.forward(seqs.batch, passages), seqs.targets, seqs.answer)


def read_gold(batch: list[Example], reads: list[list[int]]) -> float:
    return round(
        sum(bool(set(r) & set(e.evidence)) for r, e in zip(reads, batch, strict=True)) / len(batch), 3
    )


@pytest.mark.parametrize("stage", ["warmup", "distill"])
def test_the_generator_reads_the_retrievers_top_read_k_own_candidates(
    tokenizer, store, tmp_path, stage
) -> None:
    t = trainer(tokenizer, store, tmp_path, "objective.ret_weight=0.0")  # the loss is J_gen alone
    model = t.model
    ranked = hand_ranking(model, batch_of([()] * 4))
    top = [row[:READ_K] for row in ranked]
    positives = [list(pos[:READ_K]) for pos, _ in CANDIDATES]
    assert any(set(a) != set(b) for a, b in zip(top, positives, strict=True))  # the ranking matters here
    with torch.no_grad():
        e_q = model.embed_queries([PROMPTS[2]], k=READ_K)[0]
        outside, own = (model.embed_passages([content(r) for r in rs]) @ e_q for rs in ([37], ranked[2]))
    assert outside.min() > own.max()
    # gold: read for items 0 and 1 (their top-1), ranked last for item 2, no candidate of item 3's
    batch = batch_of([(ranked[0][0],), (ranked[1][0],), (ranked[2][-1],), (39,)])

    loss, metrics = t._retrieval(batch, 0, stage)
    want = hand_j_gen(model, batch, top)
    assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    assert metrics["j_gen"] == pytest.approx(want.item(), abs=2e-4)
    assert metrics["read_gold"] == read_gold(batch, top) == 0.5
    # what else it might have read gives another J_gen: the teacher's positives, the retriever's bottom
    # read_k, its top read_k in another order
    for other in (positives, [row[-READ_K:] for row in ranked], [row[::-1] for row in top]):
        assert abs(hand_j_gen(model, batch, other).item() - want.item()) > 1e-3


def test_read_tasks_choose_which_queries_the_generator_learns_to_answer(tokenizer, store, tmp_path) -> None:
    """With optim.batch_size=2, the generator reads for two of the four queries: the batch's first two by
    default, the first two of data.read_tasks' items when set (round robin over the tasks), whatever their
    place in the batch. Each J_gen is recomputed by hand over the readers' own top read_k."""
    tasks = ["a", "a", "b", "c"]
    batch = [replace(e, task=task) for e, task in zip(batch_of([()] * 4), tasks, strict=True)]
    common = ("objective.ret_weight=0.0", "optim.batch_size=2", "data.retrieval_tasks=[a, b, c]")
    wants = {}
    for read_tasks, readers in (("[]", [0, 1]), ("[c]", [3, 0]), ("[b, a]", [2, 0]), ("[c, b]", [3, 2])):
        t = trainer(tokenizer, store, tmp_path, *common, f"data.read_tasks={read_tasks}")
        top = [row[:READ_K] for row in hand_ranking(t.model, batch)]
        loss, _ = t._retrieval(batch, 0, "warmup")
        want = hand_j_gen(t.model, [batch[i] for i in readers], [top[i] for i in readers])
        assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
        wants[read_tasks] = want.item()
    assert len({round(w, 3) for w in wants.values()}) == 4  # each choice of readers is a different loss


def test_read_tasks_must_be_retrieval_tasks() -> None:
    with pytest.raises(ConfigError, match=r"data.read_tasks \['span-qa'\] are not in data.retrieval_tasks"):
        config("data.retrieval_tasks=[describe]", "data.read_tasks=[span-qa, describe]")


def test_with_read_positives_the_generator_reads_the_teachers_top_read_k(tokenizer, store, tmp_path) -> None:
    t = trainer(tokenizer, store, tmp_path, "objective.ret_weight=0.0", "objective.read=positives")
    model = t.model
    ranked = hand_ranking(model, batch_of([()] * 4))
    positives = [list(pos[:READ_K]) for pos, _ in CANDIDATES]
    # gold: the 2nd positive of item 0 (read), the 3rd of item 1 (not read), a negative of item 2, the 1st
    # positive and a negative of item 3
    batch = batch_of([(1,), (5,), (26,), (8, 29)])

    loss, metrics = t._retrieval(batch, 0, "warmup")
    want = hand_j_gen(model, batch, positives)
    assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    assert metrics["j_gen"] == pytest.approx(want.item(), abs=2e-4)
    assert metrics["read_gold"] == read_gold(batch, positives) == 0.5
    top = [row[:READ_K] for row in ranked]
    assert abs(hand_j_gen(model, batch, top).item() - want.item()) > 1e-3  # retrieved ones would differ


def test_ra_it_trains_on_the_prompt_with_the_teachers_passages_pasted(tokenizer, store, tmp_path) -> None:
    """objective.system=ra-it: J_gen over `paste_passages(prompt, teacher's top read_k)` (what the `ra-it`
    system reads at evaluation), reading nothing through the middle layers; no J_ret."""
    t = trainer(tokenizer, store, tmp_path, "objective.system=ra-it")
    model = t.model
    kind, batch = t.data.batch(0, 4)
    assert kind == "retrieval"
    pasted = []
    for e in batch:
        read = list(e.positives[:READ_K])
        text = "".join(f"{content(r)}\n\n" for r in read) + e.prompt
        assert text == paste_passages(e.prompt, [RetrievedPassage(content(r)) for r in read])
        pasted.append(text)

    def j_gen(prompts: list[str]) -> torch.Tensor:
        seqs = build_sequences(model, prompts, [e.answer for e in batch], [0] * len(batch))
        with torch.no_grad():
            return generation_loss(model.forward(seqs.batch, None), seqs.targets, seqs.answer)

    want = j_gen(pasted)
    loss, metrics = t._retrieval(batch, 0, "warmup")
    assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    assert metrics == {"j_gen": pytest.approx(want.item(), abs=2e-4)}
    # the passages matter: without them, or with the teacher's next ones, J_gen differs
    assert abs(j_gen([e.prompt for e in batch]).item() - want.item()) > 1e-3
    others = ["".join(f"{content(r)}\n\n" for r in e.candidates[1 : READ_K + 1]) + e.prompt for e in batch]
    assert abs(j_gen(others).item() - want.item()) > 1e-3
    # a whole training step logs J_gen only, as it trains
    logged = t.train_step(0)
    assert logged["kind"] == "retrieval" and logged["j_gen"] == pytest.approx(want.item(), abs=2e-4)
    assert "j_ret" not in logged and "read_gold" not in logged and "top1_positive" not in logged


def test_an_items_gold_article_is_never_its_negative(tokenizer, store, tmp_path) -> None:
    """Item 0's gold articles: its own positive 1 (stays a positive) and a positive of item 1 (dropped from
    item 0's candidates, still a negative of the other items): the warmup NCE against a recompute with
    exactly that column masked in exactly that row."""
    t = trainer(tokenizer, store, tmp_path)
    model, tau = t.model, t.config.objective.tau_r
    rows = list(
        dict.fromkeys([r for pos, neg in CANDIDATES for r in pos + neg] + t.data.random_rows(0, 0, 3))
    )
    with torch.no_grad():
        e_q = model.embed_queries(PROMPTS, k=READ_K)
        scores = e_q @ model.embed_passages([content(r) for r in rows]).T  # (4, unique rows)
    positives = torch.tensor([[r in pos for r in rows] for pos, _ in CANDIDATES])
    # the column masked: item 1's positive that item 0 scores highest (where masking changes most)
    other = [rows.index(r) for r in CANDIDATES[1][0]]
    masked = other[int(scores[0, other].argmax())]
    batch = batch_of([(1, rows[masked]), (4,), (), (8,)])
    valid = torch.ones_like(positives)
    valid[0, masked] = False

    _, metrics = t._retrieval(batch, 0, "warmup")
    want = multi_label_nce(scores, positives, valid, temperature=tau).item()
    unmasked = multi_label_nce(scores, positives, temperature=tau).item()
    own_positive_dropped = valid.clone()
    own_positive_dropped[0, rows.index(1)] = False  # the gold article that is item 0's own positive
    dropped = multi_label_nce(scores, positives, own_positive_dropped, temperature=tau).item()
    assert metrics["j_ret"] == pytest.approx(want, abs=2e-4)
    assert abs(unmasked - want) > 1e-3 and abs(dropped - want) > 1e-3  # both halves of the rule matter
