"""The training loop on a tiny random llama (fp32, no autocast): sequences and answer log-probs against
naive recomputes, exact resume, what learns (LoRA / full fine-tuning), the retrieval loss falling, NaN and
config guards, and the exported model loading in imprag and in stock peft."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from safetensors.torch import load_file
from synthetic import examples as synthetic_examples
from synthetic import passage_store
from torch.testing import assert_close

from imprag import ImpRAG, LayerSplit
from imprag.config import ConfigError, ImpRAGConfig
from imprag.distributed import Dist
from imprag.retrieval.store import PassageStore
from imprag.training.checkpoint import checkpoints, trainable_state
from imprag.training.config import TrainConfig, load_train_config
from imprag.training.data import Example, TrainingData
from imprag.training.loop import MAX_ANSWER_TOKENS, Trainer, TrainingError, answer_logprobs, build_sequences
from imprag.training.losses import distillation_kl, multi_label_nce

# 2 epochs x 3 steps of 4 examples, the first epoch warmup; checkpoints at epoch ends (checkpoint_every=50).
BASE = [
    "data.positives=2",
    "data.hard_negatives=1",
    "data.random_negatives=3",
    "optim.batch_size=4",
    "optim.epochs=2",
    "optim.steps_per_epoch=3",
    "optim.warmup_steps=1",
    "optim.lr=0.005",
    "objective.warmup_epochs=1",
    "objective.read_k=2",
    "model.dtype=float32",
    "engine.autocast=false",
]
PROMPT = ["Q: What is the capital of Veloria? A:"]


pytestmark = pytest.mark.usefixtures("one_thread")


def config(*overrides: str) -> TrainConfig:
    return load_train_config(None, [*BASE, *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PassageStore:
    return passage_store(tmp_path_factory.mktemp("store") / "p.sqlite", 40)


def examples(n_ret: int = 12, n_ins: int = 6) -> dict[str, list[Example]]:
    return synthetic_examples(n_ret, n_ins)


def training_data(store: PassageStore, mix=(0.6, 0.3, 0.1), **sizes: int) -> TrainingData:
    return TrainingData(examples(**sizes), store, mix, seed=0)


def tiny(tokenizer) -> ImpRAG:
    return ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(b=1, t=3))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def steps(out: Path) -> list[int]:
    return [r["step"] for r in records(out) if "health" not in r]


class Killed(Exception):
    pass


@contextmanager
def dying_at_step(n: int, monkeypatch):
    """Within the block, the process "dies" (raises Killed) when it starts its n-th training step."""
    original, calls = Trainer.train_step, []

    def dying(self, step):
        calls.append(step)
        if len(calls) == n:
            raise Killed
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dying)
    try:
        yield
    finally:
        monkeypatch.setattr(Trainer, "train_step", original)


# -- sequences and answer log-probabilities ------------------------------------------------------------


def test_build_sequences_marks_exactly_the_positions_that_predict_answer_tokens(tokenizer) -> None:
    model = tiny(tokenizer)
    prompts = ["Q: What is the capital of Veloria? A:", "Recover A:", "Mozart was"]
    answers = [" Quantum City\n", " ok\n", " a composer from Salzburg.\n"]
    reads = [2, 0, 1]
    seqs = build_sequences(model, prompts, answers, reads)
    l_max = model.config.reader.l_max
    rows = []
    for i, (p, a, k) in enumerate(zip(prompts, answers, reads, strict=True)):
        p_ids = tokenizer(p)["input_ids"]
        a_ids = tokenizer(a, add_special_tokens=False)["input_ids"]
        n = len(p_ids) + len(a_ids)
        assert seqs.batch.input_ids[i, :n].tolist() == p_ids + a_ids
        assert int(seqs.batch.valid[i].sum()) == n
        assert seqs.batch.positions[i, :n].tolist() == list(range(k * l_max, k * l_max + n))
        # the last prompt token predicts the first answer token; the last answer token predicts nothing
        assert seqs.answer[i].nonzero().flatten().tolist() == list(range(len(p_ids) - 1, n - 1))
        assert seqs.targets[i][seqs.answer[i]].tolist() == a_ids
        rows += [i] * len(a_ids)
    assert seqs.rows.tolist() == rows
    with pytest.raises(TrainingError, match="no tokens"):
        build_sequences(model, ["Q: x A:"], [""], [0])


def test_long_answers_are_cut_to_max_answer_tokens(tokenizer) -> None:
    model = tiny(tokenizer)
    answer = " Quantum City" * 200
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(a_ids) > MAX_ANSWER_TOKENS
    seqs = build_sequences(model, PROMPT, [answer], [0])
    assert int(seqs.answer.sum()) == MAX_ANSWER_TOKENS
    assert seqs.targets[seqs.answer].tolist() == a_ids[:MAX_ANSWER_TOKENS]


def naive_answer_logprobs(model, prompts, answers, passages, reduce):
    """Full (B, T, V) logits, log_softmax, and the answer tokens' log-probs picked by hand."""
    reads = [len(p) for p in passages] if passages else [0] * len(prompts)
    seqs = build_sequences(model, prompts, answers, reads)
    read = model.passage_batch(passages) if passages else None
    logp = F.log_softmax(model.forward(seqs.batch, read).float(), dim=-1)  # (B, T, V)
    per_row, tokens = [], []
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        start = len(model.tokenizer(p)["input_ids"]) - 1
        a_ids = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        lp = torch.stack([logp[i, start + j, tok] for j, tok in enumerate(a_ids)])
        tokens.append(lp)
        per_row.append(lp.sum() if reduce == "sum" else lp.mean())
    return torch.stack(per_row), -torch.cat(tokens).mean()


