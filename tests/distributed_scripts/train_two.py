"""Run under torchrun by tests/test_distributed.py: each rank trains the same tiny model (saved by the
test) for 3 steps of a global batch of 4 (2 examples per rank), calling Trainer.train_step itself, and
writes its exact per-step losses, answer-token counts, averaged gradients, grad norms and final LoRA weights
to OUT/rank{r}.pt.

Three configs: "joint" (J_gen + J_ret), "gen-gradients" (ret_weight=0: the same steps, but only J_gen's
gradients, which are exact across processes because nothing they depend on is gathered) and "gold-both"
(the joint objective with data.positives_from=both: candidate counts that differ between the ranks).
The test runs `train` in one process too and compares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from imprag import ImpRAG
from imprag.distributed import Dist, init_from_env, shutdown
from imprag.retrieval.corpus import Passage
from imprag.retrieval.store import PassageStore
from imprag.training.checkpoint import trainable_state
from imprag.training.config import TrainConfig, load_train_config
from imprag.training.data import Example, TrainingData
from imprag.training.loop import Trainer

PASSAGES = [Passage(f"p{i}", f"Title {i}", f"Text number {i} about things {i * 7}.") for i in range(30)]
# Answers of different lengths: at every step the two ranks hold different numbers of answer tokens, so
# the mean of the ranks' token-level J_gen means is not the global batch's; the trainer must weight each
# rank by its share of the tokens (Trainer._global_token_mean) for the gradients to match one process's.
EXAMPLES: dict[str, list[Example]] = {
    "retrieval": [
        Example(
            f"r{i}",
            "retrieval",
            f"Q: what is {i}? A:",
            f" thing{' more' * (i % 3)} {i}\n",
            (i, i + 1),
            (i - 10,),
            (i + 10,) if i % 2 else (i,),  # odd items' gold articles are not among their teacher's
        )
        for i in range(10, 18)
    ],
    "instruction": [
        Example(f"n{i}", "instruction", f"Recover {i} A:", f" ok{' fine' * (i % 4)} {i}\n")
        for i in range(10, 16)
    ],
}
OVERRIDES = [
    "data.mix=[0.6, 0.4, 0]",
    "data.positives=2",
    "data.hard_negatives=1",
    "data.random_negatives=0",  # random rows are drawn per rank: two ranks would see more negatives
    "optim.batch_size=4",
    "optim.epochs=3",
    "optim.steps_per_epoch=1",
    "optim.warmup_steps=1",
    "optim.lr=0.005",
    "optim.seed=5",  # steps: retrieval (warmup), instruction (warmup), retrieval (distill)
    "objective.warmup_epochs=2",
    "objective.read_k=2",
    "model.dtype=float32",
    "engine.autocast=false",
]
CONFIGS: dict[str, TrainConfig] = {
    "joint": load_train_config(None, OVERRIDES),
    "gen-gradients": load_train_config(None, [*OVERRIDES, "objective.ret_weight=0.0"]),
    # gold articles join the teacher's positives: the ranks hold different numbers of candidates, more
    # than data.positives + data.hard_negatives, and must agree on one gather width
    "gold-both": load_train_config(None, [*OVERRIDES, "data.positives_from=both"]),
}


def train(
    base: str | Path, store: str | Path, out: str | Path, dist: Dist, config: TrainConfig
) -> dict[str, Any]:
    """Every step of `config` through Trainer.train_step; this process's exact losses and final weights."""
    model = ImpRAG.from_pretrained(base, dtype="float32")
    data = TrainingData(EXAMPLES, PassageStore(store), config.data.mix, seed=config.optim.seed)
    trainer = Trainer(model, data, config, out, dist)
    losses: list[torch.Tensor] = []
    for name in ("_retrieval", "_generation"):  # keep the unrounded loss of each step
        original = getattr(trainer, name)

        def capture(*args: Any, _original=original) -> Any:
            loss, metrics = _original(*args)
            losses.append(loss.detach().clone())
            return loss, metrics

        setattr(trainer, name, capture)
    tokens: list[int] = []  # this process's answer tokens at each step
    token_mean = trainer._global_token_mean

    def count(local_mean: torch.Tensor, seqs: Any) -> torch.Tensor:
        tokens.append(int(seqs.answer.sum()))
        return token_mean(local_mean, seqs)

    grads: list[torch.Tensor] = []  # the gradient each step applies (averaged over processes, unclipped)
    average = trainer._average_gradients

    def keep() -> None:
        average()
        grads.append(
            torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in trainer.params])
        )

    trainer._global_token_mean, trainer._average_gradients = count, keep  # type: ignore[method-assign]
    metrics = [trainer.train_step(step) for step in range(config.total_steps)]
    return {
        "loss": torch.stack(losses),
        "tokens": tokens,
        "grads": torch.stack(grads),
        "grad_norm": [m["grad_norm"] for m in metrics],
        "logged_loss": [m["loss"] for m in metrics],
        "kind": [m["kind"] for m in metrics],
        "stage": [m["stage"] for m in metrics],
        "params": {k: v.detach().clone() for k, v in trainable_state(model).items()},
    }


def main(base: str, store: str, out: str) -> None:
    torch.set_num_threads(1)
    d = init_from_env()
    # Both ranks share one run directory, as under torchrun (train_step is called directly: no
    # checkpoints or logs; rank 0 writes train_config.json after every rank has checked it).
    results = {name: train(base, store, Path(out) / name, d, cfg) for name, cfg in CONFIGS.items()}
    torch.save(results, Path(out) / f"rank{d.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
