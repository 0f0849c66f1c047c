"""The trainer state a checkpoint holds is read without unpickling objects (issue 16): the RNG states round
trip exactly through `torch.load(weights_only=True)`, and a crafted state file is refused before any of its
code runs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from imprag.config import ConfigError
from imprag.training.checkpoint import STATE, load_trainer_state, rng_state, set_rng_state


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.normal()), torch.rand(1).item()


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state: it must survive too
    torch.save({"step": 7, "rng": rng_state()}, tmp_path / STATE)
    expected = _draws()
    _draws()  # move every generator on
    state = load_trainer_state(tmp_path)
    set_rng_state(state["rng"])
    assert state["step"] == 7
    assert _draws() == expected


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: what a malicious trainer_state.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_state_file_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "rng": _Payload(marker)}, tmp_path / STATE)
    with pytest.raises(ConfigError) as info:
        load_trainer_state(tmp_path)
    assert not marker.exists()
    message = str(info.value)
    assert str(tmp_path / STATE) in message and "new --out" in message and "\n" not in message
    torch.load(tmp_path / STATE, weights_only=False)  # the payload is real: the unsafe load runs it
    assert marker.exists()
