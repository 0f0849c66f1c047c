"""Running a model with its LoRA adapters switched off: the base weights, for passages (`passages="frozen"`).

peft injects adapter layers in place of the projection modules (`peft.inject_adapter_in_model`, or a
`PeftModel` left unmerged). Each is a `BaseTunerLayer` whose `enable_adapters(False)` makes its forward
return the base layer's output alone. peft's toggle also rewrites the adapters' `requires_grad` (off, then
on for every active adapter): `base_weights` restores each parameter's own flag afterwards, so switching
the adapters off for a passage pass in the middle of a training forward changes nothing about what trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["base_weights", "has_adapters", "tuner_layers"]


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """peft adapter layers injected into `model` (none when peft is missing or nothing was injected)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft there can be no injected adapter
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model: nn.Module) -> bool:
    return bool(tuner_layers(model))


@contextmanager
def base_weights(model: nn.Module) -> Iterator[None]:
    """Run `model` with every injected adapter off (the base weights); adapters that were on come back on,
    with each parameter's `requires_grad` as it was."""
    layers = [m for m in tuner_layers(model) if not m.disable_adapters]
    flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)
