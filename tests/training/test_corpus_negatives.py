"""Whole-corpus negatives (objective.negatives=corpus) on a tiny random llama with a random LoRA adapter:
frozen passages score every query against the base model's E_p of every stored passage, and the warmup NCE,
the dense teacher KL and what the generator reads are recomputed by hand here (python loops over floats,
not the library's loss functions). Training moves the prompt side only: every E_p stays the base model's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model
from synthetic import passage_store

from imprag import ImpRAG, LayerSplit
from imprag.config import ConfigError
from imprag.retrieval.store import PassageStore
from imprag.training.config import TrainConfig, load_train_config
from imprag.training.data import Example, TrainingData
from imprag.training.loop import Trainer
from imprag.training.retrieval import CorpusCandidates

SPLIT = LayerSplit(b=1, t=3)
N = 40
READ_K = 2
BASE = [
    "data.mix=[1, 0, 0]",
    "optim.batch_size=3",
    "optim.epochs=1",
    "optim.steps_per_epoch=4",
    "optim.warmup_steps=1",
    "optim.lr=0.05",
    "objective.warmup_epochs=1",
    f"objective.read_k={READ_K}",
    "objective.tau_r=0.5",
    "objective.negatives=corpus",
    "model.passages=frozen",
    "model.dtype=float32",
    "engine.autocast=false",
    "engine.lora_r=4",
]
PROMPTS = ["Q: What is 7? A:", "Q: Which text is number 12? A:", "Q: Things 70? A:"]
# positives, hard negatives, gold articles (row 5 is item 0's gold article but not its positive)
LABELS = [((1, 2), (20,), (1, 5)), ((12,), (21, 22), (12,)), ((10, 11, 3), (23,), (10,))]
TEACHER = [((1, 2, 7), (0.9, 0.5, 0.1)), ((12, 30), (0.8, 0.6)), ((10, 11, 3, 4), (0.7, 0.6, 0.2, 0.1))]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PassageStore:
    return passage_store(tmp_path_factory.mktemp("store") / "p.sqlite", N)


def content(row: int) -> str:
    return f"Title {row}\nText number {row} about things {row * 7}."


def batch() -> list[Example]:
    return [
        Example(f"r{i}", "retrieval", PROMPTS[i], f" answer {i}\n", pos, neg, gold, *TEACHER[i])
        for i, (pos, neg, gold) in enumerate(LABELS)
    ]


def config(*overrides: str) -> TrainConfig:
    return load_train_config(None, [*BASE, *overrides])


def frozen_trainer(tokenizer, store: PassageStore, tmp_path, *overrides: str) -> tuple[Trainer, ImpRAG]:
    """(a trainer whose LoRA adapter is random, not zero, the untouched base model)."""
    base = ImpRAG(tiny_model("llama"), tokenizer, SPLIT)
    cfg = config(*overrides)
    model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT)
    t = Trainer(model, TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0), cfg, tmp_path)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    return t, base


@torch.no_grad()
def hand_scores(t: Trainer, base: ImpRAG) -> list[list[float]]:
    """s(q_i, p_r) for every store row r: E_q of the adapted model, E_p of the base model."""
    e_q = t.model.embed_queries(PROMPTS, k=READ_K)
    e_p = base.embed_passages([content(r) for r in range(N)])
    return (e_q @ e_p.T).tolist()


def hand_nce(scores: list[list[float]], tau: float, labels=LABELS) -> float:
    """Mean over queries of sum over positives p of -log(e^{s_p} / (e^{s_p} + sum_n e^{s_n})), n over
    every corpus row that is neither a positive nor a gold article of the query."""
    total = 0.0
    for i, (pos, _, gold) in enumerate(labels):
        negatives = [r for r in range(N) if r not in pos and r not in gold]
        neg = sum(math.exp(scores[i][r] / tau) for r in negatives)
        for p in pos:
            e = math.exp(scores[i][p] / tau)
            total -= math.log(e / (e + neg))
    return total / len(LABELS)


def hand_teacher_kl(scores: list[list[float]], tau_r: float, tau_t: float) -> float:
    """Mean over queries of KL(softmax(teacher / tau_t) || softmax(s / tau_r)) over the teacher's top-m."""
    total = 0.0
    for i, (rows, teacher) in enumerate(TEACHER):
        zt = sum(math.exp(x / tau_t) for x in teacher)
        zr = sum(math.exp(scores[i][r] / tau_r) for r in rows)
        for r, x in zip(rows, teacher, strict=True):
            pt, pr = math.exp(x / tau_t) / zt, math.exp(scores[i][r] / tau_r) / zr
            total += pt * math.log(pt / pr)
    return total / len(TEACHER)


