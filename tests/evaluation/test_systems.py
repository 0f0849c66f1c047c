"""The evaluation systems: exactly what each one feeds the model (the demonstrations, then the retrieved
passages best first with their titles, then the prompt; the prompt or the oracle query as text query; the
implicit index with its k), the factories behind the system names, and an `imprag eval` run with bm25 and
imprag-zero-shot whose reported exact match is recomputed from its predictions files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_model

from imprag import ImpRAG, IndexConfig, LayerSplit, Passage, PassageIndex, StaleIndexError, build_index
from imprag.cli import main
from imprag.config import DecodeConfig
from imprag.data import SPLITS, Item, get_task
from imprag.evaluation import metrics
from imprag.evaluation.harness import STOP
from imprag.evaluation.systems import (
    SYSTEMS,
    ImplicitRetrieval,
    RetrieveThenRead,
    paste_passages,
)
from imprag.model.generation import RetrievedPassage as RP
from imprag.retrieval.index import read_manifest

PROMPTS = [
    "Q: Which article is described by: the capital of Veloria? A:",
    "Is this statement true? The Nile flows north. A:",
]
QUERIES = ["capital of Veloria", "Nile"]  # the items' hand-built oracle queries
DEMOS = "Q: Which article is described by: a composer? A: Mozart\n\n"
DECODE = DecodeConfig(max_new_tokens=6, stop=STOP)  # the harness's stop strings

# What the stub retriever finds for each query, best first: titled and untitled passages, different per query
FOUND = [
    [RP("Paris is the capital of France.", score=2.0, id="france", title="France"),
     RP("an untitled passage", score=1.0, id="x")],
    [RP("The Nile flows into the Mediterranean Sea.", score=3.0, id="nile", title="Nile"),
     RP("Rome is the capital of Italy.", score=0.5, id="rome", title="Rome")],
]  # fmt: skip
# The documented retrieve-then-read inputs: demonstrations, each passage (title line, text) as a paragraph
# in retrieval order, then the prompt
PASTED = [
    DEMOS + "France\nParis is the capital of France.\n\nan untitled passage\n\n" + PROMPTS[0],
    DEMOS
    + "Nile\nThe Nile flows into the Mediterranean Sea.\n\nRome\nRome is the capital of Italy.\n\n"
    + PROMPTS[1],
]


@pytest.fixture
def model(tokenizer) -> ImpRAG:
    return ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))


class StubRetriever:
    """A `TextRetriever` that returns FOUND and records the queries and k it was asked with."""

    def __init__(self, found: Sequence[Sequence[RP]] = FOUND) -> None:
        self.found = found
        self.calls: list[tuple[list[str], int]] = []

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[RP]]:
        self.calls.append((list(queries), k))
        return [list(self.found[i][:k]) for i in range(len(queries))]


def spy_on_generate(model: ImpRAG, monkeypatch) -> list[tuple[list[str], dict[str, Any]]]:
    """Record every `model.generate` call (its prompts and keywords); the real generation still runs."""
    calls: list[tuple[list[str], dict[str, Any]]] = []
    real = model.generate

    def generate(prompts, **kwargs):
        calls.append((list(prompts), kwargs))
        return real(prompts, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def texts(generations) -> list[str]:
    return [g.text for g in generations]


def passage_facts(passages: Sequence[RP]) -> list[tuple]:
    return [(p.id, p.row, p.title, p.text, p.score) for p in passages]


# -- retrieve-then-read --------------------------------------------------------------------------------


def test_paste_passages_layout() -> None:
    assert paste_passages(PROMPTS[0], FOUND[0], DEMOS) == PASTED[0]
    assert paste_passages(PROMPTS[1], FOUND[1], DEMOS) == PASTED[1]
    assert paste_passages("P", [RP("t", title="T")]) == "T\nt\n\nP"  # no demonstrations: nothing before
    assert paste_passages("P", [], "D\n\n") == "D\n\nP"  # nothing retrieved: as closed-book


def test_retrieve_then_read_generates_from_the_pasted_prompts(model: ImpRAG, monkeypatch) -> None:
    # the reference, computed before the spy: what the model answers to the documented inputs
    reference = texts(model.generate(PASTED, decode_config=DECODE))

    # the model's answers depend on what is pasted and in which order (so a mistake shows in the answers)
    def paragraphs(found: Sequence[RP], titles: bool = True) -> str:
        return "".join(f"{p.title}\n{p.text}\n\n" if p.title and titles else f"{p.text}\n\n" for p in found)

    wrong = {
        "reversed": [DEMOS + paragraphs(f[::-1]) + p for p, f in zip(PROMPTS, FOUND, strict=True)],
        "untitled": [DEMOS + paragraphs(f, titles=False) + p for p, f in zip(PROMPTS, FOUND, strict=True)],
        "demos after": [paragraphs(f) + DEMOS + p for p, f in zip(PROMPTS, FOUND, strict=True)],
    }
    assert [DEMOS + paragraphs(f) + p for p, f in zip(PROMPTS, FOUND, strict=True)] == PASTED
    for inputs in wrong.values():
        assert texts(model.generate(inputs, decode_config=DECODE)) != reference

    retriever = StubRetriever()
    calls = spy_on_generate(model, monkeypatch)
    system = RetrieveThenRead(model, retriever, "bm25", k=2)
    preds = system.answer(PROMPTS, QUERIES, DECODE, DEMOS)
    assert retriever.calls == [(PROMPTS, 2)]  # the prompts, without the demonstrations, and k
    assert calls == [(PASTED, {"decode_config": DECODE})]  # one batch, no index: the passages are pasted
    assert [p.text for p in preds] == reference
    assert [passage_facts(p.passages) for p in preds] == [passage_facts(f) for f in FOUND]
    assert system.describe() == {
        "system": "bm25", "retriever": "StubRetriever", "query": "prompt", "k": 2,
        "reads": "passages pasted before the prompt",
    }  # fmt: skip


@pytest.mark.parametrize("oracle, asked", [(False, PROMPTS), (True, QUERIES)])
def test_text_query_is_the_prompt_or_the_oracle_query(
    model: ImpRAG, monkeypatch, oracle: bool, asked: list[str]
) -> None:
    retriever = StubRetriever()
    calls = spy_on_generate(model, monkeypatch)
    system = RetrieveThenRead(
        model, retriever, "minilm-oracle" if oracle else "minilm", k=1, oracle_query=oracle
    )
    preds = system.answer(PROMPTS, QUERIES, DECODE, DEMOS)
    assert retriever.calls == [(asked, 1)]
    # whatever the query, the model reads the top passage pasted before the (unchanged) prompt
    assert calls[0][0] == [DEMOS + f[0].content + "\n\n" + p for p, f in zip(PROMPTS, FOUND, strict=True)]
    assert [[p.id for p in pred.passages] for pred in preds] == [["france"], ["nile"]]
    assert system.describe()["query"] == ("oracle" if oracle else "prompt")


# -- ImpRAG: implicit retrieval ------------------------------------------------------------------------

TOPICS = ["capital", "river", "composer", "mountain", "novel", "currency"]
PASSAGES = [
    Passage(id=f"p{i}", title=f"Topic {i}", text=f"Passage {i} tells about the {TOPICS[i % 6]} number {i}.")
    for i in range(12)
]


def trained_as(model: ImpRAG, directory: Path, system: str) -> ImpRAG:
    """Mark `model` as the output of `imprag train ... objective.system=SYSTEM` (what the trained systems'
    names require)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train_config.json").write_text(json.dumps({"objective": {"system": system}}))
    model.source = str(directory)
    return model


