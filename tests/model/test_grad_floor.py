"""`Backbone.grad_floor`: a forward through layer `grad_floor` detaches the hidden state entering it, so the
answer loss leaves layers 0..b untouched (`engine.bottom_losses=retrieval`) while its value, every gradient
at or above the cut, and the retrieval loss's gradients (E_q's pass stops at layer b) stay exactly those of
the plain model. Checked against the model without the cut, for shared passages read in the middle
layers and with gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from imprag import ImpRAG

PROMPTS = ["Q: What is the capital of Veloria? A:", "Is this statement true? The sky is blue. A:"]
PASSAGES = [["The capital of Veloria is Quantum City."], ["Paris is the capital of France.", "Rome."]]
ANSWERS = [" Quantum City", " True"]


def answer_loss(model: ImpRAG) -> torch.Tensor:
    """Next-token NLL of prompt + answer, each prompt reading its passages (K/V of layers 0..t)."""
    offsets = [len(row) * model.config.reader.l_max for row in PASSAGES]
    prompts = model.prompt_batch([p + a for p, a in zip(PROMPTS, ANSWERS, strict=True)], offsets)
    logits = model.forward(prompts, model.passage_batch(PASSAGES, offsets, warn=False))
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), prompts.input_ids[:, 1:].flatten(), reduction="none"
    )
    return (nll * prompts.valid[:, 1:].flatten()).sum() / prompts.valid[:, 1:].sum()


def retrieval_loss(model: ImpRAG) -> torch.Tensor:
    offsets = [len(row) * model.config.reader.l_max for row in PASSAGES]
    e_q = model.encode_queries(model.prompt_batch(PROMPTS, offsets))
    e_p = model.encode_passages(model.passage_batch([[p] for row in PASSAGES for p in row], [0, 0, 0]))
    return torch.logsumexp(e_q.float() @ e_p.float().T / 4.0, dim=1).mean()


def grads(model: ImpRAG, loss_fn, floor: int, checkpointing: bool = False):
    model.backbone.grad_floor, model.backbone.gradient_checkpointing = floor, checkpointing
    model.model.zero_grad(set_to_none=True)
    try:
        loss = loss_fn(model)
        loss.backward()
    finally:
        model.backbone.grad_floor, model.backbone.gradient_checkpointing = 0, False
    return loss.detach(), {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}


def layer_of(name: str) -> int:
    """The decoder layer a parameter belongs to (-1: none, e.g. the embeddings or the final norm)."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_answer_loss_stops_at_the_floor_and_nothing_above_it_changes(tiny: ImpRAG, checkpointing) -> None:
    b = tiny.split.b
    want_loss, want = grads(tiny, answer_loss, floor=0)
    got_loss, got = grads(tiny, answer_loss, floor=b + 1, checkpointing=checkpointing)
    assert_close(got_loss, want_loss, atol=0, rtol=0)  # the values are the plain model's
    below = {n for n in want if n.endswith("embed_tokens.weight") or layer_of(n) in range(b + 1)}
    assert below and all(want[n].abs().sum() > 0 for n in below)  # without the cut the answer reaches them
    assert got.keys() == want.keys() - below  # with it, layers 0..b and the embeddings get nothing
    for name in got:
        assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)


def test_the_retrieval_loss_still_trains_the_bottom_layers(tiny: ImpRAG) -> None:
    want_loss, want = grads(tiny, retrieval_loss, floor=0)
    got_loss, got = grads(tiny, retrieval_loss, floor=tiny.split.b + 1)
    assert_close(got_loss, want_loss, atol=0, rtol=0)
    assert got.keys() == want.keys() and any(layer_of(n) == 0 for n in got)
    for name, grad in want.items():
        assert_close(got[name], grad, atol=0, rtol=0, msg=name)
