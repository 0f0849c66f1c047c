"""What a build needs, said before it starts: `vector_bytes` against serialized FAISS indexes of every
kind, `plan_build` against a real build's files, and `imprag index --estimate` writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import tiny_model

from imprag import ImpRAG, IndexConfig, LayerSplit, Passage, build_index
from imprag.cli import main
from imprag.retrieval.index import (
    STORE,
    VECTORS,
    estimate,
    mapped_bytes,
    new_faiss_index,
    plan_build,
    skip_polysemous_training,
    vector_bytes,
)


@pytest.mark.parametrize(
    "factory",
    [
        "Flat",
        "IVF16,PQ4",
        "OPQ4,IVF16,PQ4",
        "IVF16,SQ8",
        "SQ8",
        "PQ4",
        "HNSW16",
        "HNSW32,SQ8",
        "IVF16,PQ4,Refine(SQ8)",
        "PQ8x4fs,Refine(SQfp16)",
        "IVF16,PQ8x4fs,Refine(Flat)",
    ],
)
def test_vector_bytes_is_what_faiss_serializes_per_vector(factory: str) -> None:
    """The marginal bytes of 2,000 more vectors in the serialized index, as `_assemble` builds it."""
    dim, rng = 16, np.random.default_rng(0)
    x = rng.standard_normal((6000, dim)).astype(np.float32)
    index = new_faiss_index(dim, factory)
    skip_polysemous_training(index)
    index.train(x[:2000])
    index.add_with_ids(x[:2000], np.arange(2000))
    before = faiss.serialize_index(index).nbytes
    index.add_with_ids(x[2000:4000], np.arange(2000, 4000))
    marginal = (faiss.serialize_index(index).nbytes - before) / 2000
    assert vector_bytes(dim, factory) == pytest.approx(marginal, rel=0.05)


def test_estimate_counts_shards_as_float32_vectors_with_their_rows() -> None:
    assert estimate(1000, 192, "Flat") == {"shards_bytes": 1000 * (192 * 4 + 8), "index_bytes": 1000 * 776}
    assert estimate(1000, 192, "IVF64,PQ32")["index_bytes"] == 1000 * (32 + 8)  # the IVF holds the ids


def test_the_plan_matches_a_real_build(tokenizer, tmp_path: Path) -> None:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))
    passages = [
        Passage(id=f"page-{i}", title=f"Page {i}", text=" ".join(f"word{j}" for j in range(i % 40 + 10)))
        for i in range(300)
    ]
    index = build_index(model, tmp_path / "idx", passages, IndexConfig(shard_size=64), progress=False)
    text = sum(len(p.title) + len(p.text) for p in passages)
    assert index.store.text_bytes() == text
    plan = plan_build(model, len(passages), text, IndexConfig(shard_size=64))
    assert plan["index_bytes"] == pytest.approx((tmp_path / "idx" / VECTORS).stat().st_size, rel=0.05)
    assert plan["store_bytes"] == pytest.approx((tmp_path / "idx" / STORE).stat().st_size, rel=0.5)
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    assert plan["weights_bytes"] == weights < plan["encode_peak_bytes"]
    assert plan["search_ram_bytes"] == plan["index_bytes"]  # loaded whole
    mapped = plan_build(model, len(passages), text, IndexConfig(shard_size=64, mmap=True))
    assert mapped["search_ram_bytes"] == len(passages) * 8  # the ID map; the vectors stay in the file
    index.close()


@pytest.mark.parametrize(
    ("factory", "in_file"),
    [
        ("Flat", 64),
        ("IVF16,PQ4", 4 + 8),  # the list's codes and ids
        ("IVF16,PQ8x4fs", 0),  # fast-scan blocks stay in RAM
        ("HNSW16", 64 + 136),  # storage and ~8.5*M bytes of links
        ("IVF16,PQ8x4fs,Refine(Flat)", 64),
        ("PQ4", 4),
    ],
)
def test_mapped_bytes_are_what_faiss_maps(factory: str, in_file: int) -> None:
    """What `IndexConfig.mmap` leaves in the file (16-d float vectors: 64 bytes), as FAISS 1.15 maps it
    (checked by RSS for the IVF rows, by the arrays' ownership in tests/retrieval/test_index.py)."""
    assert mapped_bytes(16, factory) == in_file <= vector_bytes(16, factory)


def test_a_model_without_weights_plans_what_the_loaded_one_does(tmp_path: Path, tokenizer) -> None:
    """`from_pretrained(weights=False)`: the structure on the meta device, for a saved model and for an
    adapter of it, with the same plan (dims, weight bytes, peaks) as the model loaded with its weights."""
    from imprag.training.checkpoint import export_model, prepare_model
    from imprag.training.config import EngineConfig

    base = tmp_path / "base"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(base)
    trained = ImpRAG.from_pretrained(base, dtype="float32")
    prepare_model(trained, EngineConfig(lora_r=4))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    export_model(trained, adapter)
    config = IndexConfig(factory="IVF16,PQ8")
    for source in (base, adapter):
        real = ImpRAG.from_pretrained(source, dtype="float32")
        shape = ImpRAG.from_pretrained(source, dtype="float32", weights=False)
        assert {p.device.type for p in shape.model.parameters()} == {"meta"}
        assert (shape.split, shape.config, shape.source) == (real.split, real.config, real.source)
        assert plan_build(shape, 10_000, 10**6, config) == plan_build(real, 10_000, 10**6, config)


def test_index_estimate_writes_nothing_and_sizes_the_corpus(
    tmp_path: Path, tokenizer, capsys, monkeypatch
) -> None:
    import imprag.model.loading as loading

    def no_weights(*args, **kwargs):
        raise AssertionError("an estimate read the model's weights")

    saved = tmp_path / "model"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(saved)
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": f"p{i}", "title": f"T{i}", "text": "x" * 98} for i in range(50)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "idx"
    args = ["index", str(corpus), "--out", str(out), "--model", str(saved), "--no-progress"]
    with monkeypatch.context() as unreadable:  # every estimate runs with the weights unreadable
        unreadable.setattr(loading.AutoModelForCausalLM, "from_pretrained", no_weights)
        assert main([*args, "--estimate"]) == 0
        printed = capsys.readouterr().out
        assert "imprag index Flat: 50 passages" in printed and "RAM per encoding process" in printed
        assert not out.exists()
        assert main([*args, "--estimate", "--passages", "1000000", "--factory", "IVF256,PQ8"]) == 0
        printed = capsys.readouterr().out
        assert "1,000,000 passages" in printed and "mean passage size from the first 50)" in printed
        assert not out.exists()
        assert main([*args, "--passages", "10"]) == 2  # sizes an estimate only
        assert "--passages sizes an --estimate" in capsys.readouterr().err
        assert main([*args, "--estimate", "--factory", "IVF7,PQ5"]) == 2  # FAISS cannot build it for this dim
        assert not out.exists()
    assert main(args) == 0  # a real build, then the estimate of refreshing it at 1,000x the size
    capsys.readouterr()
    refresh = ["index", "--refresh", "--out", str(out), "--model", str(saved), "--no-progress"]
    with monkeypatch.context() as unreadable:
        unreadable.setattr(loading.AutoModelForCausalLM, "from_pretrained", no_weights)
        assert main([*refresh, "--estimate", "--passages", "50000"]) == 0
    assert "50,000 passages" in (printed := capsys.readouterr().out) and "from the 50 stored" in printed