@pytest.fixture
def index_dir(model: ImpRAG, tmp_path) -> Path:
    build_index(model, tmp_path / "idx", PASSAGES, IndexConfig(shard_size=4, batch_size=3), progress=False)
    return tmp_path / "idx"


@pytest.mark.parametrize("name", ["imprag-zero-shot", "imprag-warmup", "imprag"])
def test_implicit_retrieval_generates_with_the_index(model: ImpRAG, index_dir: Path, name: str) -> None:
    index = PassageIndex.load(index_dir, model)
    full = [DEMOS + p for p in PROMPTS]
    reference = model.generate(full, index=index, k=3, decode_config=DECODE)
    # the demonstrations change what is generated or read (so leaving them out shows); k shows in the count
    alone = model.generate(PROMPTS, index=index, k=3, decode_config=DECODE)
    assert [(g.text, passage_facts(g.passages)) for g in alone] != [
        (g.text, passage_facts(g.passages)) for g in reference
    ]

    if name != "imprag-zero-shot":
        trained_as(model, index_dir.parent / "run", "imprag")
    system = SYSTEMS[name](model, index_dir, 3)
    assert isinstance(system, ImplicitRetrieval) and system.name == name and system.retrieves
    preds = system.answer(PROMPTS, QUERIES, DECODE, DEMOS)
    assert [p.text for p in preds] == texts(reference)
    assert [passage_facts(p.passages) for p in preds] == [passage_facts(g.passages) for g in reference]
    assert all(
        len(p.passages) == 3 and all(r.id in {q.id for q in PASSAGES} for r in p.passages) for p in preds
    )
    assert system.describe() == {"system": name, "query": "implicit (layer b)", "k": 3, "b": 1, "t": 3}