def test_gold_and_teacher_positives_together_score_every_candidate(tokenizer, store, tmp_path) -> None:
    """data.positives_from=both: each query's gold article joins its teacher positives, so an item has
    more candidates than data.positives + data.hard_negatives; every one is scored (none cropped) and the
    NCE takes the gold article and the teacher's as positives; ra-it still reads the teacher's."""
    cfg = config("data.mix=[1, 0, 0]", "data.positives_from=both")
    batch = [replace(e, evidence=(e.positives[0] + 20,)) for e in examples()["retrieval"][::2][:4]]
    model = tiny(tokenizer)
    trainer = Trainer(model, training_data(store, mix=cfg.data.mix), cfg, tmp_path)
    _, metrics = trainer._retrieval(batch, 0, "warmup")
    candidates = [(*e.evidence, *e.positives, *e.negatives) for e in batch]
    assert all(len(c) > cfg.data.positives + cfg.data.hard_negatives for c in candidates)
    rows = list(dict.fromkeys([r for c in candidates for r in c] + trainer.data.random_rows(0, 0, 3)))
    # more than a width of len(batch) * (positives + hard negatives) + random rows would have kept
    assert len(rows) > len(batch) * (cfg.data.positives + cfg.data.hard_negatives) + 3
    with torch.no_grad():
        e_p = model.embed_passages([p.content for p in store.get(rows)])
        e_q = model.embed_queries([e.prompt for e in batch], k=cfg.objective.read_k)
    positives = torch.tensor([[r in e.evidence or r in e.positives for r in rows] for e in batch])
    expected = multi_label_nce(e_q @ e_p.T, positives, temperature=cfg.objective.tau_r)
    assert metrics["j_ret"] == pytest.approx(expected.item(), abs=2e-4)
    teacher_only = multi_label_nce(
        e_q @ e_p.T,
        torch.tensor([[r in e.positives for r in rows] for e in batch]),
        temperature=cfg.objective.tau_r,
    )
    assert abs(teacher_only.item() - expected.item()) > 1e-3

    pasted = []
    ra_it = Trainer(
        tiny(tokenizer),
        training_data(store, mix=cfg.data.mix),
        config("data.mix=[1, 0, 0]", "data.positives_from=gold", "objective.system=ra-it"),
        tmp_path / "ra-it",
    )
    ra_it._pasted = lambda readers: pasted.extend(readers) or (torch.zeros(()), {})
    ra_it._retrieval(batch, 0, "warmup")
    assert [e.positives for e in pasted] == [e.positives for e in batch]  # the teacher's, not the gold


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("reading", [False, True])
def test_answer_logprobs_equal_a_naive_recompute(tokenizer, reduce: str, reading: bool) -> None:
    model = tiny(tokenizer)
    prompts = ["Q: What is the capital of Veloria? A:", "Is this statement true? The sky is blue. A:"]
    answers = [" Quantum City\n", " True\n"]
    passages = [["The capital of Veloria is Quantum City.", "Rome is the capital of Italy."], ["The sky."]]
    passages = passages if reading else None
    reads = [len(p) for p in passages] if passages else [0, 0]
    seqs = build_sequences(model, prompts, answers, reads)
    read = model.passage_batch(passages) if passages else None
    per_row, j_gen = answer_logprobs(model, seqs, read, reduce)
    expected_rows, expected_gen = naive_answer_logprobs(model, prompts, answers, passages, reduce)
    assert per_row.shape == (2,)
    assert_close(per_row, expected_rows, atol=1e-5, rtol=1e-5)
    assert_close(j_gen, expected_gen, atol=1e-5, rtol=1e-5)
    # each row alone gives the same value (no leakage between rows or their padding)
    for i in range(2):
        alone = build_sequences(model, prompts[i : i + 1], answers[i : i + 1], reads[i : i + 1])
        read_i = model.passage_batch(passages[i : i + 1]) if passages else None
        assert_close(
            answer_logprobs(model, alone, read_i, reduce)[0], per_row[i : i + 1], atol=1e-5, rtol=1e-5
        )
    if reading:  # the passages are read: without them the log-probs differ
        blind = answer_logprobs(model, build_sequences(model, prompts, answers, reads), None, reduce)[0]
        assert (blind - per_row).abs().max() > 1e-3