def test_whole_corpus_nce_equals_a_hand_computation(tokenizer, store, tmp_path) -> None:
    t, base = frozen_trainer(tokenizer, store, tmp_path, "objective.ret_weight=1.0")
    assert isinstance(t.candidates, CorpusCandidates) and len(t.candidates.rows) == N
    scores = hand_scores(t, base)
    _, metrics = t._retrieval(batch(), 0, "warmup")
    want = hand_nce(scores, 0.5)
    assert metrics["j_nce"] == pytest.approx(want, abs=2e-4) and metrics["j_ret"] == metrics["j_nce"]
    # each positive against the corpus *minus the other positives and the gold articles*: other rules differ
    with_positives = 0.0
    for i, (pos, _, _) in enumerate(LABELS):
        everyone = sum(math.exp(scores[i][r] / 0.5) for r in range(N))
        with_positives -= sum(scores[i][p] / 0.5 - math.log(everyone) for p in pos)
    assert abs(with_positives / len(LABELS) - want) > 1e-3
    adapted = ImpRAG(t.model.model, t.model.tokenizer, SPLIT, passages="shared")  # the adapter on passages
    assert abs(hand_nce(hand_scores(t, adapted), 0.5) - want) > 1e-3
    # the training-time full-corpus recall: a gold article among the query's top 10 of all N rows
    top10 = [sorted(range(N), key=lambda r: -scores[i][r])[:10] for i in range(len(LABELS))]
    gold = sum(bool(set(top) & set(g)) for top, (_, _, g) in zip(top10, LABELS, strict=True))
    assert metrics["gold_top10"] == round(gold / len(LABELS), 3)


@pytest.mark.parametrize("source", ["gold", "both"])
def test_gold_positives_in_the_schedule_equal_a_hand_computation(tokenizer, store, tmp_path, source) -> None:
    """data.positives_from: the NCE takes each item's gold articles (and, with 'both', the teacher's
    positives after them) as its positives against the rest of the corpus."""
    t, base = frozen_trainer(tokenizer, store, tmp_path, f"data.positives_from={source}")
    scores = hand_scores(t, base)
    _, metrics = t._retrieval(batch(), 0, "warmup")
    labels = [
        (gold if source == "gold" else (*gold, *(p for p in pos if p not in gold)), neg, gold)
        for pos, neg, gold in LABELS
    ]
    assert metrics["j_nce"] == pytest.approx(hand_nce(scores, 0.5, labels), abs=2e-4)
    assert abs(hand_nce(scores, 0.5) - metrics["j_nce"]) > 1e-3  # the teacher's positives give another


def test_the_dense_teacher_kl_equals_a_hand_computation(tokenizer, store, tmp_path) -> None:
    t, base = frozen_trainer(
        tokenizer, store, tmp_path, "data.teacher_top_m=4", "objective.teacher_kl_weight=0.5",
        "objective.tau_teacher=0.2",
    )  # fmt: skip
    scores = hand_scores(t, base)
    _, metrics = t._retrieval(batch(), 0, "warmup")
    kl = hand_teacher_kl(scores, 0.5, 0.2)
    assert metrics["j_teacher"] == pytest.approx(kl, abs=2e-4)
    assert metrics["j_ret"] == pytest.approx(hand_nce(scores, 0.5) + 0.5 * kl, abs=4e-4)
    assert abs(hand_teacher_kl(scores, 0.5, 1.0) - kl) > 1e-3  # its own temperature matters


def test_the_generator_reads_the_top_read_k_of_the_whole_corpus_but_evaluated_rows(
    tokenizer, store, tmp_path, monkeypatch
) -> None:
    import imprag.training.loop as loop

    t, base = frozen_trainer(tokenizer, store, tmp_path, "objective.ret_weight=0.0")
    scores = hand_scores(t, base)
    ranked = [sorted(range(N), key=lambda r: -scores[i][r]) for i in range(len(LABELS))]
    t.data.lm_exclude = {ranked[0][0], ranked[1][1]}  # articles a dev/test item uses: never read in training
    want = [[r for r in row if r not in t.data.lm_exclude][:READ_K] for row in ranked]
    assert want[0] != ranked[0][:READ_K] and want[1] != ranked[1][:READ_K]
    seen: list[list[list[int]]] = []
    real = loop.choose_reads

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(loop, "choose_reads", spy)
    _, metrics = t._retrieval(batch(), 0, "warmup")
    assert seen == [want]
    gold = sum(bool(set(r) & set(g)) for r, (_, _, g) in zip(want, LABELS, strict=True))
    assert metrics["read_gold"] == round(gold / len(LABELS), 3)


