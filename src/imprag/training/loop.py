"""The training loop: one loop for 1..N processes (method page, "Training").

Every step is one kind of global batch (`training/data.py`); each process takes its equal slice.

    retrieval step   E_p of the slice's candidates (positives + hard negatives + a few random corpus
                     passages), gathered from every process as in-batch negatives; E_q of the prompts;
                     s = E_q . E_p. The positives are the teacher's pseudo labels, or the items' gold
                     articles (data.positives_from, `training/data.py` `labelled`).
                     stage 1 (warmup):  J_ret = multi-label NCE against the positives
                     stage 2 (distill): J_ret = KL(P_T || P_R) over the item's own candidates, P_T from the
                                        answer's log-likelihood reading each single candidate (no grad)
                     J_gen: the answer, reading the retriever's current top read_k own candidates
    instruction/lm   J_gen only, reading nothing

Gradients are averaged over processes with one all_reduce of a flat buffer per step (DDP's reducer needs
the forward to go through its wrapper; our layer loop calls the modules directly). The generation loss is
scaled by each process's share of the global answer tokens and the retrieval losses are means over equal
slices, so the averaged gradient is the global-batch gradient (up to the in-batch passage terms that
`Dist.all_gather` drops).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from imprag.config import IMPRAG_CONFIG_NAME, ConfigError, ImpRAGConfig, differing_fields
from imprag.distributed import Dist
from imprag.errors import ImpragError
from imprag.hardware import auto_dtype
from imprag.io import LockedError, atomic_directory, atomic_write_text, check_output, writer_lock
from imprag.model.imprag import ImpRAG
from imprag.model.reader import TokenBatch, batch_tokens, tokenize
from imprag.retrieval.store import PassageStore
from imprag.training.checkpoint import (
    export_model,
    latest_checkpoint,
    param_groups,
    prepare_model,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from imprag.training.config import TrainConfig
from imprag.training.data import Example, TrainingData, labelled, readers_first
from imprag.training.losses import answer_log_likelihood
from imprag.training.retrieval import (
    CorpusCandidates,
    SampledCandidates,
    Scored,
    choose_reads,
    retrieval_loss,
)

__all__ = ["Sequences", "Trainer", "TrainingError", "answer_logprobs", "build_sequences"]

log = logging.getLogger(__name__)

MAX_ANSWER_TOKENS = 160
RESTART = "check the data, or lower optim.lr and train into a new --out directory"
SCORE_CHUNK = 16  # single-candidate forwards per chunk when scoring P_T


class TrainingError(ImpragError, RuntimeError):
    """Training cannot go on (a NaN loss, a run directory of another config); says what to do."""


@dataclass
class Sequences:
    """Prompt + answer token rows laid out after their passages, with the answer positions marked."""

    batch: TokenBatch  # (B, T)
    targets: Tensor  # (B, T) the next token at each position
    answer: Tensor  # (B, T) bool: the target at this position is an answer token

    @property
    def rows(self) -> Tensor:
        """Row of each selected answer position, (n,)."""
        return self.answer.nonzero()[:, 0]


def build_sequences(
    model: ImpRAG, prompts: Sequence[str], answers: Sequence[str], reads: Sequence[int]
) -> Sequences:
    """Token rows `prompt + answer`; row i starts at reads[i] * l_max (after the passages it reads)."""
    prompt_ids = tokenize(model.tokenizer, prompts, "prompt")
    answer_ids = [
        ids[:MAX_ANSWER_TOKENS]
        for ids in model.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    ]
    if any(not ids for ids in answer_ids):
        raise TrainingError("an answer has no tokens; every training example needs a non-empty answer")
    offsets = [model.config.reader.prompt_start(n) for n in reads]
    seqs = [p + a for p, a in zip(prompt_ids, answer_ids, strict=True)]
    model._check_lengths(seqs, offsets, 0)
    batch = batch_tokens(seqs, offsets, model.pad_id)
    targets = torch.full_like(batch.input_ids, model.pad_id)
    targets[:, :-1] = batch.input_ids[:, 1:]
    answer = torch.zeros_like(batch.valid)
    for i, (p, a) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
        answer[i, len(p) - 1 : len(p) + len(a) - 1] = True  # positions that predict answer tokens
    return Sequences(batch, targets, answer)


def answer_logprobs(
    model: ImpRAG, seqs: Sequences, passages: TokenBatch | None, reduce: str = "sum"
) -> tuple[Tensor, Tensor]:
    """Per-row log P(answer | passages, prompt) (B,) and J_gen, the token-level mean NLL (a scalar):
    `losses.answer_log_likelihood` on the logits of the answer positions alone."""
    logits = model.forward(seqs.batch, passages, select=seqs.answer)  # (n, V)
    targets = seqs.targets[seqs.answer].to(logits.device)
    rows = seqs.rows.to(logits.device)
    return answer_log_likelihood(logits, targets, rows, seqs.answer.shape[0], reduce)


def autocast_enabled(setting: bool | str, device: torch.device) -> bool:
    """engine.autocast resolved: "auto" computes in bf16 only where bf16 is the device's fast dtype."""
    if setting == "auto":
        enabled = auto_dtype(device) == torch.bfloat16
        log.info("engine.autocast auto -> %s", "bf16" if enabled else "off (fp32)")
        return enabled
    return bool(setting)