# -- the trainer ------------------------------------------------------------------------------------


def health_stub(model: ImpRAG) -> dict:
    return {"recall": 0.5}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tokenizer, store):
    """The whole schedule in one go, from a model loaded with from_pretrained (so the adapter names a
    loadable base): (base dir, trained model, run dir, exported model dir)."""
    root = tmp_path_factory.mktemp("full")
    tiny(tokenizer).save_pretrained(root / "base")
    model = ImpRAG.from_pretrained(root / "base", dtype="float32")
    final = Trainer(model, training_data(store), config(), root / "run", health=health_stub).run(
        progress=False
    )
    return root / "base", model, root / "run", final


def test_a_run_logs_every_step_checkpoints_and_exports(full_run) -> None:
    _, model, out, final = full_run
    assert final == out / "model"
    logged = records(out)
    assert steps(out) == [1, 2, 3, 4, 5, 6]
    metrics = [r for r in logged if "health" not in r]
    assert [r["stage"] for r in metrics] == ["warmup"] * 3 + ["distill"] * 3
    assert {r["kind"] for r in metrics} <= {"retrieval", "instruction", "lm"}
    assert all(r["loss"] > 0 and r["grad_norm"] >= 0 for r in metrics)
    # the health check runs at each epoch end, logged after that step
    health = [r for r in logged if "health" in r]
    assert health == [
        {"step": 3, "epoch": 1, "health": {"recall": 0.5}},
        {"step": 6, "epoch": 2, "health": {"recall": 0.5}},
    ]
    assert [p.name for p in checkpoints(out)] == ["step-000003", "step-000006"]
    for folder in (out / "checkpoints" / "step-000006", final):
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "imprag_config.json",
            "train_config.json",
        } <= {p.name for p in folder.iterdir()}
    assert TrainConfig.from_dict(json.loads((final / "train_config.json").read_text())) == config()
    # the final export holds the step-6 weights, and they are the trained model's
    exported = load_file(final / "adapter_model.safetensors")
    saved = load_file(out / "checkpoints" / "step-000006" / "adapter_model.safetensors")
    assert exported and exported.keys() == saved.keys() == trainable_state(model).keys()
    for key, value in trainable_state(model).items():
        assert torch.equal(exported[key], saved[key]) and torch.equal(exported[key], value.cpu()), key


def test_the_logged_learning_rate_is_the_one_each_step_used(full_run) -> None:
    """Linear warmup over 1 step, then cosine to 10% over the other 5 (step n logs the rate of update n)."""
    out = full_run[2]
    lr = [r["lr"] for r in records(out) if "health" not in r]
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    assert lr == pytest.approx([0.005 * f for f in [1.0, *cosine]], rel=1e-9)