def test_frozen_training_leaves_every_passage_embedding_and_the_fingerprint_unchanged(
    tokenizer, store, tmp_path
) -> None:
    t, base = frozen_trainer(tokenizer, store, tmp_path)
    texts = [content(r) for r in range(N)]
    with torch.no_grad():
        e_p, e_q = t.model.embed_passages(texts), t.model.embed_queries(PROMPTS, k=READ_K)
    fingerprint = t.model.retrieval_fingerprint()
    assert fingerprint == base.retrieval_fingerprint()
    assert torch.equal(e_p, base.embed_passages(texts))
    for step in range(3):
        logged = t.train_step(step)
        assert math.isfinite(logged["j_ret"])
    with torch.no_grad():
        assert torch.equal(t.model.embed_passages(texts), e_p)  # bit for bit: the base weights ran
        moved = (t.model.embed_queries(PROMPTS, k=READ_K) - e_q).abs().max().item()
    assert moved > 1e-3  # the prompt side did learn
    assert t.model.retrieval_fingerprint() == fingerprint
    assert torch.equal(t.candidates.vectors, base.embed_passages(texts))  # never refreshed: nothing to do


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["engine.lora_r=0"], "model.passages=frozen"),
        (["model.passages=shared"], "objective.refresh_every > 0"),
        (["objective.teacher_kl_weight=0.5"], "data.teacher_top_m >= 2"),
        (
            ["objective.teacher_kl_weight=0.5", "data.teacher_top_m=8", "objective.negatives=sampled"],
            "only objective.negatives=corpus",
        ),
        (["objective.tau_teacher=0"], "objective.tau_teacher > 0"),
        (["data.teacher_top_m=-1"], "data.teacher_top_m must be >= 0"),
        (["objective.refresh_every=-2", "model.passages=shared"], "refresh_every"),
        (["optim.query_scorer_lr=0.01"], "needs model.query_pooling=attention"),
        (["optim.query_scorer_lr=-1", "model.query_pooling=attention"], "query_scorer_lr must be >= 0"),
    ],
)
def test_configurations_that_cannot_work_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        config(*overrides)


def test_shared_passages_with_refresh_re_encode_the_corpus_with_the_current_model(
    tokenizer, store, tmp_path
) -> None:
    """ANCE-style: negatives from the last refresh, each query's positives re-encoded with gradient."""
    t, _ = frozen_trainer(tokenizer, store, tmp_path, "model.passages=shared", "objective.refresh_every=2")
    texts = [content(r) for r in range(N)]
    stale = t.candidates.vectors.clone()
    t._retrieval(batch(), 0, "warmup")
    assert t.candidates.refreshed_at == 0 and torch.equal(t.candidates.vectors, stale)
    with torch.no_grad():
        now = t.model.embed_passages(texts)  # the random adapter acts on passages too
    assert not torch.allclose(now, stale, atol=1e-3)
    scored = t.candidates.score(batch(), t.model.embed_queries(PROMPTS, k=READ_K), 1, "warmup")
    fresh = [r for pos, _, _ in LABELS for r in pos]
    e_q = t.model.embed_queries(PROMPTS, k=READ_K).detach()
    for i in range(len(LABELS)):
        for r in range(N):
            want = (e_q[i] @ (now[r] if r in fresh else stale[r])).item()
            assert scored.scores[i, r].item() == pytest.approx(want, abs=1e-4), (i, r)
    assert scored.scores.requires_grad
    t.candidates.maybe_refresh(2)
    assert t.candidates.refreshed_at == 2 and torch.allclose(t.candidates.vectors, now, atol=1e-5)


