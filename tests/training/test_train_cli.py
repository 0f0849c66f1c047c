"""`imprag train` end to end through the CLI on a tiny model: a hand-made benchmark and corpus, a BM25
teacher, two epochs (warmup, then distillation), the exported model reloaded, the index refreshed with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_model
from torch.testing import assert_close

from imprag import ImpRAG, LayerSplit
from imprag.cli import build_parser, main
from imprag.retrieval.corpus import CorpusHash, Passage

PASSAGES = [
    Passage(f"a{i}", f"Article {i}", f"Article {i} is about topic number {i * 3}.") for i in range(30)
]


def item(task: str, i: int, fields: dict, answer: str, evidence: list[str]) -> dict:
    return {"id": f"{task}-{i}", "task": task, "fields": fields,
            "answers": [answer], "evidence": evidence, "oracle_query": "", "meta": {}}  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, tokenizer) -> dict[str, str]:
    model = tmp_path / "base"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in PASSAGES)
    )
    digest = CorpusHash()
    for p in PASSAGES:
        digest.add(p.id, p.digest)
    bench = tmp_path / "bench"
    describe = [
        item("describe", i, {"question": f"Which is topic {i * 3}?"}, f"Article {i}", [f"a{i}"])
        for i in range(10)
    ]
    denoise = [item("denoise", i, {"context": f"text [START] x{i} [END]"}, f"x{i}", []) for i in range(4)]
    rows = {
        ("train", "describe"): describe[:6],
        ("train", "denoise"): denoise,
        ("dev", "describe"): describe[6:],
    }
    for (split, task), lines in rows.items():
        (bench / split).mkdir(parents=True, exist_ok=True)
        (bench / split / f"{task}.jsonl").write_text(
            "".join(json.dumps({**r, "split": split}) + "\n" for r in lines)
        )
    counts = {"describe": {"train": 6, "dev": 4, "test": 0}, "denoise": {"train": 4, "dev": 0, "test": 0}}
    (bench / "benchmark.json").write_text(json.dumps({"counts": counts, "corpus": {"hash": digest.value}}))
    index = tmp_path / "idx"
    argv = ["index", str(corpus), "--out", str(index), "--model", str(model), "--baselines", "bm25"]
    assert main([*argv, "--no-progress"]) == 0
    return {"model": str(model), "bench": str(bench), "index": str(index), "out": str(tmp_path / "run")}


def overrides(s: dict[str, str]) -> list[str]:
    return [
        f"model.name={s['model']}", "model.dtype=float32", f"data.benchmark={s['bench']}",
        f"data.index={s['index']}", "data.retrieval_tasks=[describe]", "data.instruction_tasks=[denoise]",
        "data.teacher=bm25", "data.positives=2", "data.hard_negatives=1", "data.random_negatives=2",
        "data.mix=[0.5,0.5,0.0]", "objective.warmup_epochs=1", "objective.read_k=1", "optim.batch_size=2",
        "optim.epochs=2", "optim.steps_per_epoch=2", "optim.warmup_steps=1", "engine.lora_r=4",
        "engine.autocast=false", "eval.tasks=[describe]", "eval.per_task=4", "eval.pool=8", "eval.k=3",
    ]  # fmt: skip


def test_train_refresh_and_reload_through_the_cli(setup: dict[str, str], capsys) -> None:
    out = Path(setup["out"])
    assert main(["train", "--out", str(out), "--no-progress", *overrides(setup)]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in log if "stage" in r]
    assert stages[:2] == ["warmup", "warmup"] and stages[2:] == ["distill", "distill"]
    health = [r["health"] for r in log if "health" in r]
    assert len(health) == 2
    # each is the model's own health on the run's pool, recomputed here
    from imprag.data.benchmark import Benchmark
    from imprag.retrieval.index import PassageIndex
    from imprag.training.config import EvalConfig
    from imprag.training.health import RetrievalHealth

    pool = RetrievalHealth.from_benchmark(
        Benchmark.load(setup["bench"]), PassageIndex.load(setup["index"]).store,
        EvalConfig(tasks=("describe",), per_task=4, pool=8, k=3), seed=0,
    )  # fmt: skip
    assert health[-1] == pool(ImpRAG.from_pretrained(out / "model", dtype="float32"))
    assert health[0] == pool(ImpRAG.from_pretrained(out / "model-warmup", dtype="float32"))
    # (4 steps of a tiny model leave both on one hub passage, so this checks the pool, prompts and k the run
    # used, not which weights; tests/training/test_health.py checks the scoring itself.)
    # first, the teacher's health on the same pool: BM25 finds every article, whose text holds the number
    # the prompt asks about (rows mapped back from the pool-only index to the store)
    assert log[0]["step"] == 0 and log[0]["reference"]["retriever"] == "bm25"
    assert log[0]["reference"]["describe"]["recall"] == 1.0
    assert log[0]["reference"]["describe"]["distinct_top1"] == 4
    assert sum("reference" in r for r in log) == 1
    assert (out / "pseudo-labels").is_dir()  # the teacher's labels are cached beside the run
    warmup = ImpRAG.from_pretrained(out / "model-warmup")  # stage 1 alone, for the imprag-warmup system
    assert warmup.retrieval_fingerprint() != ImpRAG.from_pretrained(out / "model").retrieval_fingerprint()
    # the exported model loads, and the index built with the base model is stale for it until refreshed
    trained = ImpRAG.from_pretrained(out / "model")
    assert trained.split == LayerSplit(1, 3)
    assert main(["retrieve", setup["index"], "Q: Which is topic 3? A:", "--model", str(out / "model")]) == 2
    assert "stale" in capsys.readouterr().err
    argv = ["index", "--refresh", "--out", setup["index"], "--model", str(out / "model"), "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((Path(setup["index"]) / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(out / "model")
    assert manifest["model"]["fingerprint"] == trained.retrieval_fingerprint()
    # running the finished command again resumes at the end: nothing is trained twice
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--no-progress", *overrides(setup)]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == len(log)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["optim.bogus=1"], "unknown key(s) ['bogus'] in optim"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["nonsense"], "must look like section.field=value"),
        ([], "data.benchmark and data.index are required"),
    ],
)
def test_train_errors_are_one_line(extra: list[str], message: str, tmp_path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    """A fresh start replaces OUT/log.jsonl and OUT/train_config.json: a folder of other files is refused
    before anything is read or written (issue 16); a file as --out too."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "log.jsonl").write_text("my lab notebook\n")
    argv = ["train", "--no-progress", "data.benchmark=B", "data.index=I"]
    assert main([*argv, "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "holds files but no earlier run" in err and err.count("\n") == 1
    assert [p.name for p in mine.iterdir()] == ["log.jsonl"]
    assert (mine / "log.jsonl").read_text() == "my lab notebook\n"
    (tmp_path / "afile").write_text("x")
    assert main([*argv, "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    (mine / "pseudo-labels").mkdir()  # a run that died while labelling: its own folder, resumable
    assert main([*argv, "--out", str(mine)]) == 2
    assert "holds files but no earlier run" not in capsys.readouterr().err


def test_train_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    assert "section.field=value" in capsys.readouterr().out


def test_a_separate_retriever_trains_alone_and_serves_ra_dit_llama(setup: dict[str, str], tmp_path) -> None:
    from safetensors.torch import load_file

    from imprag.config import DecodeConfig
    from imprag.evaluation.systems import SYSTEMS
    from imprag.model.reader import InputError
    from imprag.retrieval.index import PassageIndex

    out = tmp_path / "retriever"
    retriever_args = [
        "objective.system=retriever", "data.mix=[1,0,0]", "objective.warmup_epochs=2",
        "engine.train_groups=[bottom]", "model.pooling=mean", "model.center=true", "model.center_prompts=4",
    ]  # fmt: skip
    assert main(["train", "--out", str(out), "--no-progress", *overrides(setup), *retriever_args]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "stage" in r]
    assert len(steps) == 4 and all(r["kind"] == "retrieval" and "j_gen" not in r for r in steps)
    assert all(r["loss"] == r["j_ret"] for r in steps)  # the NCE alone (lambda = 1)
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert {key.split(".")[4] for key in adapter} == {"0", "1"}  # layers 0..b (b=1) only
    retriever = ImpRAG.from_pretrained(out / "model")
    assert retriever.config.embedding.pooling == "mean" and retriever.config.embedding.query_center
    # the ra-dit-llama system: the base model generates from what the separate retriever finds
    index = tmp_path / "idx-retriever"
    argv = ["index", str(Path(setup["index"]).parent / "corpus.jsonl"), "--out", str(index)]
    assert main([*argv, "--model", str(out / "model"), "--no-progress"]) == 0
    generator = ImpRAG.from_pretrained(setup["model"])
    with pytest.raises(InputError, match=r"objective\.system=ra-it"):  # the generator must be an ra-it run
        SYSTEMS["ra-dit-llama"](generator, index, 2)
    (tmp_path / "ra-it").mkdir()  # stands for one (what it generates is not what this test checks)
    (tmp_path / "ra-it" / "train_config.json").write_text('{"objective": {"system": "ra-it"}}')
    generator.source = str(tmp_path / "ra-it")
    system = SYSTEMS["ra-dit-llama"](generator, index, 2)
    prompts = ["Q: Which is topic 3?\nA:", "Q: Which is topic 9?\nA:"]
    answers = system.answer(prompts, ["", ""], DecodeConfig(max_new_tokens=2))
    expected = retriever.retrieve(prompts, PassageIndex.load(index, retriever), 2)
    assert [[p.id for p in a.passages] for a in answers] == [[p.id for p in e] for e in expected]
    assert system.describe()["system"] == "ra-dit-llama"
    with pytest.raises(InputError, match="not a retriever trained with"):  # built with the base model
        SYSTEMS["ra-dit-llama"](generator, Path(setup["index"]), 2)
    # `imprag calibrate` on an adapter writes an adapter (same weights) with the new mu_q
    lines = [p.replace("\n", " ") for p in prompts]  # one prompt per line
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    argv = ["calibrate", "--model", str(out / "model"), "--prompts", str(tmp_path / "p.txt")]
    assert main([*argv, "--out", str(tmp_path / "recentered")]) == 0
    assert (tmp_path / "recentered" / "adapter_model.safetensors").read_bytes() == (
        out / "model" / "adapter_model.safetensors"
    ).read_bytes()
    recentered = ImpRAG.from_pretrained(tmp_path / "recentered")
    assert recentered.retrieval_fingerprint() == retriever.retrieval_fingerprint()
    assert recentered.embed_queries(lines).mean(0).abs().max() < 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.mix=[0.5,0.5,0]"], "set data.mix=[1,0,0]"),
        (["data.mix=[1,0,0]", "objective.warmup_epochs=1"], "objective.warmup_epochs equal to optim.epochs"),
        (["data.mix=[1,0,0]", "objective.warmup_epochs=3"], "set engine.train_groups=[bottom]"),
    ],
)
def test_a_retriever_run_refuses_what_it_cannot_train(extra: list[str], message: str) -> None:
    from imprag.config import ConfigError
    from imprag.training.config import load_train_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_train_config(None, ["objective.system=retriever", "optim.epochs=3", *extra])


FROZEN = [
    "model.passages=frozen", "objective.negatives=corpus", "data.teacher_top_m=4",
    "objective.teacher_kl_weight=0.5", "eval.scope=corpus",
]  # fmt: skip


def test_a_frozen_adapter_retrieves_from_the_base_index_without_a_refresh(
    setup: dict[str, str], tmp_path: Path, tokenizer, capsys
) -> None:
    """One index per base model: training with frozen passages scores against the base index's own E_p,
    and the adapter it exports loads against that index as it is (no `index --refresh`); an index of
    another base is refused, naming both fingerprints."""
    out = Path(setup["out"])
    manifest_before = (Path(setup["index"]) / "manifest.json").read_text()
    assert main(["train", "--out", str(out), "--no-progress", *overrides(setup), *FROZEN]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "j_teacher" in r]
    assert steps and all(r["kind"] == "retrieval" for r in steps)
    health = [r["health"] for r in log if "health" in r]
    assert health and all(h["scope"] == "corpus" for h in health)
    base = ImpRAG.from_pretrained(setup["model"], dtype="float32")
    trained = ImpRAG.from_pretrained(out / "model", dtype="float32")
    assert trained.config.passages == "frozen"
    assert trained.retrieval_fingerprint() == base.retrieval_fingerprint()
    texts = [p.content for p in PASSAGES]
    assert_close(trained.embed_passages(texts), base.embed_passages(texts))
    prompt = "Q: Which is topic 3? A:"
    assert (trained.embed_queries([prompt]) - base.embed_queries([prompt])).abs().max() > 1e-4
    capsys.readouterr()
    assert main(["retrieve", setup["index"], prompt, "--model", str(out / "model"), "-k", "3"]) == 0
    assert "Article" in capsys.readouterr().out
    assert (Path(setup["index"]) / "manifest.json").read_text() == manifest_before  # nothing re-encoded
    # an index encoded by another base model is stale for this adapter
    other = tmp_path / "other-base"
    ImpRAG(tiny_model("llama", seed=1), tokenizer, LayerSplit(1, 3)).save_pretrained(other)
    other_index = tmp_path / "other-idx"
    corpus = str(tmp_path / "corpus.jsonl")
    assert main(["index", corpus, "--out", str(other_index), "--model", str(other), "--no-progress"]) == 0
    built = json.loads((other_index / "manifest.json").read_text())["model"]["fingerprint"]
    capsys.readouterr()
    assert main(["retrieve", str(other_index), prompt, "--model", str(out / "model")]) == 2
    err = capsys.readouterr().err
    assert (
        "is stale for this adapter: it was encoded by another base model" in err
    )  # scripts/demo.sh greps "stale"
    assert built in err and trained.retrieval_fingerprint() in err


def test_a_frozen_separate_retriever_serves_ra_dit_llama_from_the_base_index(
    setup: dict[str, str], tmp_path: Path, capsys
) -> None:
    """RA-DIT-Llama at the frozen recipe's budget: a retriever trained with frozen passages reads the base
    model's index as it is (`imprag eval --retriever`), and ra-dit-llama's passages are its top k there;
    the run record names the retriever, and --retriever without ra-dit-llama is refused."""
    from imprag.config import DecodeConfig
    from imprag.evaluation.systems import separate_retriever
    from imprag.retrieval.index import PassageIndex

    out = tmp_path / "retriever"
    retriever_args = [
        "objective.system=retriever", "data.mix=[1,0,0]", "objective.warmup_epochs=2",
        "engine.train_groups=[bottom]",
    ]  # fmt: skip
    assert (
        main(["train", "--out", str(out), "--no-progress", *overrides(setup), *FROZEN, *retriever_args]) == 0
    )
    retriever = ImpRAG.from_pretrained(out / "model")
    assert retriever.config.passages == "frozen"
    generator = tmp_path / "ra-it"  # the base model's weights standing for an ra-it run's
    ImpRAG.from_pretrained(setup["model"]).save_pretrained(generator)
    (generator / "train_config.json").write_text('{"objective": {"system": "ra-it"}}')
    model = ImpRAG.from_pretrained(generator)
    index = Path(setup["index"])  # built with the base model, not refreshed
    system = separate_retriever(model, index, 2, retriever=out / "model")
    prompts = ["Q: Which is topic 3?\nA:", "Q: Which is topic 9?\nA:"]
    answers = system.answer(prompts, ["", ""], DecodeConfig(max_new_tokens=2))
    expected = retriever.retrieve(prompts, PassageIndex.load(index, retriever), 2)
    assert [[p.id for p in a.passages] for a in answers] == [[p.id for p in e] for e in expected]
    base = ImpRAG.from_pretrained(setup["model"]).retrieve(prompts, PassageIndex.load(index), 2)
    assert [[p.id for p in e] for e in expected] != [[p.id for p in e] for e in base]  # its own query
    described = system.describe()
    assert described["retriever_fingerprint"] == retriever.retrieval_fingerprint()
    argv = ["eval", "--data", setup["bench"], "--index", setup["index"], "--model", str(generator),
            "--split", "dev", "--tasks", "describe", "--k", "2", "--no-progress",
            "--out", str(tmp_path / "e")]  # fmt: skip
    named = ["--retriever", str(out / "model")]
    capsys.readouterr()
    assert main([*argv, "--system", "ra-it", *named]) == 2
    assert "add --system ra-dit-llama" in capsys.readouterr().err
    assert main([*argv, "--system", "ra-dit-llama"]) == 2
    assert "pass --retriever" in capsys.readouterr().err  # the index's own model is the base
    assert main([*argv, "--system", "ra-dit-llama", "--retriever", str(generator)]) == 2  # an ra-it run
    assert "is not a retriever trained with" in capsys.readouterr().err
    assert main([*argv, "--system", "ra-dit-llama", *named]) == 0
    evaluated = tmp_path / "e" / "ra-dit-llama"
    run = json.loads((evaluated / "run.json").read_text())
    assert run["system"]["retriever_model"] == str((out / "model").resolve())
    predictions = [json.loads(line) for line in (evaluated / "predictions" / "describe.jsonl").open()]
    found = retriever.retrieve([r["prompt"] for r in predictions], PassageIndex.load(index, retriever), 2)
    assert len(predictions) == 4 and [r["read"] for r in predictions] == [[p.id for p in f] for f in found]


@pytest.mark.parametrize("bad", ["nan", "empty"])
def test_a_broken_teacher_distribution_is_refused_before_step_1(
    setup: dict[str, str], monkeypatch, capsys, bad: str
) -> None:
    import imprag.training.data as data_module

    real = data_module.cached_pseudo_labels

    def broken(*args, **kwargs):
        labels, cached = real(*args, **kwargs)
        scores = [1.0, float("nan"), 0.5, 0.2] if bad == "nan" else []
        labels[2] = replace(labels[2], top=labels[2].top[: len(scores)], scores=scores)
        return labels, cached

    monkeypatch.setattr(data_module, "cached_pseudo_labels", broken)
    out = Path(setup["out"])
    assert main(["train", "--out", str(out), "--no-progress", *overrides(setup), *FROZEN]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the labels' one log line
    assert last.startswith("imprag train: error: the bm25 teacher's top-4 of item describe-2 ")
    assert ("has non-finite scores" if bad == "nan" else "is empty") in last
    assert not (out / "log.jsonl").exists() and not list(out.glob("checkpoint*"))


def test_a_run_folder_has_one_writer(tmp_path, capsys) -> None:
    """While another process writes a run folder (holds its lock), `imprag train` into it stops with one
    line before reading data or writing anything; the lock file alone does not make a folder foreign."""
    from imprag.io import LOCK, writer_lock

    out = tmp_path / "run"
    argv = ["train", "--no-progress", "data.benchmark=B", "data.index=I", "--out", str(out)]
    with writer_lock(out, "another run"):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is being written by another imprag process; imprag train" in err and err.count("\n") == 1
        assert [p.name for p in out.iterdir()] == [LOCK]
    assert main(argv) == 2  # released: now it gets as far as the missing benchmark
    err = capsys.readouterr().err
    assert "being written" not in err and "holds files" not in err