def test_a_run_killed_while_exporting_model_warmup_exports_it_on_resume(
    full_run, store, tmp_path, monkeypatch
) -> None:
    """model-warmup is written before the boundary checkpoint: a kill in between resumes before the boundary,
    so it is exported again (a kill after the checkpoint used to lose it for good)."""
    base, _, straight, _ = full_run
    out = tmp_path / "run"
    real = Trainer._export

    def dies_exporting_warmup(self, directory):
        if directory.name == "model-warmup":
            raise Killed
        return real(self, directory)

    monkeypatch.setattr(Trainer, "_export", dies_exporting_warmup)
    with pytest.raises(Killed):
        Trainer(ImpRAG.from_pretrained(base, dtype="float32"), training_data(store), config(), out).run(False)
    monkeypatch.undo()
    assert not (out / "model-warmup").exists() and not checkpoints(out)  # the boundary was not checkpointed
    Trainer(ImpRAG.from_pretrained(base, dtype="float32"), training_data(store), config(), out).run(False)
    a = load_file(straight / "model-warmup" / "adapter_model.safetensors")
    b = load_file(out / "model-warmup" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_adapter_names_a_relative_base_by_its_absolute_path(tokenizer, tmp_path, monkeypatch) -> None:
    from imprag.training.checkpoint import export_model, prepare_model
    from imprag.training.config import EngineConfig

    monkeypatch.chdir(tmp_path)
    tiny(tokenizer).save_pretrained("base")
    model = ImpRAG.from_pretrained("base", dtype="float32")
    prepare_model(model, EngineConfig())
    (tmp_path / "adapter").mkdir()
    export_model(model, tmp_path / "adapter")
    named = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str((tmp_path / "base").resolve())
    monkeypatch.chdir(tmp_path / "adapter")  # loads from anywhere
    assert ImpRAG.from_pretrained(tmp_path / "adapter").split == model.split


def test_lora_trains_only_the_adapters(full_run) -> None:
    _, model, _, _ = full_run
    fresh = dict(tiny_model("llama").named_parameters())
    lora, base = {}, {}
    for name, p in model.model.named_parameters():
        (lora if "lora_" in name else base)[name] = p
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert all(not p.requires_grad for p in base.values())
    assert {n.replace(".base_layer", "") for n in base} == set(fresh)
    for name, p in base.items():
        assert torch.equal(p, fresh[name.replace(".base_layer", "")]), name
    # lora_B starts at zero: every adapter in every layer (all groups train) moved
    moved = {name.split(".")[2] for name, p in lora.items() if "lora_B" in name and p.abs().max() > 0}
    assert moved == {"0", "1", "2", "3", "4"}


RUNTIME_CHANGES = ["engine.gradient_checkpointing=true", "engine.keep_checkpoints=5"]


@pytest.mark.parametrize("resumed_with", [[], RUNTIME_CHANGES])
def test_exact_resume_after_an_interruption(
    full_run, tokenizer, store, tmp_path, monkeypatch, resumed_with: list[str]
) -> None:
    """Also when the resumed run changes how it executes (not what it computes): checkpointing on."""
    base, _, straight, _ = full_run
    out = tmp_path / "run"
    model = ImpRAG.from_pretrained(base, dtype="float32")
    with dying_at_step(5, monkeypatch), pytest.raises(Killed):
        Trainer(model, training_data(store), config(), out, health=health_stub).run(progress=False)
    assert [p.name for p in checkpoints(out)] == ["step-000003"]
    assert steps(out) == [1, 2, 3, 4]  # step 4 was logged, then the process died before a checkpoint

    fresh = ImpRAG.from_pretrained(base, dtype="float32")
    trainer = Trainer(fresh, training_data(store), config(*resumed_with), out, health=health_stub)
    assert trainer.step == 3
    assert steps(out) == [1, 2, 3]  # the lines after the checkpoint are dropped (they are written again)
    trainer.run(progress=False)

    assert steps(out) == [1, 2, 3, 4, 5, 6]  # no step twice
    drop = lambda rs: [{k: v for k, v in r.items() if k != "sec"} for r in rs]  # noqa: E731
    assert drop(records(out)) == drop(records(straight))  # the same batches, losses and learning rates
    a = load_file(straight / "model" / "adapter_model.safetensors")
    b = load_file(out / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert_close(b[key], a[key], atol=1e-7, rtol=0, msg=key)


def test_a_centered_run_recalibrates_mu_q_saves_it_and_resumes_exactly(
    full_run, tokenizer, store, tmp_path, monkeypatch
) -> None:
    base = full_run[0]
    cfg = config("model.center=true", "model.center_prompts=8")
    straight = tmp_path / "straight"
    model = ImpRAG.from_pretrained(base, dtype="float32")
    final = Trainer(model, training_data(store), cfg, straight, health=health_stub).run(progress=False)
    # mu_q was re-estimated from the final weights at the last epoch end and exported with the adapter
    center = ImpRAG.from_pretrained(final, dtype="float32").config.embedding.query_center
    assert center is not None and center == model.config.embedding.query_center
    prompts = training_data(store).calibration_prompts(8)
    assert len(prompts) == 8 and prompts[0] != prompts[1]
    assert_close(torch.tensor(center), model.calibrate(prompts))
    epoch1 = ImpRAGConfig.load(straight / "checkpoints" / "step-000003").embedding.query_center
    assert epoch1 is not None and epoch1 != center  # the bottom layers moved, and mu_q with them

    out = tmp_path / "resumed"
    with dying_at_step(5, monkeypatch), pytest.raises(Killed):
        Trainer(ImpRAG.from_pretrained(base, dtype="float32"), training_data(store), cfg, out).run(False)
    fresh = ImpRAG.from_pretrained(base, dtype="float32")
    trainer = Trainer(fresh, training_data(store), cfg, out)
    assert trainer.step == 3 and fresh.config.embedding.query_center == epoch1  # mu_q of the checkpoint
    trainer.run(progress=False)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "sec"} for r in rs if "health" not in r]  # noqa: E731
    assert drop(records(out)) == drop(records(straight))
    assert fresh.config.embedding.query_center == center


