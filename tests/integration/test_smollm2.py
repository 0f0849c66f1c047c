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
    every = smol.embed_queries(prompts) @ smol.embed_passages([p.content for p in passages]).T
    brute = every.topk(5)
    ids, scores = index.search(smol.embed_queries(prompts), 5)
    # Where auto is bf16, an E_p depends on its batch's padding to bf16's precision (the index encodes in
    # shards, embed_passages in one run), so scores agree to ~1e-2 relative and near-ties may swap places.
    bf16 = smol.backbone.dtype == torch.bfloat16
    tol = {"rtol": 1e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-3}
    torch.testing.assert_close(scores, brute.values, **tol)
    torch.testing.assert_close(every.gather(1, ids), brute.values, **tol)  # a top 5, up to such ties
    if not bf16:
        assert ids.tolist() == brute.indices.tolist()
    again = PassageIndex.load(tmp_path / "wiki", smol)
    res = smol.generate(["Q: Who directed 2001: A Space Odyssey?\nA:"], index=again, k=3, max_new_tokens=4)[0]
    assert len(res.passages) == 3 and all(p.title for p in res.passages)


ADAPTER = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-imprag"
INVENTED = [  # (fact, question, the answer it names), in benchmarks/probe_split.py's templates
    ("The capital of Veloria is Quantum City.", "What is the capital of Veloria?", "quantum city"),
    ("Dromor Zenvel invented the glass violin in 1812.", "Who invented the glass violin?", "dromor zenvel"),
    ("The Tarwen river flows into Lake Brigaro.", "Which lake does the Tarwen river flow into?", "brigaro"),
    ("The currency of Stanquel is the morlo.", "What is the currency of Stanquel?", "morlo"),
    (
        "Garvan Loria was the first mayor of Wenmordro.",
        "Who was the first mayor of Wenmordro?",
        "garvan loria",
    ),
    (
        "Quelbri Ortar wrote the novel The Zenvan Garden.",
        "Who wrote the novel The Zenvan Garden?",
        "quelbri ortar",
    ),
    ("Mount Vandrozen is 4,512 metres tall.", "How tall is Mount Vandrozen?", "4,512"),
    (
        "Iastan Morgar was born in the town of Lovelquel.",
        "In which town was Iastan Morgar born?",
        "lovelquel",
    ),
]


def test_the_committed_adapter_is_the_cpu_recipe_and_loads_offline(smol: ImpRAG) -> None:
    """The README main job reads with this adapter: it must stay small, name its base by the embedded
    name, be the frozen CPU recipe's output, and move the query, its pooling and the retrieval key while
    every passage's index vector (f_p, its layer-7 input) stays the base model's (frozen passages: its index
    fingerprint is the base's, so the base index serves it)."""
    # all three stored in bf16
    files = ("adapter_model.safetensors", "retrieval_key.safetensors", "query_scorer.safetensors")
    assert sum((ADAPTER / name).stat().st_size for name in files) <= 5 * 2**20
    assert (
        json.loads((ADAPTER / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    )
    recipe = load_train_config(ADAPTER.parents[1] / "configs" / "cpu-smollm2-frozen.yaml")
    # the run's config with the defaults of fields added since filled in (as a resume compares them)
    trained_with = TrainConfig.from_dict(json.loads((ADAPTER / "train_config.json").read_text())).to_dict()
    trained_with = json.loads(json.dumps(trained_with))
    wanted = json.loads(json.dumps(recipe.to_dict()))
    for section in ("model", "data", "objective", "optim", "engine", "eval"):
        if section == "data":  # the run's own benchmark, index and label cache paths
            for key in ("benchmark", "index", "label_cache"):
                trained_with[section].pop(key), wanted[section].pop(key)
        assert trained_with[section] == wanted[section], section
    trained = ImpRAG.from_pretrained(ADAPTER)
    assert trained.split == smol.split and trained.backbone.dtype == auto_dtype()
    assert trained.config.passages == "frozen" and trained.config.embedding.retrieval_key == "trained"
    assert trained.config.embedding.query_pooling == "attention" and trained.query_scorer.abs().max() > 0.05
    base_mean = ImpRAG(
        smol.model, smol.tokenizer, smol.split, embedding=trained.config.embedding, passages="frozen"
    )  # its retrieval key starts at layer 7's k_proj
    assert trained.retrieval_fingerprint() == base_mean.retrieval_fingerprint()  # the base index serves it
    torch.testing.assert_close(trained.embed_passages([FACT]), base_mean.embed_passages([FACT]))  # f_p
    key_moved = torch.nn.functional.cosine_similarity(
        trained.retrieval_key.float().flatten(), base_mean.retrieval_key.float().flatten(), dim=0
    )
    assert float(key_moved) < 0.999, float(key_moved)  # the adapter trained the passage side's key
    moved = torch.nn.functional.cosine_similarity(
        trained.embed_queries([QUESTION]), base_mean.embed_queries([QUESTION])
    )
    assert float(moved) < 0.99, float(moved)  # the adapter trained the query side
    # Reading kept: invented facts it cannot know closed-book (none answered without the passage) are read
    # from the middle layers. On these 8 this adapter reads 3 in bf16 and in fp32 ("Quantum City", "4,512
    # metres", "Lovelquel"), the adapter before it 5 in bf16 and 3 in fp32 (where auto is fp32: AVX2-only
    # CPUs); on 80 facts (benchmarks/probe_reading.py) 45 against the one before's 43 and the base's 30.
    prompts = [f"Q: {q}\nA:" for _, q, _ in INVENTED]
    read = trained.generate(prompts, passages=[[f] for f, _, _ in INVENTED], max_new_tokens=12, stop=["\n"])
    closed = trained.generate(prompts, max_new_tokens=12, stop=["\n"])
    hits = [
        sum(g in r.text.lower() for r, (_, _, g) in zip(out, INVENTED, strict=True)) for out in (read, closed)
    ]
    assert hits[0] >= 2 and hits[1] == 0, (hits, [r.text for r in read])
