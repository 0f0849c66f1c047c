"""The training config: a recipe YAML plus dotted overrides, refused when a key, type or value is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imprag.config import ConfigError
from imprag.training.config import (
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    load_train_config,
)

REPO = Path(__file__).resolve().parents[2]

RECIPE = """\
model:
  name: my-model
  dtype: float32
data:
  mix: [1, 0, 0]
  positives: 3
optim:
  lr: 3.0e-4
  batch_size: 4
engine:
  train_groups: [bottom, top]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_file_then_overrides_with_typed_values(tmp_path) -> None:
    path = write(tmp_path, RECIPE)
    cfg = load_train_config(path)
    assert cfg.model.name == "my-model" and cfg.model.dtype == "float32"
    assert cfg.data.mix == (1.0, 0.0, 0.0) and all(type(v) is float for v in cfg.data.mix)
    assert cfg.data.positives == 3 and cfg.optim.lr == 3e-4 and cfg.optim.batch_size == 4
    assert cfg.engine.train_groups == ("bottom", "top")
    # untouched fields keep their defaults
    assert cfg.objective == ObjectiveConfig() and cfg.data.hard_negatives == 4

    cfg = load_train_config(
        path,
        [
            "optim.batch_size=2",  # overrides the file
            "optim.lr=1",  # an int where a float is expected becomes a float
            "data.mix=[0.2, 0.8, 0]",
            "model.b=2",
            "objective.read=positives",
            "engine.lora_targets=[q_proj]",
        ],
    )
    assert cfg.optim.batch_size == 2 and cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.data.mix == (0.2, 0.8, 0.0) and cfg.data.positives == 3  # the file's other values stay
    assert cfg.model.b == 2 and cfg.model.name == "my-model"
    assert cfg.objective.read == "positives" and cfg.engine.lora_targets == ("q_proj",)


def test_defaults_without_a_file_and_an_optional_field_set_to_null() -> None:
    assert load_train_config() == TrainConfig()
    cfg = load_train_config(None, ["model.b=null", "optim.epochs=4"])
    assert cfg.model.b is None and cfg.optim.epochs == 4 and cfg.total_steps == 4 * 50


def test_unknown_keys_name_the_key_and_its_section(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\] in optim") as err:
        load_train_config(write(tmp_path, "optim:\n  lrr: 0.1\n"))
    assert "recipe.yaml" in str(err.value) and "'lr'" in str(err.value)  # the file and the known keys
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optimizer'\] in the config"):
        load_train_config(write(tmp_path, "optimizer:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match=r"\['warmup'\] in objective"):
        load_train_config(None, ["objective.warmup=2"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.batch_size=abc", r"optim\.batch_size must be int, got 'abc'"),
        ("optim.batch_size=2.5", r"optim\.batch_size must be int"),
        ("optim.batch_size=true", r"optim\.batch_size must be int"),  # a bool is not an int here
        ("optim.lr=fast", r"optim\.lr must be a number"),
        ("engine.autocast=1", r"engine\.autocast must be bool, got 1 or must be one of \['auto'\]"),
        ("engine.autocast=maybe", r"engine\.autocast must be bool, got 'maybe' or must be one of \['auto'\]"),
        ("model.name=3", r"model\.name must be str"),
        (
            "model.dtype=float16",
            r"model\.dtype must be one of \['auto', 'float32', 'bfloat16'\], got 'float16'",
        ),
        ("objective.answer_logprob=max", r"objective\.answer_logprob must be one of"),
        ("data.teacher=contriever", r"data\.teacher must be one of"),
        ("engine.train_groups=[bottom, side]", r"engine\.train_groups must be one of .*'side'"),
        ("data.mix=0.5", r"data\.mix must be a list"),
        ("data.mix=[0.5, x, 0]", r"data\.mix must be a number"),
        ("optim.lr=.inf", r"optim\.lr must be a finite number, got inf"),  # YAML's infinity
        ("objective.tau_r=.nan", r"objective\.tau_r must be a finite number, got nan"),
        ("data.mix=[0.5, -.inf, 0]", r"data\.mix must be a finite number"),
        ("optim=3", r"optim must be a mapping"),
    ],
)
def test_wrong_types_and_literals_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [override])


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim.lr.x=1"])
def test_malformed_overrides(override: str) -> None:
    with pytest.raises(ConfigError):
        load_train_config(None, [override])


def test_unreadable_or_invalid_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the training config"):
        load_train_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1: ") as err:
        load_train_config(write(tmp_path, "optim: [unclosed\n"))
    assert "\n" not in str(err.value)  # PyYAML's message has a caret line under the spot: one line here
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_train_config(write(tmp_path, "- 1\n- 2\n"))
    assert load_train_config(write(tmp_path, "")) == TrainConfig()  # an empty file is the defaults
    with pytest.raises(ConfigError, match="optim is not a section"):
        load_train_config(write(tmp_path, "optim: 3\n"), ["optim.lr=0.1"])


def test_stage_boundaries_follow_warmup_epochs_times_steps_per_epoch() -> None:
    cfg = TrainConfig(
        objective=ObjectiveConfig(warmup_epochs=2), optim=OptimConfig(epochs=5, steps_per_epoch=4)
    )
    assert cfg.total_steps == 20
    assert [cfg.stage(s) for s in range(20)] == ["warmup"] * 8 + ["distill"] * 12
    none = TrainConfig(
        objective=ObjectiveConfig(warmup_epochs=0), optim=OptimConfig(epochs=2, steps_per_epoch=3)
    )
    assert {none.stage(s) for s in range(6)} == {"distill"}
    every = TrainConfig(
        objective=ObjectiveConfig(warmup_epochs=2), optim=OptimConfig(epochs=2, steps_per_epoch=3)
    )
    assert {every.stage(s) for s in range(6)} == {"warmup"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.batch_size=0"], r"optim\.batch_size must be >= 1"),
        (
            ["optim.epochs=3", "objective.warmup_epochs=4"],
            r"objective\.warmup_epochs must lie in \[0, optim\.epochs\]",
        ),
        (["objective.warmup_epochs=-1"], r"objective\.warmup_epochs"),
        (["optim.steps_per_epoch=0"], r"optim\.steps_per_epoch must be >= 1"),
        (["objective.tau_r=0"], r"objective\.tau_r"),
        (["objective.read_k=0"], r"objective\.read_k must be >= 1"),
        (["optim.lr=0.0"], r"optim\.lr must be > 0"),
        (["data.mix=[0, 0, 0]"], r"data\.mix"),
        (["data.mix=[1, 0]"], r"data\.mix needs 3 shares"),
        (["data.mix=[1, -1, 1]"], r"data\.mix"),
        (["data.positives=0"], r"data\.positives must be >= 1"),
        (["data.random_negatives=-1"], r"negatives must be >= 0"),
        (["engine.lora_r=-1"], r"engine\.lora_r must be >= 0"),
        (["engine.train_groups=[]"], r"engine\.train_groups must name at least one"),
        (["engine.checkpoint_every=0"], r"engine checkpoint settings"),
        (["engine.log_every=0"], r"engine\.log_every must be >= 1"),
        (["data.positives=10"], r"data\.positives must be < 10"),
        (["data.hard_negatives=42"], r"data\.hard_negatives must be <= 41"),
        (["objective.system=ra-it", "data.teacher=bm25"], r"set data\.teacher=minilm"),
        (["eval.tasks=[]"], r"eval\.tasks must name"),
        (["eval.k=0"], r"eval\.per_task and eval\.k must be >= 1"),
    ],
)
def test_invalid_values_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, overrides)


