"""What trains, and how a run is saved and resumed.

`prepare_model` freezes everything, then makes the chosen layer groups learn: LoRA adapters through peft on
their projections (default), or their full weights. peft replaces the projection modules in place, so the
backbone's layer loop (which looks modules up by name every call) runs the adapted layers unchanged.

A checkpoint is a directory written atomically:

    OUT/checkpoints/step-000100/
        adapter_config.json, adapter_model.safetensors   (LoRA)  or  config.json, model.safetensors (full)
        tokenizer files, imprag_config.json               -> loads with ImpRAG.from_pretrained(dir)
        train_config.json                                 the resolved TrainConfig
        trainer_state.pt                                  step, optimizer, scheduler, RNG states

`trainer_state.pt` holds tensors, numbers, strings and containers only (the numpy RNG state is stored as a
tensor), so resume reads it with `torch.load(weights_only=True)`: a crafted state file in someone else's run
folder cannot run code; it is refused with one line.

The trainable weights live in the exported model files only; resume reads them back from there. A LoRA
checkpoint loads in stock peft + transformers too: `PeftModel.from_pretrained(base_model, dir)`.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from imprag.config import ConfigError
from imprag.io import atomic_directory, atomic_write_text
from imprag.model.defaults import DEFAULT_MODELS
from imprag.model.imprag import ImpRAG
from imprag.model.weight_file import load_weight, save_weight
from imprag.training.config import EngineConfig, TrainConfig

__all__ = [
    "checkpoints",
    "latest_checkpoint",
    "load_trainer_state",
    "prepare_model",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

STATE = "trainer_state.pt"
PEFT_PREFIX = "base_model.model."
STEP_DIR = re.compile(r"^step-(\d+)$")


def group_layers(model: ImpRAG, groups: tuple[str, ...]) -> list[int]:
    """Layer indices of the named groups (bottom 0..b, middle b+1..t, top t+1..N-1; b counts as bottom)."""
    b, t, n = model.split.b, model.split.t, model.backbone.num_layers
    spans = {"bottom": range(0, b + 1), "middle": range(b + 1, t + 1), "top": range(t + 1, n)}
    return sorted({i for g in groups for i in spans[g]})


def prepare_model(model: ImpRAG, engine: EngineConfig) -> list[nn.Parameter]:
    """Freeze the model, then make the chosen groups trainable; returns the trainable parameters."""
    layers = group_layers(model, engine.train_groups)
    model.model.requires_grad_(False)
    if not layers:
        raise ConfigError(f"engine.train_groups {list(engine.train_groups)} selects no layer of this model")
    if engine.lora_r > 0:
        from peft import LoraConfig, inject_adapter_in_model

        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        if engine.query_lora_r and model.split.b in layers:
            for name in _query_projections(model):  # peft matches a pattern as a module-name suffix
                ranks[name] = engine.query_lora_r
                alphas[name] = engine.lora_alpha * engine.query_lora_r / engine.lora_r  # same alpha / r
        config = LoraConfig(
            r=engine.lora_r,
            lora_alpha=engine.lora_alpha,
            target_modules=list(engine.lora_targets),
            layers_to_transform=layers,
            lora_dropout=0.0,
            bias="none",
            rank_pattern=ranks,
            alpha_pattern=alphas,
        )
        try:
            inject_adapter_in_model(config, model.model)
        except ValueError as err:  # peft: no module matches the targets
            raise ConfigError(f"engine.lora_targets {list(engine.lora_targets)}: {err}") from err
        model.lora_config = config  # type: ignore[attr-defined]
        params = [p for n, p in model.model.named_parameters() if "lora_" in n]
        for p in params:  # adapters learn in fp32 whatever the frozen base's dtype
            p.data = p.data.float()
            p.requires_grad_(True)
    else:
        if model.backbone.dtype != torch.float32:
            raise ConfigError(
                "full fine-tuning (engine.lora_r=0) needs model.dtype=float32 or auto (bf16 weights lose "
                "AdamW's small updates); engine.autocast may still compute in bf16"
            )
        params = [p for i in layers for p in model.backbone.layer(i).parameters()]
        for p in params:
            p.requires_grad_(True)
    if not params:
        raise ConfigError(f"engine.lora_targets {list(engine.lora_targets)} match no module of this model")
    for weight in model.side_weights().values():  # W_ret and the query scorer v learn too
        weight.requires_grad_(True)
        params.append(weight)
    return params


def param_groups(
    params: list[nn.Parameter], scorer: nn.Parameter | None, scorer_lr: float
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one for `params`, or with `scorer_lr` > 0 the query scorer v in a
    second group at that peak rate (optim.query_scorer_lr). One group when it is 0, so the checkpoints of
    runs that did not set it resume as they were saved."""
    if not scorer_lr or scorer is None:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p is not scorer]},
        {"params": [p for p in params if p is scorer], "lr": scorer_lr},
    ]


