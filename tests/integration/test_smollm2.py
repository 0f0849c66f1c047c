"""The real embedded default: SmolLM2-135M-Instruct, loaded offline from the installed package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imprag import ImpRAG, InMemoryRetriever
from imprag.hardware import auto_dtype
from imprag.training.config import TrainConfig, load_train_config

pytestmark = pytest.mark.slow

FACT = "The capital of Veloria is Quantum City."
QUESTION = "Q: What is the capital of Veloria?\nA:"


def test_loads_offline_from_the_cache_with_the_documented_shape(smol: ImpRAG, monkeypatch) -> None:
    from imprag.model import defaults

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(defaults, "_convert", no_conversion)  # converted once; reloads read the cache
    again = ImpRAG.from_pretrained("smollm2-135m")
    assert again.backbone.num_layers == 30 and again.dim == 3 * 64
    assert again.backbone.dtype == auto_dtype()  # the machine's fast dtype, not the checkpoint's fp32
    assert (again.split.b, again.split.t) == (7, 29)


def test_fp32_and_bf16_loads_share_one_fingerprint(smol: ImpRAG) -> None:
    """An index built on a machine where auto means bf16 stays valid where it means fp32, and back."""
    other = "float32" if smol.backbone.dtype == torch.bfloat16 else "bfloat16"
    again = ImpRAG.from_pretrained("smollm2-135m", dtype=other)
    assert again.backbone.dtype != smol.backbone.dtype
    assert again.retrieval_fingerprint() == smol.retrieval_fingerprint()


def test_answers_an_invented_fact_from_the_passage_it_reads(smol: ImpRAG) -> None:
    read = smol.generate([QUESTION], passages=[[FACT]], max_new_tokens=16, stop=["\n"])[0]
    closed = smol.generate([QUESTION], max_new_tokens=16, stop=["\n"])[0]
    assert "quantum city" in read.text.lower(), read.text
    assert "quantum city" not in closed.text.lower(), closed.text  # the answer comes from the passage


def test_retrieve_then_read_end_to_end(smol: ImpRAG) -> None:
    """Wiring check on real weights: the passages read are exactly the top-k of E_q . E_p.

    embed_queries reads E_q with the prompt at position reader.k * l_max, as generate does for k=reader.k
    (other k shift the prompt; pre-RoPE states are shift-invariant up to bf16 rounding)."""
    passages = [FACT, "Paris is the capital of France.", "Mozart was a composer.", "The Nile is a river."]
    passages += ["Rome is the capital of Italy.", "Salzburg is a city in Austria."]
    index = InMemoryRetriever.build(smol, passages)
    k = smol.config.reader.k
    res = smol.generate([QUESTION], index=index, k=k, max_new_tokens=8)[0]
    scores = smol.embed_queries([QUESTION]) @ smol.embed_passages(passages).T
    assert [p.row for p in res.passages] == scores[0].topk(k).indices.tolist()
    assert [p.score for p in res.passages] == pytest.approx(scores[0].topk(k).values.tolist(), rel=1e-5)


def test_index_a_few_hundred_real_summaries(smol: ImpRAG, tmp_path) -> None:
    """Build a real index over 300 Wikipedia summaries: its search equals brute force over embed_passages,
    and generation reads retrieved, titled passages."""
    import itertools

    from imprag import IndexConfig, PassageIndex, build_index, read_corpus

    passages = list(itertools.islice(read_corpus("wiki-summaries"), 300))
    index = build_index(smol, tmp_path / "wiki", passages, IndexConfig(shard_size=128), progress=False)
    assert len(index) == 300 and index.manifest["model"]["source"] == "smollm2-135m"
    prompts = ["Q: Who directed 2001: A Space Odyssey?\nA:", "Paris [SEP] country A:"]
    brute = (smol.embed_queries(prompts) @ smol.embed_passages([p.content for p in passages]).T).topk(5)
    ids, scores = index.search(smol.embed_queries(prompts), 5)
    assert ids.tolist() == brute.indices.tolist()
    torch.testing.assert_close(scores, brute.values, rtol=1e-4, atol=1e-3)
    again = PassageIndex.load(tmp_path / "wiki", smol)
    res = smol.generate(["Q: Who directed 2001: A Space Odyssey?\nA:"], index=again, k=3, max_new_tokens=4)[0]
    assert len(res.passages) == 3 and all(p.title for p in res.passages)


ADAPTER = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-imprag"


def test_the_committed_adapter_is_the_cpu_recipe_and_loads_offline(smol: ImpRAG) -> None:
    """The README main job reads with this adapter: it must stay small, name its base by the embedded
    name, be the CPU recipe's output, and change the retrieval layers (its index fingerprint differs)."""
    assert (ADAPTER / "adapter_model.safetensors").stat().st_size <= 5 * 2**20  # stored in bf16
    assert (
        json.loads((ADAPTER / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    )
    recipe = load_train_config(ADAPTER.parents[1] / "configs" / "cpu-smollm2.yaml")
    # the run's config with the defaults of fields added since filled in (as a resume compares them)
    trained_with = TrainConfig.from_dict(json.loads((ADAPTER / "train_config.json").read_text())).to_dict()
    trained_with = json.loads(json.dumps(trained_with))
    wanted = json.loads(json.dumps(recipe.to_dict()))
    # The run predates dtype/autocast "auto" and was made where auto means bf16 (native bf16 kernels).
    assert (wanted["model"]["dtype"], wanted["engine"]["autocast"]) == ("auto", "auto")
    wanted["model"]["dtype"], wanted["engine"]["autocast"] = "bfloat16", True
    for section in ("model", "objective", "optim", "engine"):
        assert trained_with[section] == wanted[section], section
    trained = ImpRAG.from_pretrained(ADAPTER)
    assert trained.split == smol.split and trained.backbone.dtype == auto_dtype()
    assert trained.retrieval_fingerprint() != smol.retrieval_fingerprint()
    read = trained.generate([QUESTION], passages=[[FACT]], max_new_tokens=16, stop=["\n"])[0]
    assert "quantum city" in read.text.lower(), read.text  # training kept (and trained) the reading