def test_validation_also_applies_to_direct_construction() -> None:
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        TrainConfig(optim=OptimConfig(batch_size=0))
    with pytest.raises(ConfigError, match=r"objective\.warmup_epochs"):
        TrainConfig(objective=ObjectiveConfig(warmup_epochs=11))  # default epochs: 10


def test_resolved_config_round_trips_through_json() -> None:
    cfg = load_train_config(None, ["data.mix=[1, 0, 0]", "engine.train_groups=[middle]", "model.b=1"])
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.data.mix, tuple) and isinstance(again.engine.train_groups, tuple)


def test_the_cpu_recipe_in_the_repository_loads() -> None:
    cfg = load_train_config(REPO / "configs" / "cpu-smollm2.yaml")
    assert cfg.model.name == "smollm2-135m" and cfg.model.dtype == "auto" and cfg.engine.autocast == "auto"
    assert cfg.engine.lora_r > 0 and cfg.weights_dtype() == "auto"  # maybe bf16 weights: adapters learn
    # the paper's schedule shape: 10 epochs, the first 3 warmup
    per = cfg.optim.steps_per_epoch
    assert cfg.optim.epochs == 10 and cfg.total_steps == 10 * per
    assert cfg.stage(3 * per - 1) == "warmup" and cfg.stage(3 * per) == "distill"
    # with the overrides its header shows
    cfg = load_train_config(
        REPO / "configs" / "cpu-smollm2.yaml", ["data.benchmark=BENCH", "data.index=INDEX"]
    )
    assert (cfg.data.benchmark, cfg.data.index) == ("BENCH", "INDEX")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_in_the_repository_loads_and_names_real_tasks(name: str) -> None:
    from imprag.data.tasks import TASKS

    cfg = load_train_config(REPO / "configs" / name, ["data.benchmark=BENCH", "data.index=INDEX"])
    named = [*cfg.data.retrieval_tasks, *cfg.data.instruction_tasks, *cfg.data.read_tasks, *cfg.eval.tasks]
    assert set(named) <= set(TASKS), f"{name} names tasks that do not exist: {set(named) - set(TASKS)}"
    if name.startswith("paper-"):  # the paper's data, imported by the user: nothing from the embedded build
        assert all(TASKS[t].splits == "imported" for t in named)
        assert cfg.data.retrieval_tasks == ("nq", "hotpotqa") and cfg.model.passages == "shared"


def test_dtype_and_autocast_auto_follow_the_machine(monkeypatch) -> None:
    from imprag.training import loop

    for value, parsed in (("true", True), ("false", False), ("auto", "auto")):
        assert load_train_config(None, [f"engine.autocast={value}"]).engine.autocast == parsed
    assert load_train_config(None).weights_dtype() == "auto"  # LoRA: the machine's fast dtype
    full = load_train_config(None, ["engine.lora_r=0"])
    assert full.weights_dtype() == "float32"  # full fine-tuning keeps fp32 weights under auto
    assert load_train_config(None, ["engine.lora_r=0", "model.dtype=bfloat16"]).weights_dtype() == "bfloat16"
    cpu = torch.device("cpu")
    for fast, expected in ((torch.bfloat16, True), (torch.float32, False)):
        monkeypatch.setattr(loop, "auto_dtype", lambda device, fast=fast: fast)  # a fake machine
        assert loop.autocast_enabled("auto", cpu) is expected
        assert loop.autocast_enabled(True, cpu) is True and loop.autocast_enabled(False, cpu) is False
