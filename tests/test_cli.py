"""The CLI: --help everywhere, a real answer from a saved model, one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
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


def test_ask_with_passages_and_retrieval(saved: str, capsys, tmp_path) -> None:
    passages = tmp_path / "passages.jsonl"
    passages.write_text(
        '{"text": "The capital of Veloria is Quantum City."}\n{"text": "Paris is in France."}\n'
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: Where?\\nA:"}\n')
    code = main(
        [
            "ask",
            "Q: What is the capital of Veloria?\nA:",
            "--prompts-file",
            str(prompts),
            "--passages-file",
            str(passages),
            "--retrieve",
            "-k",
            "1",
            "--json",
            "--model",
            saved,
            "--max-new-tokens",
            "3",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Q: What is the capital of Veloria?\nA:", "Q: Where?\nA:"]
    assert all(len(r["passages"]) == 1 and r["passages"][0]["score"] is not None for r in rows)
    code = main(["ask", "Q: hi\nA:", "-p", "one passage", "--model", saved, "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "answer:" in out and "[1] one passage" in out


def test_info(saved: str, capsys) -> None:
    assert main(["info", "--model", saved, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["split"] == {"b": 1, "t": 3} and info["dim"] == 32 and info["model_type"] == "llama"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask"], "no prompt given"),
        (["ask", "q", "--passages-file", "/does/not/exist.txt"], "no such file"),
        (["ask", "q", "--retrieve"], "--retrieve needs passages"),
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


def test_bad_jsonl_line_is_located(tmp_path, saved: str, capsys) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    assert main(["ask", "--prompts-file", str(bad), "--model", saved]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