def _query_projections(model: ImpRAG) -> list[str]:
    """Full module names of layer b's query projection (`q_proj`), anchored at the model's root."""
    layer = model.backbone.layer(model.split.b)
    inside = {id(m) for m in layer.modules()}
    names = [n for n, m in model.model.named_modules() if id(m) in inside and n.endswith(".q_proj")]
    if not names:
        raise ConfigError(f"engine.query_lora_r: layer {model.split.b} has no q_proj module")
    return [re.escape(n) for n in names]  # a regex to peft: "layers.7" must not match "layers.17"


def trainable_state(model: ImpRAG) -> dict[str, torch.Tensor]:
    """The learned weights under the names their exported files use."""
    if getattr(model, "lora_config", None) is not None:
        from peft import get_peft_model_state_dict

        # Stock peft (PeftModel.from_pretrained) expects keys under "base_model.model.".
        return {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(model.model).items()}
    return {n: p for n, p in model.model.named_parameters() if p.requires_grad}


def export_model(model: ImpRAG, directory: Path) -> None:
    """Write the model into `directory` (which exists): a peft adapter or a full HF checkpoint, the
    tokenizer and imprag_config.json."""
    from safetensors.torch import save_file

    lora = getattr(model, "lora_config", None)
    if lora is not None:
        # An embedded name ("smollm2-135m") or hub id stays as is; a local folder is made absolute, so the
        # adapter loads from any working directory.
        source = Path(model.source)
        # (an embedded name wins over a same-named folder, as in from_pretrained; "" names no folder)
        local = model.source not in DEFAULT_MODELS and model.source and source.is_dir()
        lora.base_model_name_or_path = str(source.resolve()) if local else model.source
        lora.save_pretrained(directory)
        state = {k: v.detach().contiguous() for k, v in trainable_state(model).items()}
        save_file(state, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    else:
        model.model.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    model.config.save(directory)
    for name, weight in model.side_weights().items():
        save_weight(weight, directory, name)


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's RNG states in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
    numpy |= {"has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    out: Path, step: int, model: ImpRAG, config: TrainConfig, trainer: dict[str, Any], keep: int
) -> Path:
    """Write OUT/checkpoints/step-N atomically, then delete all but the newest `keep`."""
    path = out / "checkpoints" / f"step-{step:06d}"
    with atomic_directory(path, replaces=STATE) as tmp:
        export_model(model, tmp)
        atomic_write_text(tmp / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        torch.save({"step": step, **trainer}, tmp / STATE)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a directory without its state file is incomplete)."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def restore_checkpoint(path: Path, model: ImpRAG) -> dict[str, Any]:
    """Load a checkpoint's trainable weights into `model` (prepared the same way) and return its trainer
    state (step, optimizer, scheduler, RNG)."""
    if getattr(model, "lora_config", None) is not None:
        from peft import set_peft_model_state_dict

        saved = load_file(path / "adapter_model.safetensors")
        set_peft_model_state_dict(model.model, {k.removeprefix(PEFT_PREFIX): v for k, v in saved.items()})
    else:
        saved: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("model*.safetensors")):  # one file, or save_pretrained's shards
            saved.update(load_file(shard))
        trainable = {n: p for n, p in model.model.named_parameters() if p.requires_grad}
        missing = sorted(set(trainable) - set(saved))
        if missing:
            raise ConfigError(f"checkpoint {path} lacks trained weights {missing[:3]}; it is not this run's")
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(saved[name])
    for name, weight in model.side_weights().items():
        load_weight(path, name, weight, f"lacks {name}: it is not a checkpoint of this run")
    return load_trainer_state(path)


def load_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state (step, optimizer, scheduler, RNG), read without unpickling objects."""
    try:
        return torch.load(path / STATE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{path / STATE} holds objects other than tensors and numbers, which resume does not load "
            f"(they could run code; {reason}); it was not written by this version of imprag: train into "
            "a new --out, or delete that checkpoint to resume from an earlier one"
        ) from None