def test_the_exported_model_loads_merged_in_imprag_and_in_stock_peft(full_run) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, trained, _, final = full_run
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    loaded = ImpRAG.from_pretrained(final, dtype="float32")
    assert loaded.config == trained.config
    base = ImpRAG.from_pretrained(base_dir, dtype="float32")
    prompts, read = trained.read_batch(PROMPT, [["The capital of Veloria is Quantum City."]])
    with torch.no_grad():
        for passages in (None, read):
            want = trained.forward(prompts, passages)
            assert_close(loaded.forward(prompts, passages), want, atol=1e-4, rtol=1e-4)
            assert (base.forward(prompts, passages) - want).abs().max() > 1e-3  # training changed the model
        ids = torch.tensor([base.tokenizer(PROMPT[0])["input_ids"]])
        stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), final).eval()
        assert_close(stock(input_ids=ids).logits, loaded.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_train_groups_choose_where_lora_adapters_go(tokenizer, store, tmp_path) -> None:
    model = tiny(tokenizer)
    trainer = Trainer(
        model,
        training_data(store),
        config("engine.train_groups=[top]", "engine.lora_targets=[q_proj, down_proj]"),
        tmp_path,
    )
    names = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.4." in n for n in names)  # b=1, t=3: top is layer 4 of 0..4
    assert {n.split(".")[-4] for n in names} == {"q_proj", "down_proj"}
    assert len(trainer.params) == len(names) == 4  # lora_A and lora_B of two projections
    with pytest.raises(ConfigError, match="nope"):  # a target matching no module
        Trainer(tiny(tokenizer), training_data(store), config("engine.lora_targets=[nope]"), tmp_path / "x")


def test_full_fine_tuning_changes_only_the_chosen_groups(tokenizer, store, tmp_path) -> None:
    cfg = config(
        "engine.lora_r=0",
        "engine.train_groups=[bottom]",
        "optim.epochs=1",
        "optim.steps_per_epoch=2",
        "objective.warmup_epochs=1",
    )
    model = tiny(tokenizer)
    final = Trainer(model, training_data(store, mix=(0.5, 0.5, 0.0)), cfg, tmp_path / "run").run(
        progress=False
    )
    before = dict(tiny_model("llama").named_parameters())
    after = dict(model.model.named_parameters())
    assert after.keys() == before.keys()
    for name, p in after.items():
        layer = int(name.split(".")[2]) if ".layers." in name else None
        if layer in (0, 1):  # bottom = layers 0..b
            assert p.requires_grad and not torch.equal(p, before[name]), name
        else:  # higher layers, embeddings, final norm and LM head
            assert not p.requires_grad and torch.equal(p, before[name]), name
    # the export is a full checkpoint with the trained weights
    loaded = ImpRAG.from_pretrained(final, dtype="float32")
    assert_close(dict(loaded.model.named_parameters()), after)
    # a resumed run restores them from the checkpoint
    again = tiny(tokenizer)
    assert Trainer(again, training_data(store, mix=(0.5, 0.5, 0.0)), cfg, tmp_path / "run").step == 2
    assert_close(dict(again.model.named_parameters()), after)


def test_checkpoints_every_n_steps_at_epoch_ends_and_the_end_keeping_the_newest(
    tokenizer, store, tmp_path
) -> None:
    cfg = config("data.mix=[0, 1, 0]", "engine.checkpoint_every=2", "engine.keep_checkpoints=3")
    Trainer(tiny(tokenizer), training_data(store, mix=cfg.data.mix), cfg, tmp_path).run(progress=False)
    # written after steps 2, 3 (epoch end), 4 and 6 (the end); the oldest is deleted
    kept = ["step-000003", "step-000004", "step-000006"]
    assert [p.name for p in checkpoints(tmp_path)] == kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == kept  # nothing else left behind
    state = torch.load(tmp_path / "checkpoints" / "step-000004" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and {"optimizer", "scheduler", "rng"} <= state.keys()


def test_full_fine_tuning_of_a_bf16_model_is_refused(tokenizer, store, tmp_path) -> None:
    model = ImpRAG(tiny_model("llama").to(torch.bfloat16), tokenizer, LayerSplit(b=1, t=3))
    with pytest.raises(ConfigError, match=r"lora_r=0.*float32"):
        Trainer(model, training_data(store), config("engine.lora_r=0"), tmp_path)


def test_batch_size_must_divide_over_the_processes(tokenizer, store, tmp_path) -> None:
    with pytest.raises(TrainingError, match=r"batch_size=4 does not divide into 3 processes"):
        Trainer(tiny(tokenizer), training_data(store), config(), tmp_path, dist=Dist(rank=0, world=3))


def test_a_run_directory_of_another_config_is_refused(tokenizer, store, tmp_path) -> None:
    # Before any checkpoint nothing is lost: a new config simply replaces the old one.
    Trainer(tiny(tokenizer), training_data(store), config("optim.lr=0.5"), tmp_path)
    Trainer(tiny(tokenizer), training_data(store), config(), tmp_path).train_step(0)
    trainer = Trainer(tiny(tokenizer), training_data(store), config(), tmp_path)
    trainer._checkpoint()
    saved = (tmp_path / "train_config.json").read_text()
    assert json.loads(saved)["optim"]["lr"] != 0.5
    # With checkpoints, resuming them under another config is refused.
    with pytest.raises(
        TrainingError, match=r"another training config .*differing: optim\.lr=[0-9.e-]+->0\.5\)"
    ):
        Trainer(tiny(tokenizer), training_data(store), config("optim.lr=0.5"), tmp_path)
    assert (tmp_path / "train_config.json").read_text() == saved  # the first run's config is kept


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tokenizer, store, tmp_path, monkeypatch) -> None:
    original = Trainer._generation
    calls: list[int] = []

    def poisoned(self, examples):
        calls.append(1)
        loss, metrics = original(self, examples)
        return (loss * float("nan") if len(calls) == 2 else loss), metrics

    monkeypatch.setattr(Trainer, "_generation", poisoned)
    model = tiny(tokenizer)
    cfg = config("engine.checkpoint_every=1")
    trainer = Trainer(model, training_data(store, mix=(0.0, 1.0, 0.0)), cfg, tmp_path)
    with pytest.raises(TrainingError, match=r"not finite at step 2.*step-000001"):
        trainer.run(progress=False)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000001"]
    assert steps(tmp_path) == [1]
    # the NaN never reached the weights: they are still those of the checkpoint
    saved = load_file(tmp_path / "checkpoints" / "step-000001" / "adapter_model.safetensors")
    state = trainable_state(model)
    assert saved.keys() == state.keys()
    for key, value in state.items():
        assert torch.isfinite(value).all() and torch.equal(value, saved[key]), key


def test_the_warmup_retrieval_loss_decreases(tokenizer, store, tmp_path) -> None:
    cfg = config(
        "data.mix=[1, 0, 0]",
        "data.random_negatives=0",
        "optim.epochs=1",
        "optim.steps_per_epoch=12",
        "objective.warmup_epochs=1",
        "objective.ret_weight=10.0",
        "optim.lr=0.01",
    )
    data = training_data(store, mix=cfg.data.mix, n_ret=4)
    Trainer(tiny(tokenizer), data, cfg, tmp_path).run(progress=False)
    logged = [r for r in records(tmp_path) if "health" not in r]
    assert {r["kind"] for r in logged} == {"retrieval"} and {r["stage"] for r in logged} == {"warmup"}
    j_ret = [r["j_ret"] for r in logged]
    assert sum(j_ret[-3:]) / 3 < 0.7 * j_ret[0], j_ret


def test_a_warmup_retrieval_step_scores_every_distinct_candidate(tokenizer, store, tmp_path) -> None:
    """j_ret of one step against a recompute: each query against the unique candidates of the batch
    (positives, hard negatives, random rows), its own positives as labels."""
    cfg = config("data.mix=[1, 0, 0]")
    data = training_data(store, mix=cfg.data.mix)
    model = tiny(tokenizer)
    trainer = Trainer(model, data, cfg, tmp_path)
    _, batch = data.batch(0, 4)
    _, metrics = trainer._retrieval(batch, 0, "warmup")
    rows = list(dict.fromkeys([r for e in batch for r in e.candidates] + data.random_rows(0, 0, 3)))
    assert len(rows) < 4 * 3 + 3  # neighbouring items share candidates: they count once
    with torch.no_grad():
        e_p = model.embed_passages([p.content for p in store.get(rows)])
        e_q = model.embed_queries([e.prompt for e in batch], k=cfg.objective.read_k)
    scores = e_q @ e_p.T
    positives = torch.tensor([[r in e.positives for r in rows] for e in batch])
    expected = multi_label_nce(scores, positives, temperature=cfg.objective.tau_r)
    assert metrics["j_ret"] == pytest.approx(expected.item(), abs=2e-4)
    top1 = [rows[j] for j in scores.argmax(dim=1).tolist()]
    assert metrics["top1_positive"] == pytest.approx(
        sum(t in e.positives for t, e in zip(top1, batch, strict=True)) / 4, abs=1e-3
    )


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_distillation_targets_score_each_candidate_alone(tokenizer, store, tmp_path, reduce: str) -> None:
    cfg = config("data.mix=[1, 0, 0]", f"objective.answer_logprob={reduce}")
    trainer = Trainer(tiny(tokenizer), training_data(store, mix=cfg.data.mix), cfg, tmp_path)
    model = trainer.model
    batch = [
        Example(
            "a",
            "retrieval",
            "Q: What is the capital of Veloria? A:",
            " Quantum City\n",
            tuple(range(7)),
            (30, 31),
        ),
        Example("b", "retrieval", "Q: Where is Mozart from? A:", " Salzburg\n", (8, 9), (32,)),
        Example("c", "retrieval", "Q: Is the sky blue? A:", " True\n", tuple(range(10, 18)), (33, 34)),
    ]  # 9 + 3 + 10 = 22 candidates: more than one scoring chunk
    texts = [[p.content for p in store.get(e.candidates)] for e in batch]
    got = trainer._candidate_logprobs(batch, [list(e.candidates) for e in batch])
    assert got.shape == (3, 10)
    for i, (e, row) in enumerate(zip(batch, texts, strict=True)):
        for j, text in enumerate(row):
            seqs = build_sequences(model, [e.prompt], [e.answer], [1])
            want, _ = answer_logprobs(model, seqs, model.passage_batch([[text]]), reduce)
            assert_close(got[i, j], want[0].detach(), atol=1e-5, rtol=1e-5)
        assert torch.equal(got[i, len(row) :], torch.zeros(10 - len(row)))


def test_the_distillation_stage_trains(tokenizer, store, tmp_path) -> None:
    cfg = config(
        "data.mix=[1, 0, 0]",
        "objective.warmup_epochs=0",
        "optim.epochs=1",
        "optim.steps_per_epoch=2",
    )
    model = tiny(tokenizer)
    trainer = Trainer(model, training_data(store, mix=cfg.data.mix), cfg, tmp_path)
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    trainer.run(progress=False)
    logged = [r for r in records(tmp_path) if "health" not in r]
    assert [(r["stage"], r["kind"]) for r in logged] == [("distill", "retrieval")] * 2
    assert all(r["j_ret"] >= 0 and r["j_gen"] > 0 for r in logged)
    assert any(not torch.equal(v, before[k]) for k, v in trainable_state(model).items())
    # the distillation loss of one step against a recompute from its pieces
    _, batch = trainer.data.batch(0, 4)
    _, metrics = trainer._retrieval(batch, 0, "distill")
    texts = [[p.content for p in store.get(e.candidates)] for e in batch]
    target = trainer._candidate_logprobs(batch, [list(e.candidates) for e in batch])
    with torch.no_grad():
        e_q = model.embed_queries([e.prompt for e in batch], k=cfg.objective.read_k)
        own = torch.stack([model.embed_passages(row) for row in texts])  # (4, 3, D): 3 candidates each
    scores = torch.einsum("md,mcd->mc", e_q, own)
    expected = distillation_kl(scores, target, tau_r=cfg.objective.tau_r, tau_t=cfg.objective.tau_t)
    assert metrics["j_ret"] == pytest.approx(expected.item(), abs=2e-4)


def test_a_run_saved_before_new_config_fields_existed_still_matches_its_config() -> None:
    from imprag.training.loop import _normalized

    saved = json.loads(json.dumps(config().to_dict()))
    for field in ("pooling", "center", "center_prompts"):  # added after the first runs were made
        del saved["model"][field]
    assert _normalized(saved) == json.loads(json.dumps(config().to_dict()))
    saved["optim"]["lr"] = 0.5
    assert _normalized(saved) != json.loads(json.dumps(config().to_dict()))
    assert _normalized({"optim": {"bogus": 1}}) is None


def test_gradient_checkpointing_trains_exactly_like_the_plain_loop(
    tokenizer, store, full_run, tmp_path
) -> None:
    """The whole schedule (warmup and distillation, every batch kind) with engine.gradient_checkpointing:
    the same losses at every step and the same trained weights as the plain run."""
    _, plain, plain_out, _ = full_run
    model = ImpRAG.from_pretrained(full_run[0], dtype="float32")
    Trainer(
        model,
        training_data(store),
        config("engine.gradient_checkpointing=true"),
        tmp_path,
        health=health_stub,
    ).run(progress=False)
    assert model.backbone.gradient_checkpointing
    want = [{k: v for k, v in r.items() if k != "sec"} for r in records(plain_out)]
    got = [{k: v for k, v in r.items() if k != "sec"} for r in records(tmp_path)]
    assert {r["kind"] for r in want if "kind" in r} == {"retrieval", "instruction", "lm"}
    assert {r["stage"] for r in want if "stage" in r} == {"warmup", "distill"}
    assert got == want  # every logged value (losses, grad norm, top-1 positive, lr) at every step
    trained, reference = trainable_state(model), trainable_state(plain)
    assert trained.keys() == reference.keys()
    for name, value in reference.items():
        assert_close(trained[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_a_fresh_start_drops_the_log_of_an_attempt_that_left_no_checkpoint(
    tokenizer, store, tmp_path
) -> None:
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 2, "kind": "from a dead attempt"}) + "\n")
    Trainer(tiny(tokenizer), training_data(store), config(), tmp_path).run(progress=False)
    assert steps(tmp_path) == list(range(1, 7))
    assert not any(r.get("kind") == "from a dead attempt" for r in records(tmp_path))