def test_implicit_retrieval_refuses_an_index_of_another_model(index_dir: Path, tokenizer) -> None:
    """A trained model evaluated as `imprag` against the zero-shot index (not refreshed) is refused."""
    trained = ImpRAG(tiny_model("llama", seed=1), tokenizer, LayerSplit(1, 3))
    trained_as(trained, index_dir.parent / "run", "imprag")
    with pytest.raises(StaleIndexError, match="is stale"):
        SYSTEMS["imprag"](trained, index_dir, 3)


def test_imprag_frozen_reads_the_base_index_and_imprag_refuses_a_frozen_model(
    model: ImpRAG, index_dir: Path
) -> None:
    from dataclasses import replace

    from imprag.model.reader import InputError

    frozen = ImpRAG(model.model, model.tokenizer, model.split, passages="frozen")  # no adapter: base E_p
    trained_as(frozen, index_dir.parent / "run", "imprag")
    system = SYSTEMS["imprag-frozen"](frozen, index_dir, 3)
    assert system.name == "imprag-frozen" and system.retrieves
    with pytest.raises(InputError, match=r"passages=shared, but .* has passages=frozen; evaluate it as "
                       r"--system imprag-frozen"):  # fmt: skip
        SYSTEMS["imprag"](frozen, index_dir, 3)
    assert replace(frozen.config, passages="shared") == model.config
    # the stage-1 checkpoint of a frozen run has its own name, so its rows never mix with a shared run's
    assert SYSTEMS["imprag-frozen-warmup"](frozen, index_dir, 3).name == "imprag-frozen-warmup"
    with pytest.raises(InputError, match=r"evaluate it as --system imprag-frozen-warmup"):
        SYSTEMS["imprag-warmup"](frozen, index_dir, 3)