def test_stage_2_distills_on_the_reader_share_and_the_rest_only_through_the_nce(
    tokenizer, store, tmp_path
) -> None:
    """retrieval_loss(distill_on=n): the KL target is asked for (and the KL taken over) the first n queries
    only; the NCE still covers all of them."""
    from imprag.training.losses import multi_label_nce
    from imprag.training.retrieval import retrieval_loss

    t, _ = frozen_trainer(tokenizer, store, tmp_path, "objective.distill_nce_weight=0.5")
    examples = batch()
    e_q = t.model.embed_queries(PROMPTS, k=READ_K)
    scored = t.candidates.score(examples, e_q, 0, "distill")
    asked: list[list[str]] = []

    def target(head, rows):  # a fixed log P_LM per candidate, (m, c) padded
        asked.append([e.id for e in head])
        out = torch.zeros(len(rows), max(map(len, rows)))
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.arange(len(r), dtype=torch.float32) * (i + 1)
        return out

    objective = t.config.objective
    loss, metrics = retrieval_loss(scored, examples, "distill", objective, target, distill_on=2)
    assert asked == [["r0", "r1"]]
    full, _ = retrieval_loss(scored, examples, "distill", objective, target)
    assert asked[-1] == ["r0", "r1", "r2"]
    nce = multi_label_nce(scored.scores, scored.positives, scored.valid, temperature=objective.tau_r)
    assert metrics["j_nce"] == pytest.approx(nce.item(), abs=1e-4)
    assert loss.item() == pytest.approx(metrics["j_distill"] + 0.5 * nce.item(), abs=1e-3)
    assert abs(full.item() - loss.item()) > 1e-4  # the third query's KL is left out


def test_a_trained_retrieval_key_learns_over_fixed_layer_b_inputs_and_resumes(
    tokenizer, store, tmp_path
) -> None:
    """model.retrieval_key=trained: the corpus columns are the base model's f_p, scores E_q . W_ret f_p,
    the NCE over them equals the hand computation, W_ret moves while no f_p does, and a checkpoint holds
    it."""
    from dataclasses import replace

    overrides = ["model.pooling=mean", "model.retrieval_key=trained", "objective.ret_weight=1.0"]
    model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", retrieval_key="trained")
    model.config = replace(model.config, embedding=embedding)
    cfg = config(*overrides)
    t = Trainer(model, TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0), cfg, tmp_path)
    assert any(p is model.retrieval_key for p in t.params) and model.retrieval_key.requires_grad
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
        model.retrieval_key.add_(torch.randn_like(model.retrieval_key), alpha=0.05)
    texts = [content(r) for r in range(N)]
    with torch.no_grad():
        f_p = model.embed_passages(texts)
        scores = (model.embed_queries(PROMPTS, k=READ_K) @ model.retrieval_key @ f_p.T).tolist()
    assert f_p.shape == (N, model.model.config.hidden_size)
    assert torch.equal(t.candidates.vectors, f_p)
    _, metrics = t._retrieval(batch(), 0, "warmup")
    assert metrics["j_nce"] == pytest.approx(hand_nce(scores, 0.5), abs=2e-4)

    key, fingerprint = model.retrieval_key.detach().clone(), model.retrieval_fingerprint()
    for step in range(3):
        assert math.isfinite(t.train_step(step)["j_ret"])
    assert (model.retrieval_key - key).abs().max().item() > 1e-3  # the key learned
    with torch.no_grad():
        assert torch.equal(model.embed_passages(texts), f_p)  # and the passages did not move
    assert model.retrieval_fingerprint() == fingerprint
    assert_checkpoint_restores(model, model.retrieval_key, tmp_path / "ckpt")


def assert_checkpoint_restores(model: ImpRAG, weight: torch.Tensor, directory) -> None:
    """A checkpoint written by export_model holds `weight` (a side weight: W_ret or v): zeroed after the
    export, restore_checkpoint brings back the learned values."""
    from imprag.training.checkpoint import export_model, restore_checkpoint

    directory.mkdir()
    export_model(model, directory)
    torch.save({"step": 3}, directory / "trainer_state.pt")
    learned = weight.detach().clone()
    with torch.no_grad():
        weight.zero_()
    restore_checkpoint(directory, model)
    assert torch.equal(weight, learned) and learned.abs().max() > 0


