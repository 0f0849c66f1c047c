"""save_pretrained writes a stock-loadable checkpoint plus imprag_config.json; from_pretrained restores it."""

from __future__ import annotations

import torch
from conftest import tiny_model
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from imprag import EmbeddingConfig, ImpRAG, LayerSplit, ReaderConfig


def test_save_and_reload(tmp_path, tokenizer) -> None:
    model = ImpRAG(
        tiny_model("qwen3"), tokenizer, LayerSplit(2, 3), EmbeddingConfig(pooling="mean"), ReaderConfig(k=2)
    )
    out = model.save_pretrained(tmp_path / "ckpt")
    assert (out / "imprag_config.json").is_file()
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert stock.state_dict().keys() == model.model.state_dict().keys()
    again = ImpRAG.from_pretrained(out, dtype="float32")
    assert again.config == model.config
    prompts = ["Q: What is the capital of Veloria?\nA:"]
    assert_close(again.embed_queries(prompts), model.embed_queries(prompts))
    override = ImpRAG.from_pretrained(out, b=1, dtype=torch.float32)
    assert override.split == LayerSplit(1, 3)
    # No partial folder is ever left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