def test_text_system_factories(model: ImpRAG, index_dir: Path, monkeypatch) -> None:
    """Each text system opens its baseline in INDEX/baselines/KIND over the index's passages, with the prompt
    or (minilm-oracle only) the oracle query."""
    import imprag.retrieval.baselines as baselines

    opened: list[tuple[str, Path, int]] = []

    def load_baseline(kind: str, directory, store) -> StubRetriever:
        opened.append((kind, Path(directory), len(store)))
        return StubRetriever()

    monkeypatch.setattr(baselines, "load_baseline", load_baseline)
    expected = {
        "bm25": ("bm25", False),
        "minilm": ("minilm", False),
        "minilm-oracle": ("minilm", True),
        "ra-it": ("minilm", False),
    }
    for name, (kind, oracle) in expected.items():
        if name == "ra-it":
            trained_as(model, index_dir.parent / "ra-it-run", "ra-it")
        system = SYSTEMS[name](model, index_dir, 4)
        assert isinstance(system, RetrieveThenRead)
        assert (system.name, system.k, system.oracle_query) == (name, 4, oracle)
        assert opened[-1] == (kind, index_dir / "baselines" / kind, len(PASSAGES))
    closed = SYSTEMS["closed-book"](model, index_dir, 4)
    assert closed.name == "closed-book" and not closed.retrieves


@pytest.mark.parametrize(
    "name, trained, message",
    [
        ("imprag", None, "has no train_config.json.*or evaluate this model as imprag-zero-shot"),
        ("imprag-warmup", "ra-it", "was trained as 'ra-it'"),
        (
            "imprag-frozen",
            "imprag",
            "trained with passages=frozen, but .* has passages=shared; evaluate it as --system imprag",
        ),
        (
            "imprag-frozen-warmup",
            "imprag",
            "passages=shared; evaluate it as --system imprag-warmup",
        ),
        ("ra-it", "imprag", r"objective\.system=ra-it.*or evaluate this model as minilm"),
        ("ra-dit-llama", "retriever", r"objective\.system=ra-it`, but --model"),
    ],
)
def test_a_trained_system_name_refuses_a_model_not_trained_for_it(
    model: ImpRAG, index_dir: Path, tmp_path, name: str, trained: str | None, message: str
) -> None:
    """Numbers filed under `imprag` or `ra-it` must come from such a run, not from whatever --model (or the
    index's own model) was at hand."""
    from imprag.model.reader import InputError

    if trained:
        trained_as(model, tmp_path / "run", trained)
    with pytest.raises(InputError, match=message):
        SYSTEMS[name](model, index_dir, 3)


# -- `imprag eval` end to end --------------------------------------------------------------------------


def write_bench(directory: Path, items: Sequence[Item], corpus_hash: str) -> Path:
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        counts.setdefault(it.task, dict.fromkeys(SPLITS, 0))[it.split] += 1
        path = directory / it.split / f"{it.task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(it.to_json() + "\n")
    manifest = {"seed": 0, "corpus": {"name": "tiny", "hash": corpus_hash}, "counts": counts}
    (directory / "benchmark.json").write_text(json.dumps(manifest))
    return directory


