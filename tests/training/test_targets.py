"""Pseudo labels from a teacher retriever: which ranks become positives and negatives, and the cache."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from imprag.data.benchmark import Item
from imprag.model.generation import RetrievedPassage
from imprag.training.targets import PseudoLabelConfig, cached_pseudo_labels, pseudo_label


class RankedTeacher:
    """Ranks 60 passages p0..p59 for every query, rotated by the query's number ("q7" starts at p7)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RetrievedPassage]]:
        self.queries += queries
        out = []
        for q in queries:
            shift = int(q.split("q")[-1].split()[0])
            out.append([RetrievedPassage("", 1.0 - r / 100, id=f"p{(shift + r) % 60}") for r in range(k)])
        return out


def items(n: int = 6, evidence: str = "p20") -> list[Item]:
    return [
        Item(
            f"describe/{i}",
            "describe",
            "train",
            {"question": f"q{i}"},
            ["x"],
            [evidence],
            oracle_query=f"o q{i}",
        )
        for i in range(n)
    ]


def test_positives_are_the_top_ranks_and_negatives_come_from_ranks_10_to_50() -> None:
    labels = pseudo_label(items(), RankedTeacher())
    for i, label in enumerate(labels):
        ranks = {f"p{(i + r) % 60}": r + 1 for r in range(60)}
        assert label.positives == [f"p{(i + r) % 60}" for r in range(5)]
        assert len(label.negatives) == 4 and len(set(label.negatives)) == 4
        assert all(10 <= ranks[n] <= 50 for n in label.negatives)
        assert "p20" not in label.negatives  # the gold evidence is never a negative


def test_labels_are_deterministic_and_independent_of_batching() -> None:
    a = pseudo_label(items(), RankedTeacher(), PseudoLabelConfig(batch_size=2))
    b = pseudo_label(items(), RankedTeacher(), PseudoLabelConfig(batch_size=256))
    c = pseudo_label(items(), RankedTeacher(), PseudoLabelConfig(seed=1))
    assert a == b and a != c


def test_the_teacher_gets_the_prompt_or_the_oracle_query() -> None:
    teacher = RankedTeacher()
    pseudo_label(items(2), teacher)
    pseudo_label(items(2), teacher, PseudoLabelConfig(query="oracle"))
    assert teacher.queries == ["Q: q0 A:", "Q: q1 A:", "o q0", "o q1"]


@pytest.mark.parametrize(
    "kwargs",
    [{"positives": 0}, {"negative_ranks": (5, 50)}, {"negative_ranks": (10, 12), "negatives": 4}],
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PseudoLabelConfig(**kwargs)


def test_cache_is_reused_only_for_the_same_teacher_corpus_settings_and_items(tmp_path) -> None:
    teacher = RankedTeacher()
    args = (tmp_path, "minilm", "abc123", "describe-train")
    first, cached = cached_pseudo_labels(*args, items(), teacher)
    assert not cached and len(teacher.queries) == 6
    again, cached = cached_pseudo_labels(*args, items(), teacher)
    assert cached and again == first and len(teacher.queries) == 6  # the teacher was not asked again
    _, cached = cached_pseudo_labels(*args, items(), teacher, PseudoLabelConfig(negatives=2))
    assert not cached
    _, cached = cached_pseudo_labels(*args, items(5), teacher)  # other items
    assert not cached
    _, cached = cached_pseudo_labels(tmp_path, "minilm", "other-corpus", "describe-train", items(5), teacher)
    assert not cached
    folder = tmp_path / "minilm-abc123"
    (folder / "describe-train.jsonl").write_text("{broken\n")  # damaged data: recomputed, not an error
    labels, cached = cached_pseudo_labels(*args, items(5), teacher)
    assert not cached and len(labels) == 5


def test_cli_pseudo_label_over_a_real_bm25_index(tmp_path, tokenizer, capsys) -> None:
    import json

    from conftest import tiny_model

    from imprag import ImpRAG, LayerSplit
    from imprag.cli import main
    from imprag.retrieval.corpus import CorpusHash, read_corpus

    corpus = tmp_path / "corpus.jsonl"
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "omicron",
    ]
    corpus.write_text(
        "".join(json.dumps({"id": w, "title": w, "text": f"{w} is a letter"}) + "\n" for w in words)
    )
    model = tmp_path / "model"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(model)
    index = tmp_path / "idx"
    argv = ["index", str(corpus), "--out", str(index), "--model", str(model), "--baselines", "bm25"]
    assert main([*argv, "--no-progress"]) == 0
    hasher = CorpusHash()
    for p in read_corpus(corpus):
        hasher.add(p.id, p.digest)
    train = [
        Item(f"describe/{w}", "describe", "train", {"question": f"{w} letter"}, [w], [w]) for w in words[:3]
    ]
    bench = tmp_path / "bench"
    (bench / "train").mkdir(parents=True)
    (bench / "train" / "describe.jsonl").write_text("".join(it.to_json() + "\n" for it in train))
    manifest = {"counts": {"describe": {"train": 3, "dev": 0, "test": 0}}, "corpus": {"hash": hasher.value}}
    (bench / "benchmark.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    argv = ["pseudo-label", "--data", str(bench), "--index", str(index), "--teacher", "bm25"]
    argv += ["--out", str(tmp_path / "labels"), "--negatives", "2"]
    assert main(argv) == 0
    assert (
        "describe train: 3 items, gold evidence among the 5 positives for 100.0% (computed)"
        in capsys.readouterr().out
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "labels" / f"bm25-{hasher.value}" / "describe-train.jsonl").open()
    ]
    assert [r["positives"][0] for r in rows] == words[:3] and all(len(r["negatives"]) == 2 for r in rows)
    assert main(argv) == 0 and "(cached)" in capsys.readouterr().out
    assert main([*argv, "--limit", "0"]) == 2 and "--limit must be >= 1" in capsys.readouterr().err
    manifest["corpus"]["hash"] = "another"
    (bench / "benchmark.json").write_text(json.dumps(manifest))
    assert main(argv) == 2 and "indexes another corpus" in capsys.readouterr().err
