"""passages="frozen": passage passes run the base weights (a LoRA adapter switched off), prompt passes the
adapted ones. Checked on a tiny random llama with a random (non-zero) adapter against two references: the
base model alone for everything passages give (E_p, the fingerprint), and a merged copy of the adapter
reading the base model's passage K/V for the logits."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model
from peft import LoraConfig, inject_adapter_in_model
from torch.testing import assert_close

import imprag.model.imprag as imprag_module
from imprag import ImpRAG, LayerSplit
from imprag.config import ConfigError, ImpRAGConfig
from imprag.model.adapters import base_weights, tuner_layers
from imprag.model.reader import InputError, passage_kv

SPLIT = LayerSplit(b=1, t=3)
PASSAGES = [["The capital of Veloria is Quantum City."], ["Mozart was a composer.", "The Nile flows."]]
PROMPTS = ["Q: What is the capital of Veloria? A:", "Q: Where is Mozart from? A:"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

pytestmark = pytest.mark.usefixtures("one_thread")


def adapted(tokenizer, passages: str) -> tuple[ImpRAG, ImpRAG]:
    """(the base model, the same base with a random LoRA adapter injected on every layer)."""
    base = ImpRAG(tiny_model("llama"), tokenizer, SPLIT)
    hf = copy.deepcopy(base.model)
    torch.manual_seed(1)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False), hf)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    return base, ImpRAG(hf, tokenizer, SPLIT, passages=passages)


def merged(model: ImpRAG) -> ImpRAG:
    """A stock copy with the adapter folded into the weights (what 'shared' computes everywhere)."""
    hf = copy.deepcopy(model.model)
    for layer in tuner_layers(hf):
        layer.merge()  # base_layer.weight += B A; the layer then adds nothing more
    return ImpRAG(hf, model.tokenizer, SPLIT)


def test_frozen_passages_embed_with_the_base_weights_and_prompts_with_the_adapter(tokenizer) -> None:
    base, frozen = adapted(tokenizer, "frozen")
    _, shared = adapted(tokenizer, "shared")
    texts = [t for row in PASSAGES for t in row]
    assert_close(frozen.embed_passages(texts), base.embed_passages(texts))
    assert not torch.allclose(shared.embed_passages(texts), base.embed_passages(texts), atol=1e-3)
    # the prompt side is the adapted model's in both modes
    assert_close(frozen.embed_queries(PROMPTS), shared.embed_queries(PROMPTS))
    assert not torch.allclose(frozen.embed_queries(PROMPTS), base.embed_queries(PROMPTS), atol=1e-3)


def test_frozen_fingerprint_is_the_base_models_so_its_index_serves_the_adapter(tokenizer) -> None:
    base, frozen = adapted(tokenizer, "frozen")
    _, shared = adapted(tokenizer, "shared")
    assert frozen.retrieval_fingerprint() == base.retrieval_fingerprint()
    assert shared.retrieval_fingerprint() != base.retrieval_fingerprint()
    # the adapter's weights are out of it: training the adapter never makes the base's index stale
    with torch.no_grad():
        next(p for n, p in frozen.model.named_parameters() if "lora_B" in n and "layers.0." in n).add_(1.0)
    assert frozen.retrieval_fingerprint() == base.retrieval_fingerprint()
    # but the base's own bottom weights are in it
    with torch.no_grad():
        frozen.backbone.layer(0).self_attn.q_proj.base_layer.weight.add_(0.01)
    assert frozen.retrieval_fingerprint() != base.retrieval_fingerprint()


def test_frozen_logits_read_the_base_models_passage_kv(tokenizer, monkeypatch) -> None:
    base, frozen = adapted(tokenizer, "frozen")
    reference = merged(frozen)
    prompts, passages = frozen.read_batch(PROMPTS, PASSAGES)
    got = frozen.forward(prompts, passages)
    base_kv = passage_kv(base.backbone, passages, SPLIT)  # the passages as the base model encodes them
    monkeypatch.setattr(imprag_module, "passage_kv", lambda *args: base_kv)
    want = reference.forward(prompts, passages)  # the adapted prompt pass reading the base's K/V
    assert_close(got, want, atol=1e-4, rtol=1e-4)
    monkeypatch.undo()
    shared_logits = reference.forward(prompts, passages)  # the adapter on the passages too: different
    assert not torch.allclose(got, shared_logits, atol=1e-3)


def test_frozen_passage_passes_build_no_graph_and_leave_what_trains_as_it_was(tokenizer) -> None:
    _, frozen = adapted(tokenizer, "frozen")
    lora = [p for n, p in frozen.model.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    prompts, passages = frozen.read_batch(PROMPTS, PASSAGES)
    assert not frozen.encode_passages(passages).requires_grad
    logits = frozen.forward(prompts, passages)
    logits.float().pow(2).mean().backward()
    assert all(p.requires_grad for p in lora)  # peft's toggle turned them off; base_weights restores them
    assert all(p.grad is not None for n, p in frozen.model.named_parameters() if "lora_" in n)
    assert not any(m.disable_adapters for m in tuner_layers(frozen.model))


def test_base_weights_keeps_adapters_that_were_already_off_off(tokenizer) -> None:
    _, frozen = adapted(tokenizer, "frozen")
    layers = tuner_layers(frozen.model)
    layers[0].enable_adapters(False)
    with base_weights(frozen.model):
        assert all(m.disable_adapters for m in layers)
    assert layers[0].disable_adapters and not any(m.disable_adapters for m in layers[1:])


def test_generation_with_frozen_passages_equals_its_own_forward(tokenizer) -> None:
    _, frozen = adapted(tokenizer, "frozen")
    out = frozen.generate(PROMPTS[:1], passages=PASSAGES[:1], max_new_tokens=4)
    prompts, passages = frozen.read_batch(PROMPTS[:1], PASSAGES[:1])
    first = int(frozen.forward(prompts, passages)[0, -1].argmax())
    assert out[0].token_ids[0] == first


def test_the_passages_setting_is_saved_and_validated(tmp_path) -> None:
    config = ImpRAGConfig(SPLIT, passages="frozen")
    config.save(tmp_path)
    assert ImpRAGConfig.load(tmp_path).passages == "frozen"
    assert ImpRAGConfig.from_dict({"split": {"b": 1, "t": 3}}).passages == "shared"  # saved before it existed
    with pytest.raises(ConfigError, match="passages must be 'shared' or 'frozen'"):
        ImpRAGConfig(SPLIT, passages="sometimes")


def test_a_model_with_an_unmerged_adapter_refuses_save_pretrained(tokenizer, tmp_path) -> None:
    _, frozen = adapted(tokenizer, "frozen")
    with pytest.raises(InputError, match="unmerged LoRA adapter"):
        frozen.save_pretrained(tmp_path / "out")
