"""The CLI: --help everywhere, a real answer from a saved model, one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from imprag import ImpRAG, LayerSplit
from imprag.cli import build_parser, main


@pytest.mark.parametrize("argv", [["--help"], ["ask", "--help"], ["info", "--help"]])
def test_help(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    assert "usage: imprag" in capsys.readouterr().out


@pytest.fixture
def saved(tmp_path, tokenizer) -> str:
    path = tmp_path / "model"
    ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3)).save_pretrained(path)
    return str(path)


def test_ask_with_given_passages(saved: str, capsys, tmp_path) -> None:
    passages = tmp_path / "passages.jsonl"
    passages.write_text(
        '{"text": "The capital of Veloria is Quantum City."}\n{"text": "Paris is in France."}\n'
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: Where?\\nA:"}\n')
    argv = ["ask", "Q: What is the capital of Veloria?\nA:", "--prompts-file", str(prompts)]
    argv += ["--passages-file", str(passages), "--json", "--model", saved, "--max-new-tokens", "3"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Q: What is the capital of Veloria?\nA:", "Q: Where?\nA:"]
    assert all(
        [p["text"] for p in r["passages"]]
        == ["The capital of Veloria is Quantum City.", "Paris is in France."]
        for r in rows
    )
    code = main(["ask", "Q: hi\nA:", "-p", "one passage", "--model", saved, "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "answer:" in out and "[1] one passage" in out


def test_info(saved: str, capsys) -> None:
    assert main(["info", "--model", saved, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["split"] == {"b": 1, "t": 3} and info["dim"] == 32 and info["model_type"] == "llama"
    embedding = {"rope": "pre", "pooling": "last", "query_pooling": "last", "query_centered": False}
    assert info["embedding"] == {**embedding, "retrieval_key": "base"}
    assert info["passages"] == "shared" and info["index_dim"] == 32


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask"], "give an index directory and a prompt"),
        (["ask", "-p", "a passage"], "no prompt given"),
        (["ask", "q", "--passages-file", "/does/not/exist.txt"], "no such file"),
        (["info", "--t", "9"], "does not fit a model with 5 layers"),
        (["info", "--model", "/no/such/model"], "cannot load model"),
    ],
)
def test_errors_are_one_line(argv: list[str], message: str, saved: str, capsys) -> None:
    if "--model" not in argv:
        argv = [*argv, "--model", saved]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_folder_without_weights_is_one_line(saved: str, capsys) -> None:
    for weights in Path(saved).glob("*.safetensors"):
        weights.unlink()
    assert main(["info", "--model", saved]) == 2
    err = capsys.readouterr().err
    assert f"cannot load the weights of model {saved!r}" in err and "Traceback" not in err


def test_bad_jsonl_line_is_located(tmp_path, saved: str, capsys) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    assert main(["ask", "--prompts-file", str(bad), "-p", "a passage", "--model", saved]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"id": "veloria", "title": "Veloria", "text": "The capital of Veloria is Quantum City."},
        {"id": "france", "title": "France", "text": "Paris is the capital of France."},
        {"id": "nile", "title": "Nile", "text": "The Nile flows into the Mediterranean Sea."},
        {"id": "mozart", "title": "Mozart", "text": "Mozart was a composer from Salzburg."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_index_retrieve_ask_update(saved: str, corpus: str, tmp_path, capsys) -> None:
    out = str(tmp_path / "idx")
    argv = ["index", corpus, "--out", out, "--model", saved, "--baselines", "bm25", "--no-progress"]
    assert main([*argv, "--mmap"]) == 0  # retrieve and ask read the vectors memory-mapped, update loads them
    assert "indexed 4 passages" in capsys.readouterr().out
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["index"]["mmap"] is True
    # The model recorded in the manifest is used when --model is not given.
    assert main(["retrieve", out, "Q: What is the capital of Veloria?\nA:", "-k", "2", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert len(hit["passages"]) == 2 and hit["passages"][0]["title"]
    assert main(["retrieve", out, "capital of Veloria", "--retriever", "bm25", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passages"][0]["id"] == "veloria"
    assert main(["ask", out, "Q: Where?\nA:", "-k", "2", "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "answer:" in printed and printed.count("score=") == 2
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps({"id": "rome", "title": "Rome", "text": "Rome is the capital of Italy."}) + "\n"
    )
    assert main(["update", out, "--add", str(extra), "--delete", "nile"]) == 0
    assert "deleted 1" in capsys.readouterr().out
    assert main(["retrieve", out, "q", "-k", "4", "--json"]) == 0
    ids = {p["id"] for p in json.loads(capsys.readouterr().out)["passages"]}
    assert ids == {"veloria", "france", "mozart", "rome"}
    # BM25 was built for the old corpus: using it now is refused as stale.
    assert main(["retrieve", out, "capital", "--retriever", "bm25"]) == 2
    assert "stale" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "--out", "IDX"], "give a CORPUS to index, or --refresh"),
        (["index", "/no/such.jsonl", "--out", "IDX"], "no such file or folder"),
        (["retrieve", "/no/such/index", "q"], "no such index directory"),
        (["ask", "/no/such/index", "q"], "is not an index directory"),
        (["update", "/no/such/index", "--delete", "x"], "no such index directory"),
        (["index", "CORPUS", "--out", "IDX", "--baselines", "bm25,foo"], "--baselines: unknown foo; known:"),
        (["index", "CORPUS", "--out", "IDX", "--retrieval-key", "trained"], "needs pooling='mean'"),
    ],
)
def test_index_command_errors(
    argv: list[str], message: str, saved: str, corpus: str, tmp_path, capsys
) -> None:
    argv = [a.replace("IDX", str(tmp_path / "idx")).replace("CORPUS", corpus) for a in argv]
    if argv[0] == "index":
        argv += ["--model", saved]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()  # refused before any work


def test_an_index_for_a_trained_retrieval_key_is_built_and_searched(saved, corpus, tmp_path, capsys) -> None:
    out = str(tmp_path / "idx")
    argv = ["index", corpus, "--out", out, "--model", saved, "--pooling", "mean"]
    assert main([*argv, "--retrieval-key", "trained", "--no-progress"]) == 0
    assert "dim 64" in capsys.readouterr().out  # the tiny model's hidden size, not its E_p's
    # the manifest's settings come back: the base key W_k over the stored layer-b inputs
    assert main(["retrieve", out, "Q: What is the capital of Veloria?\nA:", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["passages"]) == 2


def test_bad_corpus_line_is_located(saved: str, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n{"id": "c", "text": "also fine"}\n')
    out = str(tmp_path / "idx")
    assert main(["index", str(bad), "--out", out, "--model", saved, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not valid JSON" in err and "--skip-bad-lines" in err
    assert main(["retrieve", out, "q"]) == 2  # the failed build's folder says what happened and what to do
    err = capsys.readouterr().err
    assert "stopped before its passages were stored" in err and f"check {bad}" in err and "--overwrite" in err
    assert main(["index", str(bad), "--out", out, "--model", saved, "--no-progress", "--skip-bad-lines"]) == 0
    assert "indexed 2 passages" in capsys.readouterr().out


def test_calibrate_saves_a_centered_copy_whose_indexes_stay_valid(saved: str, tmp_path, capsys) -> None:
    from imprag import ImpRAG

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: What is the capital of Veloria?\nA:\n\nQ: Who wrote Hamlet?\nIs the sky green?\n")
    out = tmp_path / "centered"
    # fp32 (not the machine's auto dtype) for a 1e-5 comparison
    argv = ["calibrate", "--model", saved, "--prompts", str(prompts), "--out", str(out), "--dtype", "float32"]
    assert main(argv) == 0
    assert "mu_q from 4 prompts" in capsys.readouterr().out
    base, centered = (
        ImpRAG.from_pretrained(saved, dtype="float32"),
        ImpRAG.from_pretrained(out, dtype="float32"),
    )
    lines = [p for p in prompts.read_text().splitlines() if p.strip()]
    raw = base.embed_queries(lines)
    assert torch.allclose(torch.tensor(centered.config.embedding.query_center), raw.mean(0), atol=1e-5)
    assert torch.allclose(centered.embed_queries(lines), raw - raw.mean(0), atol=1e-5)
    assert centered.retrieval_fingerprint() == base.retrieval_fingerprint()  # same E_p: indexes stay valid
    assert main(["info", "--model", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedding"]["query_centered"] is True
    # A mistyped --out that holds other files is refused, not wiped.
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    argv = ["calibrate", "--model", saved, "--prompts", str(prompts), "--out", str(tmp_path / "home")]
    assert main(argv) == 2
    assert "are not an earlier output" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["thesis.tex"]
    (tmp_path / "notes.txt").write_text("mine")  # a file is no output folder either
    argv = ["calibrate", "--model", saved, "--prompts", str(prompts), "--out", str(tmp_path / "notes.txt")]
    assert main(argv) == 2 and "is a file" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # one writer of a folder at a time: a second calibration stops before loading the model (issue 16)
    from imprag.io import LOCK, writer_lock

    again = ["calibrate", "--model", saved, "--prompts", str(prompts), "--out", str(out), "--n", "2"]
    held = {f.name: f.read_bytes() for f in out.iterdir()}
    with writer_lock(out, "another calibration"):
        assert main(again) == 2
        err = capsys.readouterr().err
        assert "being written by another imprag process; imprag calibrate waits" in err
        assert err.count("\n") == 1
        assert {f.name: f.read_bytes() for f in out.iterdir() if f.name != LOCK} == held
    assert main(again) == 0 and "mu_q from 2 prompts" in capsys.readouterr().out  # released: it runs
    assert not (out / LOCK).exists()
    # a fully fine-tuned run's training record survives calibration, into a new folder and in place
    record = '{"objective": {"system": "imprag"}}'
    (Path(saved) / "train_config.json").write_text(record)
    for target in (tmp_path / "centered-run", Path(saved)):
        assert main(["calibrate", "--model", saved, "--prompts", str(prompts), "--out", str(target)]) == 0
        assert (target / "train_config.json").read_text() == record


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "--out", "x"], "give --data BENCH"),
        (["calibrate", "--out", "x", "--prompts", "/no/such/file"], "cannot read --prompts"),
        (["calibrate", "--out", "x", "--prompts", "p.txt", "--n", "0"], "--n must be >= 1"),
    ],
)
def test_calibrate_errors_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, code",
    [(["info", "--model", "{saved}", "--json"], 0), (["index", "--refresh", "c.jsonl", "--out", "x"], 2)],
)
def test_the_cli_leaves_no_process_group_behind(
    saved: str, tmp_path, monkeypatch, argv: list[str], code: int
) -> None:
    """A process that exits with its gloo group alive aborts in interpreter finalisation now and then (CI saw
    SIGABRT after a finished two-process `imprag index`): commands end by destroying the group they joined,
    after a normal end and after an error every rank shares; a group the caller made is left alone."""
    import torch.distributed as dist

    import imprag.distributed

    argv = [a.replace("{saved}", saved) for a in argv]
    for n, joined_by_imprag in enumerate((True, False)):
        rendezvous = f"file://{tmp_path / f'rendezvous{n}'}"
        dist.init_process_group("gloo", init_method=rendezvous, rank=0, world_size=1)
        monkeypatch.setattr(imprag.distributed, "_joined", joined_by_imprag)  # as init_from_env records it
        try:
            assert main(argv) == code
            assert dist.is_initialized() is not joined_by_imprag
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
