"""Gradient checkpointing (`Backbone.gradient_checkpointing`): the same losses and gradients as the plain
path, each layer really recomputed in backward, and the K/V cache written exactly once."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils.checkpoint import checkpoint

from imprag import ImpRAG, LayerSplit
from imprag.model import backbone

PROMPTS = ["Q: What is the capital of Veloria? A:", "Is this statement true? The sky is blue. A:"]
PASSAGES = [["The capital of Veloria is Quantum City."], ["Paris is the capital of France.", "Rome."]]
ANSWERS = [" Quantum City", " True"]


def training_loss(model: ImpRAG) -> torch.Tensor:
    """A stand-in for one training step's loss that touches every path with gradients: the implicit query
    and passage embeddings (layers 0..b), the passages' K/V (layers 0..t) read by the prompts in layers
    b..t, and the prompt's logits at the top."""
    offsets = [len(row) * model.config.reader.l_max for row in PASSAGES]
    prompts = model.prompt_batch([p + a for p, a in zip(PROMPTS, ANSWERS, strict=True)], offsets)
    passages = model.passage_batch(PASSAGES, offsets, warn=False)
    logits = model.forward(prompts, passages)
    lm = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), prompts.input_ids[:, 1:].flatten(), reduction="none"
    )
    lm = (lm * prompts.valid[:, 1:].flatten()).sum() / prompts.valid[:, 1:].sum()
    e_q = model.encode_queries(model.prompt_batch(PROMPTS, offsets))
    e_p = model.encode_passages(model.passage_batch([[p] for row in PASSAGES for p in row], [0, 0, 0]))
    return lm + torch.logsumexp(e_q.float() @ e_p.float().T / 4.0, dim=1).mean()


def loss_and_grads(model: ImpRAG, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.backbone.gradient_checkpointing = checkpointing
    model.model.zero_grad(set_to_none=True)
    loss = training_loss(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_checkpointed_loss_and_gradients_equal_the_plain_path(tiny: ImpRAG) -> None:
    want_loss, want = loss_and_grads(tiny, checkpointing=False)
    got_loss, got = loss_and_grads(tiny, checkpointing=True)
    assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    assert got.keys() == want.keys()
    assert len(want) == len(list(tiny.model.parameters()))  # every weight (lm_head, embeddings too) got one
    for name, grad in want.items():
        assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_backward_recomputes_every_checkpointed_layer(tiny: ImpRAG) -> None:
    """The flag is not a no-op: each layer's MLP runs again during backward (and only with the flag on).

    Counted with pre-hooks: a recompute stops as soon as the last tensor backward needs is rebuilt (inside
    the MLP's last projection), so the MLP's forward hook would never fire."""
    calls = [0] * tiny.backbone.num_layers
    hooks = [
        tiny.backbone.layer(i).mlp.register_forward_pre_hook(
            lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)
        )
        for i in range(tiny.backbone.num_layers)
    ]
    try:
        counts = {}
        for checkpointing in (False, True):
            tiny.backbone.gradient_checkpointing = checkpointing
            calls[:] = [0] * len(calls)
            loss = training_loss(tiny)
            forward = list(calls)
            loss.backward()
            counts[checkpointing] = (forward, [c - f for c, f in zip(calls, forward, strict=True)])
    finally:
        for hook in hooks:
            hook.remove()
    assert counts[False][1] == [0] * len(calls)  # the plain path never recomputes
    assert counts[True][0] == counts[False][0]  # the same forward
    assert all(c > 0 for c in counts[True][1])  # every layer is recomputed in backward
    # layer b runs un-checkpointed inside the prompt's pass (E_q is read between its projection and its
    # attention), so it is recomputed once fewer than it ran forward; every other layer as often as it ran
    b = tiny.split.b
    for i, (fwd, again) in enumerate(zip(*counts[True], strict=True)):
        assert again == (fwd - 1 if i == b else fwd), (i, fwd, again)


def test_the_cache_is_written_once_and_gets_the_same_gradients(tiny: ImpRAG) -> None:
    """A prompt prefill with a K/V cache (as before decoding): recording happens outside the checkpointed
    function, so the cache holds each layer's keys once, and gradients through the cached keys match."""
    prompts = tiny.prompt_batch(PROMPTS, [0, 0])
    results = {}
    for checkpointing in (False, True):
        tiny.backbone.gradient_checkpointing = checkpointing
        tiny.model.zero_grad(set_to_none=True)
        pre = tiny._prefill(prompts, lambda _: None, cache=True)
        keys = [pre.cache.keys[i] for i in range(tiny.backbone.num_layers)]
        loss = sum(k.float().square().mean() for k in keys) + pre.hidden.float().square().mean()
        loss.backward()
        # backward recomputed every checkpointed layer: none of them may have written to the cache again
        assert all(pre.cache.keys[i] is keys[i] for i in range(tiny.backbone.num_layers))
        grads = {n: p.grad.clone() for n, p in tiny.model.named_parameters() if p.grad is not None}
        results[checkpointing] = ([k.detach() for k in keys], grads, pre.cache.length)
    (want_keys, want_grads, want_len), (got_keys, got_grads, got_len) = results[False], results[True]
    assert got_len == want_len == prompts.input_ids.shape[1]
    for want_k, got_k in zip(want_keys, got_keys, strict=True):
        assert got_k.shape == want_k.shape  # not appended twice
        assert_close(got_k, want_k, atol=1e-6, rtol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_nothing_is_checkpointed_without_autograd(tiny: ImpRAG, monkeypatch, no_grad) -> None:
    """Under no_grad / inference_mode the flag changes nothing: no checkpoint call, the same generation."""
    calls = []
    monkeypatch.setattr(backbone, "checkpoint", lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    tiny.backbone.gradient_checkpointing = False
    want = tiny.generate(PROMPTS, passages=PASSAGES, max_new_tokens=4)
    tiny.backbone.gradient_checkpointing = True
    with no_grad():
        assert tiny.generate(PROMPTS, passages=PASSAGES, max_new_tokens=4) == want
        tiny.forward(tiny.prompt_batch(PROMPTS, [0, 0]))
    assert calls == []
    training_loss(tiny)  # and the same calls, recording, are checkpointed
    assert len(calls) > 0


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_bf16_autocast_and_dropout_recompute_exactly(tokenizer, family: str) -> None:
    """What the recipes run: bf16 autocast, and (in train mode) attention dropout, whose random mask the
    recompute must draw again identically (the checkpoint restores the RNG state)."""
    from conftest import tiny_model

    torch.manual_seed(0)
    model = ImpRAG(tiny_model(family, attention_dropout=0.3), tokenizer, LayerSplit(b=1, t=3))
    model.model.train()
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results[checkpointing] = loss_and_grads(model, checkpointing)
    (want_loss, want), (got_loss, got) = results[False], results[True]
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        other_mask, _ = loss_and_grads(model, False)
    assert not torch.equal(other_mask, want_loss)  # dropout is live: another RNG state, another loss
    assert torch.equal(got_loss, want_loss)
    assert got.keys() == want.keys()
    for name, grad in want.items():
        assert torch.equal(got[name], grad), name