def test_an_attention_pooled_query_learns_its_scorer_and_resumes(tokenizer, store, tmp_path) -> None:
    """model.query_pooling=attention: the scorer v starts at 0 (the mean's scores: the NCE equals the hand
    computation over mean-pooled E_q), trains with the adapter while no passage vector moves, and a
    checkpoint holds it."""
    from dataclasses import replace

    overrides = ["model.pooling=mean", "model.query_pooling=attention", "objective.ret_weight=1.0"]
    model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", query_pooling="attention")
    model.config = replace(model.config, embedding=embedding)
    cfg = config(*overrides)
    t = Trainer(model, TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0), cfg, tmp_path)
    assert any(p is model.query_scorer for p in t.params) and model.query_scorer.requires_grad
    assert not model.query_scorer.any()
    mean = ImpRAG(model.model, tokenizer, SPLIT, replace(embedding, query_pooling=None), passages="frozen")
    texts = [content(r) for r in range(N)]
    with torch.no_grad():
        e_p = model.embed_passages(texts)
        scores = (mean.embed_queries(PROMPTS, k=READ_K) @ e_p.T).tolist()
    _, metrics = t._retrieval(batch(), 0, "warmup")
    assert metrics["j_nce"] == pytest.approx(hand_nce(scores, 0.5), abs=2e-4)

    for step in range(3):
        assert math.isfinite(t.train_step(step)["j_ret"])
    assert model.query_scorer.abs().max().item() > 1e-4  # v learned
    with torch.no_grad():
        assert torch.equal(model.embed_passages(texts), e_p)  # and the passages did not move
    assert_checkpoint_restores(model, model.query_scorer, tmp_path / "ckpt")


@pytest.mark.parametrize("scorer_lr", [0.0, 0.5])
def test_the_query_scorer_steps_at_its_own_learning_rate(tokenizer, store, tmp_path, scorer_lr) -> None:
    """optim.query_scorer_lr puts v in a parameter group of its own. AdamW's first step moves every weight
    whose gradient is not 0 by exactly its group's rate (m/sqrt(v) = g/|g|; warmup_steps=1 puts the
    schedule at 1): v by query_scorer_lr (0: optim.lr = 0.05), every LoRA weight by 0.05."""
    from dataclasses import replace

    overrides = ["model.pooling=mean", "model.query_pooling=attention", f"optim.query_scorer_lr={scorer_lr}"]
    model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", query_pooling="attention")
    model.config = replace(model.config, embedding=embedding)
    cfg = config(*overrides)
    t = Trainer(model, TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0), cfg, tmp_path)
    assert len(t.optimizer.param_groups) == (2 if scorer_lr else 1)
    lora = {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" in n}
    t.train_step(0)
    moved = model.query_scorer.detach().abs()
    assert moved.min().item() > 0
    assert moved.max().item() == pytest.approx(scorer_lr or 0.05, rel=1e-3)
    params = dict(model.model.named_parameters())
    steps = [(params[n].detach() - before).abs().max().item() for n, before in lora.items()]
    assert max(steps) == pytest.approx(0.05, rel=1e-3)


def test_the_pooling_stage_trains_the_scorer_alone_after_the_schedule(tokenizer, store, tmp_path) -> None:
    """objective.pooling_steps: after the 4-step schedule, 3 retrieval steps move v and nothing else (every
    LoRA weight and W_ret equal the model exported before the stage); the first stage step's J_ret is the
    warmup NCE of the finished model over the next retrieval batch; a finished run given the stage later
    (the same command with it set) resumes from its last checkpoint and does it, the same way."""
    from dataclasses import replace

    from imprag.training.loop import Trainer

    overrides = ["model.pooling=mean", "model.query_pooling=attention", "model.retrieval_key=trained"]

    def trainer(out, *more: str) -> tuple[Trainer, ImpRAG]:
        model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT, passages="frozen")
        embedding = replace(
            model.config.embedding, pooling="mean", query_pooling="attention", retrieval_key="trained"
        )
        model.config = replace(model.config, embedding=embedding)
        cfg = config(*overrides, *more)
        data = TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0)
        return Trainer(model, data, cfg, out), model

    t, _ = trainer(tmp_path / "run", "objective.pooling_steps=3", "optim.pooling_lr=0.1")
    t.run(progress=False)
    before, after = (
        weights_in(tmp_path / "run" / "model-before-pooling"),
        weights_in(tmp_path / "run" / "model"),
    )
    assert (
        set(before) == set(after) and any("lora_" in n for n in after) and "retrieval_key" in str(list(after))
    )
    scorer = [n for n in after if n.startswith("query_scorer")]
    assert len(scorer) == 1 and (after[scorer[0]] - before[scorer[0]]).abs().max().item() > 1e-3  # v moved
    assert all(torch.equal(after[n], before[n]) for n in after if n not in scorer)  # nothing else did
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    stage = [r for r in log if r.get("stage") == "pooling"]
    assert [r["step"] for r in stage] == [5, 6, 7] and all(math.isfinite(r["j_ret"]) for r in stage)

    # the same run without the stage, then given it: the same model
    plain, _ = trainer(tmp_path / "late")
    plain.run(progress=False)
    assert not (tmp_path / "late" / "model-before-pooling").exists()
    late, _ = trainer(tmp_path / "late", "objective.pooling_steps=3", "optim.pooling_lr=0.1")
    assert late.step == 4  # resumed at the end of the schedule
    late.run(progress=False)
    assert all(torch.equal(w, after[n]) for n, w in weights_in(tmp_path / "late" / "model").items())