def test_query_lora_r_raises_the_rank_of_layer_bs_query_projection_alone(tokenizer, tmp_path) -> None:
    """engine.query_lora_r: layer b's q_proj (the map onto E_q) gets its own rank at the same alpha / r;
    every other adapter, layer 11's q_proj included (a "layers.1" pattern must not match it), keeps lora_r;
    the exported adapter reloads to the same E_q."""
    from peft.tuners.lora import LoraLayer

    from imprag.training.checkpoint import export_model, prepare_model
    from imprag.training.config import EngineConfig

    base = tmp_path / "base"
    ImpRAG(tiny_model("llama", num_hidden_layers=12), tokenizer, LayerSplit(1, 3)).save_pretrained(base)
    model = ImpRAG.from_pretrained(base, dtype="float32")
    prepare_model(model, EngineConfig(lora_r=4, lora_alpha=8, query_lora_r=16))
    ranks = {n: p.shape[0] for n, p in model.model.named_parameters() if "lora_A" in n}
    query = [n for n in ranks if ".layers.1.self_attn.q_proj." in n]
    assert len(query) == 1 and ranks[query[0]] == 16
    assert {r for n, r in ranks.items() if n not in query} == {4}
    assert any(".layers.11.self_attn.q_proj." in n for n in ranks)
    scaling = {n: m.scaling["default"] for n, m in model.model.named_modules() if isinstance(m, LoraLayer)}
    assert set(scaling.values()) == {2.0}  # alpha / r everywhere: 8 / 4 and 32 / 16
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    prompts = ["Q: What is 7? A:", "Q: Where is Rome? A:"]
    want = model.embed_queries(prompts)
    (tmp_path / "adapter").mkdir()
    export_model(model, tmp_path / "adapter")
    assert_close(ImpRAG.from_pretrained(tmp_path / "adapter", dtype="float32").embed_queries(prompts), want)
    with pytest.raises(ConfigError, match=r"needs engine\.lora_r > 0"):
        load_train_config(None, ["engine.query_lora_r=16", "engine.lora_r=0", "model.dtype=float32"])