class Trainer:
    """Trains `model` on `data` under `config`, writing checkpoints and logs into `out` (resumes from the
    newest complete checkpoint there)."""

    def __init__(
        self,
        model: ImpRAG,
        data: TrainingData,
        config: TrainConfig,
        out: str | Path,
        dist: Dist | None = None,
        health: Any = None,
        corpus: CorpusCandidates | None = None,
    ) -> None:
        """`corpus`: every passage's E_p for objective.negatives=corpus (train() reads the index's); None
        encodes the passage store with the model."""
        self.model, self.data, self.config, self.out = model, data, config, Path(out)
        self.dist = dist or Dist()
        self.health = health
        for name, size in (("batch_size", config.optim.batch_size),
                           ("retrieval_batch_size", config.retrieval_batch_size)):  # fmt: skip
            if size % self.dist.world:
                raise TrainingError(f"optim.{name}={size} does not divide into {self.dist.world} processes")
        torch.manual_seed(config.optim.seed)
        if model.config.passages != config.model.passages:
            model.config = replace(model.config, passages=config.model.passages)
        self.params = prepare_model(model, config.engine)
        self.candidates: SampledCandidates | CorpusCandidates
        if config.objective.negatives == "corpus":
            self.candidates = corpus or CorpusCandidates.encode(model, data.store)
            self.candidates.refresh_every = config.objective.refresh_every
        else:
            self.candidates = SampledCandidates(model, data, config, self.dist)
        self.autocast = autocast_enabled(config.engine.autocast, model.device)
        model.backbone.gradient_checkpointing = config.engine.gradient_checkpointing
        opt = config.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.params, model.query_scorer, opt.query_scorer_lr),
            lr=opt.lr,
            weight_decay=opt.weight_decay,
        )
        total = config.total_steps

        def schedule(step: int) -> float:
            if step < opt.warmup_steps:
                return (step + 1) / opt.warmup_steps
            progress = (step - opt.warmup_steps) / max(1, total - opt.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self._resume()
        if config.model.center and self.step == 0:
            self._calibrate()
        elif not config.model.center and model.config.embedding.query_center is not None:
            log.info("model.center=false: scoring uncentered (the starting model's mu_q is dropped)")
            model.config = replace(model.config, embedding=replace(model.config.embedding, query_center=None))

    # -- run ------------------------------------------------------------------------------------------

    def run(self, progress: bool = True) -> Path:
        """Train to the end of the schedule; returns the exported model directory OUT/model."""
        cfg, total = self.config, self.config.total_steps
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (progress and self.dist.is_main),
        )
        while self.step < total:
            started = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses (train_step advances it)
            metrics = self.train_step(self.step)
            self.step += 1
            metrics.update(
                step=self.step,
                lr=lr,
                sec=round(time.perf_counter() - started, 3),
            )
            if self.step % cfg.engine.log_every == 0:
                self._log(metrics)
            bar.update(1)
            bar.set_postfix({k: metrics[k] for k in ("stage", "kind", "j_gen", "j_ret") if k in metrics})
            epoch_end = self.step % cfg.optim.steps_per_epoch == 0
            if epoch_end and cfg.model.center:
                self._calibrate()
            if epoch_end and self.health is not None and self.dist.is_main:
                report = self.health(self.model)
                self._log(
                    {"step": self.step, "epoch": self.step // cfg.optim.steps_per_epoch, "health": report}
                )
                log.info("epoch %d retrieval health: %s", self.step // cfg.optim.steps_per_epoch, report)
            if self.step == cfg.objective.warmup_epochs * cfg.optim.steps_per_epoch and self.step < total:
                # Stage 1 alone: the `imprag-warmup` system. Exported before the boundary's checkpoint, so a
                # run killed in between resumes before the boundary and exports it again.
                self._export(self.out / "model-warmup")
            if epoch_end or self.step % cfg.engine.checkpoint_every == 0 or self.step == total:
                self._checkpoint()
        bar.close()
        if cfg.objective.pooling_steps:
            self._export(self.out / "model-before-pooling")
            self._pooling_stage(progress)
        return self._export(self.out / "model")

    def _pooling_stage(self, progress: bool) -> None:
        """objective.pooling_steps: retrieval steps that train the query scorer v alone (the config field
        says why). Nothing of it is checkpointed: a run killed here resumes from the schedule's last
        checkpoint and does the whole stage again, the same way (deterministic batches)."""
        cfg, model, o = self.config, self.model, self.config.objective
        scorer = model.query_scorer
        if scorer is None:
            raise TrainingError("objective.pooling_steps needs the attention pooling's scorer v")
        was = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(p is scorer)
        optimizer = torch.optim.Adam([scorer], lr=cfg.optim.pooling_lr)
        size = cfg.retrieval_batch_size
        positives = o.pooling_positives or cfg.data.positives_from
        if positives == "gold":
            o = replace(o, teacher_kl_weight=0.0)
        before = sum(1 for s in range(cfg.total_steps) if self.data.kind_of(s) == "retrieval")
        start = model.config.reader.prompt_start(o.read_k)
        for i in tqdm(range(o.pooling_steps), desc="pooling", disable=not (progress and self.dist.is_main)):
            started, step = time.perf_counter(), cfg.total_steps + i
            examples = self.data.nth("retrieval", before + i, size)[self.dist.rank :: self.dist.world]
            examples = [labelled(e, positives) for e in examples]
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                e_q = model.encode_queries(model.prompt_batch([e.prompt for e in examples], start)).float()
                scored = self.candidates.score(examples, model.index_query(e_q), step, "warmup")
                j_ret, metrics = retrieval_loss(scored, examples, "warmup", o, self._candidate_logprobs)
            j_ret.backward()
            self._average_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self._mean_over_processes(metrics)
            self._log(
                {"stage": "pooling", "kind": "retrieval", "step": step + 1, "lr": cfg.optim.pooling_lr,
                 "scorer_norm": round(float(scorer.detach().norm()), 4), **metrics,
                 "sec": round(time.perf_counter() - started, 3)}
            )  # fmt: skip
        for p, flag in zip(self.params, was, strict=True):
            p.requires_grad_(flag)

    def _mean_over_processes(self, metrics: dict[str, Any], loss: float = 0.0) -> float:
        """Replace each numeric metric by its mean over the processes (rounded to 4 places), in one
        collective with `loss`; returns the mean of `loss`."""
        numeric = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        means = self.dist.mean([loss, *(float(metrics[k]) for k in numeric)])
        metrics.update({k: round(v, 4) for k, v in zip(numeric, means[1:], strict=True)})
        return means[0]

    def _calibrate(self) -> None:
        """Re-estimate mu_q from the current bottom layers (identical on every process: same prompts, same
        weights)."""
        prompts = self.data.calibration_prompts(self.config.model.center_prompts)
        mu = self.model.calibrate(prompts, k=self.config.objective.read_k)  # where training reads E_q
        log.info("mu_q re-estimated at step %d (norm %.1f)", self.step, float(mu.norm()))

    def _export(self, directory: Path) -> Path:
        if self.dist.is_main:
            with atomic_directory(directory, replaces=IMPRAG_CONFIG_NAME) as tmp:
                export_model(self.model, tmp)
                atomic_write_text(
                    tmp / "train_config.json", json.dumps(self.config.to_dict(), indent=2) + "\n"
                )
        self.dist.barrier()
        return directory

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step over the global batch of `step`; returns its logged metrics."""
        size = self.config.optim.batch_size
        kind, batch = self.data.batch(
            step, {"retrieval": self.config.retrieval_batch_size, "instruction": size, "lm": size}
        )
        local = batch[self.dist.rank :: self.dist.world]
        stage = self.config.stage(step)
        device_type = self.model.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast):
            if kind == "retrieval":
                loss, metrics = self._retrieval(local, step, stage)
            else:
                loss, metrics = self._generation(local)
        if self.dist.broadcast_error(not bool(torch.isfinite(loss))):
            raise TrainingError(
                f"the loss is not finite at step {step + 1} ({kind} batch, {metrics}); stopped. The last "
                f"good checkpoint is {latest_checkpoint(self.out) or 'none yet'}; {RESTART}"
            )
        loss.backward()
        self._average_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        if not bool(torch.isfinite(grad_norm)):  # averaged gradients: the same verdict on every process
            raise TrainingError(
                f"the gradient is not finite at step {step + 1} ({kind} batch); stopped before the update. "
                f"The last good checkpoint is {latest_checkpoint(self.out) or 'none yet'}; {RESTART}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Logged values are means over the processes: for `loss` that is the global loss exactly (J_gen is
        # scaled by each process's share of the answer tokens); for the components, the ranks' mean.
        global_loss = self._mean_over_processes(metrics, loss.item())
        return {
            "stage": stage,
            "kind": kind,
            "loss": round(global_loss, 4),
            "grad_norm": round(float(grad_norm), 4),
            **metrics,
        }

    # -- the two kinds of step --------------------------------------------------------------------------

    def _generation(self, examples: list[Example]) -> tuple[Tensor, dict[str, Any]]:
        seqs = build_sequences(
            self.model, [e.prompt for e in examples], [e.answer for e in examples], [0] * len(examples)
        )
        _, j_gen = answer_logprobs(self.model, seqs, None)
        return self._global_token_mean(j_gen, seqs), {"j_gen": round(j_gen.item(), 4)}

    def _pasted(self, examples: list[Example]) -> tuple[Tensor, dict[str, Any]]:
        """RA-IT: the teacher's top read_k passages pasted before the prompt, exactly as the `ra-it` system
        reads at evaluation; J_gen only."""
        from imprag.evaluation.systems import paste_passages
        from imprag.model.generation import RetrievedPassage

        k = self.config.objective.read_k
        pasted = []
        for e in examples:
            read = [RetrievedPassage(p.content) for p in self.data.store.get(list(e.positives[:k]))]
            pasted.append(Example(e.id, "instruction", paste_passages(e.prompt, read), e.answer))
        return self._generation(pasted)

    def _retrieval(self, examples: list[Example], step: int, stage: str) -> tuple[Tensor, dict[str, Any]]:
        """J_ret over every query of the slice (training/retrieval.py) + J_gen over its first batch_size
        share, each reading what the retriever ranks first."""
        model, o = self.model, self.config.objective
        examples = readers_first(examples, self.config.data.read_tasks)
        n_readers = self.config.optim.batch_size // self.dist.world
        if o.system == "ra-it":  # the teacher's positives, pasted as at evaluation
            return self._pasted(examples[:n_readers])
        examples = [labelled(e, self.config.data.positives_from) for e in examples]
        readers = examples[:n_readers]
        start = model.config.reader.prompt_start(o.read_k)  # where training reads E_q (as calibration does)
        e_q = model.encode_queries(model.prompt_batch([e.prompt for e in examples], start)).float()  # (m, D)
        e_q = model.index_query(e_q)  # in the space of the vectors scored against: (m, D), or (m, hidden)
        scored = self.candidates.score(examples, e_q, step, stage)
        j_ret, metrics = retrieval_loss(scored, examples, stage, o, self._candidate_logprobs, len(readers))
        if o.system == "retriever":  # a separate retriever: no generator reads here
            return o.ret_weight * j_ret, metrics
        corpus = isinstance(self.candidates, CorpusCandidates)
        reads = choose_reads(
            Scored(scored.scores[: len(readers)], scored.ids, scored.valid[: len(readers)],
                   scored.positives[: len(readers)], scored.column_of),
            readers, o.read_k, o.read, corpus, self.data.lm_exclude,
        )  # fmt: skip
        texts = _contents(self.data.store, [r for row in reads for r in row])
        seqs = build_sequences(
            model, [e.prompt for e in readers], [e.answer for e in readers], [len(r) for r in reads]
        )
        offsets = [model.config.reader.prompt_start(len(r)) for r in reads]
        passages = model.passage_batch([[texts[r] for r in row] for row in reads], offsets, warn=False)
        _, j_gen = answer_logprobs(model, seqs, passages)
        metrics.update(
            j_gen=round(j_gen.item(), 4),
            read_gold=round(
                sum(bool(set(r) & set(e.evidence)) for r, e in zip(reads, readers, strict=True))
                / len(readers),
                3,
            ),
        )
        return self._global_token_mean(j_gen, seqs) + o.ret_weight * j_ret, metrics

    @torch.no_grad()
    def _candidate_logprobs(self, examples: list[Example], rows: list[list[int]]) -> Tensor:
        """log P_LM(answer | one candidate, prompt) for each item's candidate rows, (m, c) padded with 0."""
        model, reduce = self.model, self.config.objective.answer_logprob
        texts = _contents(self.data.store, [r for row in rows for r in row])
        candidates = [[texts[r] for r in row] for row in rows]
        flat = [(i, text) for i, row in enumerate(candidates) for text in row]
        values: list[Tensor] = []
        for start in range(0, len(flat), SCORE_CHUNK):
            chunk = flat[start : start + SCORE_CHUNK]
            ex = [examples[i] for i, _ in chunk]
            seqs = build_sequences(model, [e.prompt for e in ex], [e.answer for e in ex], [1] * len(chunk))
            passages = model.passage_batch([[text] for _, text in chunk], warn=False)
            lp, _ = answer_logprobs(model, seqs, passages, reduce)
            values.append(lp.float())
        flat_lp = torch.cat(values)
        out = torch.zeros(len(candidates), max(len(r) for r in candidates), device=flat_lp.device)
        n = 0
        for i, row in enumerate(candidates):
            out[i, : len(row)] = flat_lp[n : n + len(row)]
            n += len(row)
        return out

    # -- processes, checkpoints, logs -------------------------------------------------------------------

    def _global_token_mean(self, local_mean: Tensor, seqs: Sequences) -> Tensor:
        """J_gen is a mean over the global batch's answer tokens, not a mean of per-process means: scale
        this process's mean by its share of the tokens, so that averaging gradients over processes gives
        exactly the one-process gradient even when processes hold different numbers of answer tokens."""
        if self.dist.world == 1:
            return local_mean
        count = torch.tensor([float(seqs.answer.sum())], device=local_mean.device)
        total = self.dist.sum_(count.clone())
        return local_mean * (count * self.dist.world / total).to(local_mean)[0]

    def _average_gradients(self) -> None:
        if self.dist.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.dist.sum_(torch.cat([g.flatten() for g in grads]))
        flat /= self.dist.world
        n = 0
        for p, g in zip(self.params, grads, strict=True):
            p.grad = flat[n : n + g.numel()].view_as(g)
            n += g.numel()

    def _checkpoint(self) -> None:
        if self.dist.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
            }
            save_checkpoint(
                self.out, self.step, self.model, self.config, state, self.config.engine.keep_checkpoints
            )
        self.dist.barrier()

    def _resume(self) -> None:
        config_path = self.out / "train_config.json"
        resolved = json.dumps(self.config.to_dict(), indent=2) + "\n"
        found = latest_checkpoint(self.out)
        if found is not None and config_path.is_file():
            before = _comparable(_normalized(json.loads(config_path.read_text(encoding="utf-8"))))
            now = _comparable(json.loads(resolved))
            if before != now:
                differ = (
                    [f"{k}={x!r}->{y!r}" for k, x, y in differing_fields(before, now)]
                    if before is not None
                    else ["(unreadable)"]
                )
                raise TrainingError(
                    f"{self.out} holds checkpoints of a run with another training config ({config_path}; "
                    f"differing: {', '.join(differ)}); resume it with the same config (e.g. the override "
                    "model.dtype=bfloat16 for a run made before dtype 'auto'), or train into a new --out"
                )
        self.dist.barrier()  # every rank has read the old file before rank 0 writes it
        if self.dist.is_main:  # temporary directories of checkpoints a crash interrupted
            for tmp in (self.out / "checkpoints").glob(".step-*.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        if self.dist.is_main:
            atomic_write_text(config_path, resolved)
        if found is None:  # a fresh start: lines of an attempt that died before its first checkpoint go
            if self.dist.is_main:
                (self.out / "log.jsonl").unlink(missing_ok=True)
            return
        state = restore_checkpoint(found, self.model)
        saved = ImpRAGConfig.load(found)  # mu_q as of the checkpoint (it changes at epoch ends only)
        if saved is not None:
            self.model.config = replace(self.model.config, embedding=saved.embedding)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        log.info("resumed from %s (step %d)", found, self.step)
        if self.dist.is_main:  # drop log lines from after the checkpoint (they will be written again)
            path = self.out / "log.jsonl"
            if path.is_file():
                kept = [
                    line
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if _step_of(line) <= self.step
                ]
                atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with (self.out / "log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _contents(store: PassageStore, rows: Sequence[int]) -> dict[int, str]:
    """Store row -> the passage content the model reads (title, newline, text)."""
    unique = list(dict.fromkeys(rows))
    return dict(zip(unique, (p.content for p in store.get(unique)), strict=True))


def _normalized(saved: dict[str, Any]) -> dict[str, Any] | None:
    """A run's saved config with the defaults of fields added since filled in (None: unreadable)."""
    try:
        return json.loads(json.dumps(TrainConfig.from_dict(saved).to_dict()))
    except (ConfigError, TypeError, ValueError):
        return None


RUNTIME_ONLY = ("gradient_checkpointing", "log_every", "checkpoint_every", "keep_checkpoints")
"""Engine fields that change how a run executes, not what it computes: a resume may change them (say,
turning gradient checkpointing on after running out of memory)."""
AFTER_SCHEDULE = {"objective": ("pooling_steps", "pooling_positives"), "optim": ("pooling_lr",)}
"""Fields of the stage after the schedule (objective.pooling_steps): a finished run may be given it."""


def _comparable(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config dict without the `RUNTIME_ONLY` engine fields and the `AFTER_SCHEDULE` ones."""
    if config is None:
        return None
    engine = {k: v for k, v in config.get("engine", {}).items() if k not in RUNTIME_ONLY}
    out = {**config, "engine": engine}
    for section, names in AFTER_SCHEDULE.items():
        out[section] = {k: v for k, v in config.get(section, {}).items() if k not in names}
    return out


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn line: dropped


RUN_MARKS = ("train_config.json", "checkpoints", "pseudo-labels")
"""What a run directory holds from its first minutes on (the label cache, then the config, checkpoints): a
fresh start deletes `log.jsonl` and writes `train_config.json`, so a folder with none of them is refused."""


def train(config: TrainConfig, out: str | Path, dist: Dist | None = None, progress: bool = True) -> Path:
    """Load the model and data a config names, train, and return the exported model directory.

    Rank 0 holds the run folder's writer lock (`imprag.io.writer_lock`) from the first check to the export:
    a second `imprag train` into the same --out (which would resume from the same checkpoints and write
    the same files) stops at once with LockedError, on every rank."""
    out = Path(out)
    check_output(out, RUN_MARKS, kind="run")
    dist = dist or Dist()
    with ExitStack() as stack:
        locked = None
        if dist.is_main:
            try:
                stack.enter_context(writer_lock(out, "imprag train"))
            except LockedError as err:
                locked = err
        if dist.broadcast_error(locked is not None):
            raise locked or LockedError(f"{out} is being written by another run; rank 0 could not lock it")
        return _train(config, out, dist, progress)


def _train(config: TrainConfig, out: Path, dist: Dist, progress: bool) -> Path:
    from imprag.data.benchmark import Benchmark
    from imprag.training.data import load_teacher, load_training_data
    from imprag.training.health import RetrievalHealth

    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():  # one GPU per process under torchrun (untested here: no GPU)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Bad data fails before the model loads; rank 0 computes (and caches) the pseudo labels, the others
    # read them after it.
    failed = None
    if dist.is_main:
        try:
            data = load_training_data(config.data, out, config.optim.seed, progress)
        except Exception as err:  # the other ranks must not wait for labels that never come
            failed = err
    if dist.broadcast_error(failed is not None):
        raise failed or TrainingError("rank 0 could not load the training data")
    if not dist.is_main:
        data = load_training_data(config.data, out, config.optim.seed, progress)
    m = config.model
    dtype = config.weights_dtype()
    if dtype == "auto" and torch.cuda.is_available():  # the model is moved there below
        dtype = auto_dtype("cuda")
    model = ImpRAG.from_pretrained(m.name, b=m.b, t=m.t, dtype=dtype, passages=m.passages)
    if m.pooling is not None or m.query_pooling is not None or m.retrieval_key == "trained":
        # the run decides pooling and the retrieval key (and Trainer, centering), not its starting checkpoint
        own = model.config.embedding
        embedding = replace(own, pooling=m.pooling or own.pooling, query_pooling=m.query_pooling,
                            retrieval_key=m.retrieval_key)  # fmt: skip
        model.config = replace(model.config, embedding=embedding)
    if torch.cuda.is_available():
        model.model.to(f"cuda:{torch.cuda.current_device()}")
    corpus, vectors = None, None
    if m.passages == "frozen":  # the index holds every E_p exactly, if a model like this one encoded it
        from imprag.retrieval.index import PassageIndex

        index = PassageIndex.load(config.data.index, model)  # StaleIndexError names the fix
        wanted = config.objective.negatives == "corpus" or config.health_scope == "corpus"
        vectors = index.vectors() if wanted else None
        if vectors is not None and config.objective.negatives == "corpus":
            corpus = CorpusCandidates(vectors[0], vectors[1], model, data.store)
    health = RetrievalHealth.from_benchmark(
        Benchmark.load(config.data.benchmark), data.store, config.eval, config.optim.seed,
        scope=config.health_scope, corpus=vectors,
    )  # fmt: skip
    trainer = Trainer(model, data, config, out, dist, health, corpus)
    if trainer.step == 0 and dist.is_main:  # the teacher on the same pool: what the health numbers mean
        teacher = config.data.teacher
        try:
            reference = health.reference(teacher, load_teacher(config.data, data.store))
        except Exception as err:  # a yardstick only: never worth stopping (or stalling) the run for
            log.warning("no %s reference for the retrieval health (%s: %s)", teacher, type(err).__name__, err)
        else:
            log.info("retrieval health of the %s teacher on the same pool: %s", teacher, reference)
            trainer._log({"step": 0, "epoch": 0, "reference": reference})
    return trainer.run(progress)