def bench_items(answers: dict[str, list[str]] | None = None) -> list[Item]:
    def item(task: str, key: str, fields: dict[str, str], evidence: str) -> Item:
        iid = f"{task}/{key}"
        gold = (answers or {}).get(iid, ["True" if task == "fact-check" else "unanswerable"])
        return Item(iid, task, "test", fields, gold, [evidence], oracle_query=key)

    return [
        *(item("describe", f"d{i}", {"question": f"the {TOPICS[i]} number {i}"}, f"p{i}") for i in range(4)),
        item("fact-check", "f0", {"statement": "Passage 1 tells about the river."}, "p1"),
        item("fact-check", "f1", {"statement": "Passage 2 tells about a novel."}, "p2"),
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recomputed_em(records: list[dict[str, Any]], task: str) -> float:
    """The mean score of the predictions as written, scored again from their text and gold answers."""
    score = metrics.true_false_accuracy if get_task(task).scoring == "accuracy" else metrics.exact_match
    return sum(score(r["prediction"], r["answers"]) for r in records) / len(records)


def test_eval_bm25_and_imprag_zero_shot_end_to_end(model: ImpRAG, tmp_path, capsys) -> None:
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in PASSAGES)
    )
    idx = tmp_path / "idx"
    argv = ["index", str(corpus), "--out", str(idx), "--model", str(saved), "--baselines", "bm25"]
    assert main([*argv, "--no-progress"]) == 0
    corpus_hash = read_manifest(idx)["corpus_hash"]
    systems, tasks = ["bm25", "imprag-zero-shot"], ["describe", "fact-check"]

    def run(answers: dict[str, list[str]], name: str) -> Path:
        bench = write_bench(tmp_path / f"bench-{name}", bench_items(answers), corpus_hash)
        out = tmp_path / name
        argv = ["eval", "--data", str(bench), "--index", str(idx), "--system", ",".join(systems)]
        argv += ["--out", str(out), "--k", "2", "--tasks", ",".join(tasks)]
        assert main(argv) == 0
        return out

    # A first run finds what the untrained model answers; the second benchmark makes some of those answers
    # gold, so that the exact match checked below is not 0 everywhere.
    placeholder = {it.id: it.answers for it in bench_items()}
    first = run(placeholder, "first")
    said = {
        s: {
            r["id"]: r["prediction"]
            for t in tasks
            for r in read_jsonl(first / s / "predictions" / f"{t}.jsonl")
        }
        for s in systems
    }
    answers = dict(placeholder)
    answers["describe/d0"] = [said["bm25"]["describe/d0"]]
    answers["describe/d1"] = [said["bm25"]["describe/d1"], said["imprag-zero-shot"]["describe/d1"]]
    answers["describe/d2"] = [said["imprag-zero-shot"]["describe/d2"]]
    capsys.readouterr()
    out = run(answers, "second")
    printed = capsys.readouterr().out
    assert "| bm25 |" in printed and "| imprag-zero-shot |" in printed

    table = json.loads((out / "benchmark.json").read_text())
    nontrivial = 0.0
    for system in systems:
        summary = json.loads((out / system / "metrics.json").read_text())
        rows = {r["task"]: r for r in summary["rows"]}
        assert list(rows) == tasks
        for task in tasks:
            records = read_jsonl(out / system / "predictions" / f"{task}.jsonl")
            assert [r["id"] for r in records] == [it.id for it in bench_items(answers) if it.task == task]
            assert [r["answers"] for r in records] == [answers[r["id"]] for r in records]
            assert all(len(r["read"]) == 2 for r in records)  # --k 2 reached the system
            em = recomputed_em(records, task)
            assert rows[task]["em"] == pytest.approx(em) and rows[task]["n"] == len(records)
            row = next(r for r in table if (r["system"], r["task"]) == (system, task))
            assert row["em"] == pytest.approx(em)
            nontrivial += em
        # deterministic greedy decoding: the second run predicts what the first did
        again = {
            r["id"]: r["prediction"]
            for t in tasks
            for r in read_jsonl(out / system / "predictions" / f"{t}.jsonl")
        }
        assert again == said[system]
        run_json = json.loads((out / system / "run.json").read_text())
        assert run_json["index"]["corpus_hash"] == corpus_hash and run_json["system"]["k"] == 2
    assert nontrivial > 0
    describe = {s: json.loads((out / s / "metrics.json").read_text())["rows"][0]["em"] for s in systems}
    assert describe["bm25"] >= 0.5 and describe["imprag-zero-shot"] >= 0.5  # d0, d1 / d1, d2 at least


def test_eval_refuses_a_bad_system_before_running_any(
    model: ImpRAG, index_dir: Path, tmp_path, capsys
) -> None:
    """`--system closed-book,imprag` with an untrained model: the refusal comes first, not after closed-book
    has run over every task."""
    saved = tmp_path / "untrained"
    model.save_pretrained(saved)
    bench = write_bench(tmp_path / "bench", bench_items(), read_manifest(index_dir)["corpus_hash"])
    argv = ["eval", "--data", str(bench), "--index", str(index_dir), "--system", "closed-book,imprag"]
    assert main([*argv, "--model", str(saved), "--out", str(tmp_path / "out"), "--tasks", "describe"]) == 2
    assert "has no train_config.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "closed-book").exists()
