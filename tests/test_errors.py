"""Every error imprag raises on bad input derives from one base; the CLI turns exactly those into one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import imprag
from imprag.cli import main
from imprag.errors import ImpragError


def _error_classes() -> list[type[BaseException]]:
    """Every exception class defined in an imprag module (imported, so each is seen where it is defined)."""
    found = []
    for info in pkgutil.walk_packages(imprag.__path__, prefix="imprag."):
        if info.name in ("imprag.__main__", "imprag.cli.__main__"):
            continue  # running them would start the CLI
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_error_class_derives_from_the_base() -> None:
    classes = _error_classes()
    assert len(classes) >= 15  # the walk found the package's errors (it would pass vacuously on none)
    assert [c.__name__ for c in classes if not issubclass(c, ImpragError)] == []


def test_errors_keep_the_builtin_they_refine() -> None:
    from imprag.io import OutputExistsError
    from imprag.retrieval.index import StaleIndexError
    from imprag.training.loop import TrainingError

    assert issubclass(imprag.ConfigError, ValueError)
    assert issubclass(StaleIndexError, imprag.InvalidIndexError)
    assert issubclass(TrainingError, RuntimeError)
    assert issubclass(OutputExistsError, FileExistsError)


def _parser_raising(err: BaseException):
    """`build_parser` whose every subcommand raises `err` when run."""
    from imprag.cli import build_parser as real

    def run(args) -> int:
        raise err

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=run)
        return parser

    return build


def test_the_cli_prints_an_imprag_error_as_one_line_and_lets_a_bug_through(monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        "imprag.cli.build_parser", _parser_raising(imprag.ConfigError("model.b must be below t"))
    )
    assert main(["info", "--machine"]) == 2
    assert capsys.readouterr().err.strip() == "imprag info: error: model.b must be below t"
    monkeypatch.setattr("imprag.cli.build_parser", _parser_raising(KeyError("a bug")))
    with pytest.raises(KeyError):  # not an ImpragError: the traceback stays
        main(["info", "--machine"])
