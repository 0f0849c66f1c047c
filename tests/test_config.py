"""Config dataclasses validate themselves and round-trip through imprag_config.json."""

from __future__ import annotations

import json

import pytest

from imprag import ConfigError, DecodeConfig, EmbeddingConfig, ImpRAGConfig, LayerSplit, ReaderConfig


@pytest.mark.parametrize(
    "layers, expected", [(28, (7, 19)), (30, (7, 20)), (32, (8, 21)), (5, (1, 3)), (1, (0, 0))]
)
def test_default_split_is_quarter_and_seventy_percent(layers: int, expected: tuple[int, int]) -> None:
    split = LayerSplit.default_for(layers)
    assert (split.b, split.t) == expected
    split.validate_for(layers)


def test_split_groups() -> None:
    split = LayerSplit(7, 19)
    assert list(split.middle) == list(range(7, 20))
    assert split.validate_for(28) is split
    with pytest.raises(ConfigError, match="t must be <= 27"):
        LayerSplit(7, 28).validate_for(28)
    with pytest.raises(ConfigError, match="t must be >= b"):
        LayerSplit(5, 4)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: EmbeddingConfig(rope="middle"), "EmbeddingConfig.rope"),
        (lambda: EmbeddingConfig(pooling="max"), "EmbeddingConfig.pooling"),
        (lambda: ReaderConfig(k=0), "ReaderConfig.k"),
        (lambda: ReaderConfig(l_max=0), "ReaderConfig.l_max"),
        (lambda: DecodeConfig(top_p=0), "DecodeConfig.top_p"),
        (lambda: DecodeConfig(temperature=0), "DecodeConfig.temperature"),
        (lambda: DecodeConfig(stop=("",)), "DecodeConfig.stop"),
    ],
)
def test_invalid_fields_are_named(build, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build()


def test_single_stop_string_becomes_a_tuple() -> None:
    assert DecodeConfig(stop="\n").stop == ("\n",)


def test_config_round_trip_and_unknown_keys(tmp_path) -> None:
    cfg = ImpRAGConfig(LayerSplit(2, 4), EmbeddingConfig("post", "mean"), ReaderConfig(k=3, l_max=64))
    cfg.save(tmp_path)
    assert ImpRAGConfig.load(tmp_path) == cfg
    data = cfg.to_dict()
    data["reader"]["kk"] = 1
    (tmp_path / "imprag_config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['kk'\] in reader"):
        ImpRAGConfig.load(tmp_path)
    (tmp_path / "imprag_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ImpRAGConfig.load(tmp_path)
    assert ImpRAGConfig.load(tmp_path / "missing") is None


def test_config_files_with_missing_or_mistyped_fields(tmp_path) -> None:
    (tmp_path / "imprag_config.json").write_text("{}")
    with pytest.raises(ConfigError, match='needs a "split"'):
        ImpRAGConfig.load(tmp_path)
    with pytest.raises(ConfigError, match=r"ReaderConfig\.k must be an integer"):
        ReaderConfig(k="5")
