"""save_pretrained writes a stock-loadable checkpoint plus imprag_config.json; from_pretrained restores it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from imprag import EmbeddingConfig, ImpRAG, LayerSplit, ReaderConfig
from imprag.io import OutputExistsError, atomic_directory


def test_save_and_reload(tmp_path, tokenizer) -> None:
    model = ImpRAG(
        tiny_model("qwen3"), tokenizer, LayerSplit(2, 3), EmbeddingConfig(pooling="mean"), ReaderConfig(k=2)
    )
    out = model.save_pretrained(tmp_path / "ckpt")
    assert (out / "imprag_config.json").is_file()
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert stock.state_dict().keys() == model.model.state_dict().keys()
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    assert_close(stock(ids).logits, model.model(ids).logits)  # the same weights, not just the same names
    again = ImpRAG.from_pretrained(out, dtype="float32")
    assert again.config == model.config
    prompts = ["Q: What is the capital of Veloria?\nA:"]
    assert_close(again.embed_queries(prompts), model.embed_queries(prompts))
    override = ImpRAG.from_pretrained(out, b=1, dtype=torch.float32)
    assert override.split == LayerSplit(1, 3)
    # No partial folder is ever left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_saving_never_deletes_a_folder_that_is_not_an_earlier_output(tmp_path, tokenizer) -> None:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))
    mine = tmp_path / "mine"
    (mine / "runs").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(
        OutputExistsError, match=r"mine holds files that are not an earlier output.*imprag_config\.json"
    ):
        model.save_pretrained(mine)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "runs").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left either
    # An earlier checkpoint is replaced; an empty folder is filled.
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "stale.bin").write_text("old")
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "stale.bin").exists()
    (tmp_path / "empty").mkdir()
    assert (model.save_pretrained(tmp_path / "empty") / "imprag_config.json").is_file()
    # overwrite=False never replaces, so it never refuses.
    with atomic_directory(mine, overwrite=False) as tmp:
        (tmp / "x").write_text("discarded")
    assert not (mine / "x").exists() and (mine / "notes.txt").is_file()


def test_the_model_fingerprint_covers_every_weight_and_survives_a_reload(tmp_path, tokenizer) -> None:
    """An evaluation records it, so a resumed run refuses a retrained generator (layers above b changed),
    which the retrieval fingerprint cannot see."""
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))
    before, retrieval = model.model_fingerprint(), model.retrieval_fingerprint()
    assert (
        ImpRAG.from_pretrained(model.save_pretrained(tmp_path / "m"), dtype="bfloat16").model_fingerprint()
        == before
    )
    with torch.no_grad():
        model.model.model.layers[3].mlp.up_proj.weight.add_(0.01)
    assert model.model_fingerprint() != before and model.retrieval_fingerprint() == retrieval
    again = model.model_fingerprint()
    model.config = dataclasses.replace(model.config, reader=dataclasses.replace(model.config.reader, k=7))
    assert model.model_fingerprint() != again  # a reader setting changes the answers too


def test_the_output_rule_reads_marks_globs_and_ignores_lock_files(tmp_path) -> None:
    """check_output: empty, lock-only (a writer that died before its first output) and marked folders are
    ours; a folder with any other file, at any depth, is not; a file never is."""
    from imprag.io import LOCK, check_output

    check_output(tmp_path / "missing", "run.json")
    (tmp_path / "locked" / "system").mkdir(parents=True)
    (tmp_path / "locked" / "system" / LOCK).write_text("")
    check_output(tmp_path / "locked", "*/run.json")
    (tmp_path / "locked" / "system" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"no earlier evaluation \(it has no \*/run\.json\)"):
        check_output(tmp_path / "locked", "*/run.json", kind="evaluation")
    (tmp_path / "locked" / "system" / "run.json").write_text("{}")
    check_output(tmp_path / "locked", ["metrics.json", "*/run.json"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(tmp_path / "afile", "run.json")


def test_a_writer_that_made_its_folder_and_wrote_nothing_removes_it(tmp_path) -> None:
    """writer_lock removes a folder it created when the writer left only the lock file in it (a command
    that failed before its first output leaves no trace); a folder that existed before, or that holds
    anything else (a file, an empty subfolder), stays."""
    from imprag.io import LOCK, LockedError, writer_lock

    with pytest.raises(RuntimeError, match="failed early"), writer_lock(tmp_path / "new" / "out", "a job"):
        assert (tmp_path / "new" / "out" / LOCK).exists()
        raise RuntimeError("failed early")
    assert not (tmp_path / "new" / "out").exists() and (tmp_path / "new").is_dir()  # only what it made
    (tmp_path / "kept").mkdir()
    with writer_lock(tmp_path / "kept", "a job"):
        pass
    assert (tmp_path / "kept").is_dir()
    with writer_lock(tmp_path / "wrote", "a job"):
        (tmp_path / "wrote" / "result.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "wrote").iterdir()) == [LOCK, "result.json"]
    with writer_lock(tmp_path / "sub", "a job"):
        (tmp_path / "sub" / "part").mkdir()
    assert (tmp_path / "sub" / "part").is_dir()
    # the lock is held until the folder is gone: a second writer meanwhile is refused, not let in
    with writer_lock(tmp_path / "busy", "a job"):
        with pytest.raises(LockedError), writer_lock(tmp_path / "busy", "another job"):
            pass
        assert (tmp_path / "busy").is_dir()  # the refused writer did not remove the holder's folder
    assert not (tmp_path / "busy").exists()