def weights_in(directory) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file an export wrote, named file/tensor."""
    from safetensors.torch import load_file

    return {
        f"{f.stem}/{n}": w for f in sorted(directory.glob("*.safetensors")) for n, w in load_file(f).items()
    }


def test_the_pooling_stage_needs_attention_pooling() -> None:
    with pytest.raises(ConfigError, match=r"objective\.pooling_steps trains the attention pooling"):
        config("objective.pooling_steps=5")
    with pytest.raises(ConfigError, match=r"optim\.pooling_lr > 0"):
        config("model.query_pooling=attention", "objective.pooling_steps=5", "optim.pooling_lr=0")


def test_labelled_takes_the_gold_articles_the_teachers_or_both() -> None:
    """data.positives_from / objective.pooling_positives: the gold articles become the positives (a gold
    article among the hard negatives leaves them), 'both' adds the teacher's others after them, an item
    without a gold article keeps its teacher's."""
    from dataclasses import replace

    from imprag.training.data import labelled

    first, second, _ = batch()
    assert labelled(first, "teacher") == first
    assert labelled(first, "gold").positives == (1, 5) and labelled(first, "gold").negatives == (20,)
    assert labelled(first, "both").positives == (1, 5, 2)
    with_gold_negative = replace(second, negatives=(21, 12))
    assert labelled(with_gold_negative, "gold").negatives == (21,)
    assert labelled(with_gold_negative, "both").negatives == (21,)
    for source in ("gold", "both"):
        assert labelled(replace(second, evidence=()), source) == replace(second, evidence=())


@pytest.mark.parametrize(
    ("schedule", "stage", "want"),
    [("teacher", "gold", "gold"), ("gold", "", "gold"), ("both", "", "both"), ("gold", "teacher", "teacher")],
)
def test_each_step_trains_on_the_positives_its_config_names(
    tokenizer, store, tmp_path, monkeypatch, schedule, stage, want
) -> None:
    """data.positives_from labels the schedule's steps; the pooling stage takes objective.pooling_positives,
    or the schedule's when it is empty; a stage towards gold articles drops the teacher KL (the NCE alone),
    set there or inherited, while the schedule keeps it."""
    from dataclasses import replace

    import imprag.training.loop as loop
    from imprag.training.data import labelled

    calls: list[tuple[float, list[tuple[str, tuple[int, ...]]]]] = []
    original = loop.retrieval_loss

    def spy(scored, examples, stage_name, objective, *args, **kwargs):
        calls.append((objective.teacher_kl_weight, [(e.id, e.positives) for e in examples]))
        return original(scored, examples, stage_name, objective, *args, **kwargs)

    monkeypatch.setattr(loop, "retrieval_loss", spy)
    model = ImpRAG(tiny_model("llama"), tokenizer, SPLIT, passages="frozen")
    embedding = replace(model.config.embedding, pooling="mean", query_pooling="attention")
    model.config = replace(model.config, embedding=embedding)
    cfg = config(
        "model.pooling=mean", "model.query_pooling=attention", "objective.pooling_steps=2",
        f"data.positives_from={schedule}", f"objective.pooling_positives='{stage}'",
        "objective.teacher_kl_weight=0.5", "data.teacher_top_m=4",
    )  # fmt: skip
    t = Trainer(model, TrainingData({"retrieval": batch()}, store, cfg.data.mix, seed=0), cfg, tmp_path)
    t.run(progress=False)
    by_id = {e.id: e for e in batch()}
    assert len(calls) == cfg.total_steps + 2
    for n, (kl, seen) in enumerate(calls):
        source = schedule if n < cfg.total_steps else want
        assert all(positives == labelled(by_id[i], source).positives for i, positives in seen), (n, seen)
        assert kl == (0.0 if n >= cfg.total_steps and want == "gold" else 0.5)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert (want == "gold") == all("j_teacher" not in r for r in log if r.get("stage") == "pooling")
    assert all("j_teacher" in r for r in log if r.get("stage") == "warmup")  # the schedule kept its KL
