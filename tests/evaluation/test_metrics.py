"""The scores as pure functions: hand-derived cases for normalisation, EM, F1, True/False and recall."""

from __future__ import annotations

import pytest

from imprag.evaluation.metrics import (
    answer_in_text,
    answer_recall,
    article_recall,
    average,
    exact_match,
    normalize_answer,
    parse_bool,
    token_f1,
    true_false_accuracy,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Brasília", "brasilia"),
        ("ÉCOLE Normale", "ecole normale"),
        ("  São   Tomé  ", "sao tome"),
        ("The Eiffel Tower.", "eiffel tower"),
        ("An apple a day", "apple day"),
        ("theatre", "theatre"),  # articles are whole words only
        ("“Rock–paper”…", "rock paper"),  # typographic quotes are deleted; dashes separate words
        ("U.S.A.", "usa"),  # as in SQuAD, punctuation is deleted ("D.C." == "DC")
        ("Washington, D.C.", "washington dc"),
        ("Porto-Novo", "portonovo"),
        ("rock'n'roll", "rocknroll"),
        ("", ""),
        ("the a an", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("Brasilia", ["Brasília"], 1.0),
        ("the Eiffel Tower.", ["Eiffel Tower"], 1.0),
        ("paris", ["London", "Paris"], 1.0),  # the best of several gold answers
        ("Paris, France", ["Paris"], 0.0),  # extra words are not an exact match
        ("Lyon", ["London", "Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("", [""], 1.0),
        ("Paris", [], 0.0),
    ],
)
def test_exact_match(prediction: str, golds: list[str], expected: float) -> None:
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        # [quick brown fox] vs [quick fox jumps]: 2 common, precision 2/3, recall 2/3
        ("the quick brown fox", ["quick fox jumps"], 2 / 3),
        # [go go go stop] vs [go stop]: bag overlap is 2 (go once, stop once), P 2/4, R 2/2 -> 2/3
        ("go go go stop", ["go stop"], 2 / 3),
        # [paris] vs [paris france]: P 1, R 1/2 -> 2/3
        ("Paris", ["Paris France"], 2 / 3),
        # the best gold wins: 0 against "London", 1 against "Brasilia" (accents folded)
        ("Brasília", ["London", "Brasilia"], 1.0),
        ("Rome", ["Paris"], 0.0),
        ("", [""], 1.0),
        ("", ["Paris"], 0.0),
        ("Paris", [""], 0.0),
        ("Paris", [], 0.0),
    ],
)
def test_token_f1(prediction: str, golds: list[str], expected: float) -> None:
    assert token_f1(prediction, golds) == pytest.approx(expected)


def test_token_f1_takes_the_max_over_golds() -> None:
    # [a b c d] vs [a b]: P 1/2, R 1 -> 2/3;  vs [a b c]: P 3/4, R 1 -> 6/7
    pred = "alpha beta gamma delta"
    assert token_f1(pred, ["alpha beta"]) == pytest.approx(2 / 3)
    assert token_f1(pred, ["alpha beta gamma"]) == pytest.approx(6 / 7)
    assert token_f1(pred, ["alpha beta", "alpha beta gamma", "zeta"]) == pytest.approx(6 / 7)


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("True.", True),
        ("  TRUE ", True),
        ("yes it is", True),
        ("False", False),
        ("No, never.", False),
        ("maybe", None),
        ("It is true", None),  # only the first word counts
        ("", None),
        ("...", None),
    ],
)
def test_parse_bool(prediction: str, expected: bool | None) -> None:
    assert parse_bool(prediction) is expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("True.", ["True"], 1.0),
        ("yes", ["True"], 1.0),
        ("no", ["False"], 1.0),
        ("True", ["False"], 0.0),
        ("maybe", ["False"], 0.0),
        ("", ["True"], 0.0),
        ("False", ["unknown"], 0.0),  # a gold without a verdict matches nothing
    ],
)
def test_true_false_accuracy(prediction: str, golds: list[str], expected: float) -> None:
    assert true_false_accuracy(prediction, golds) == expected


@pytest.mark.parametrize(
    "answer, text, expected",
    [
        ("Paris", "He lived in Paris, France.", True),
        ("Paris", "Parisian food is rich.", False),  # whole words only
        ("New York", "a New Yorker", False),
        ("São Paulo", "sao paulo is large", True),
        ("the Nile", "The river Nile flows north.", True),  # "the" is dropped from both
        ("Quantum City", "Quantum\nCity", True),  # whitespace is squeezed
        ("", "anything at all", False),  # an empty answer is never found
        ("the", "the cat", False),  # normalises to empty
        ("Paris", "", False),
    ],
)
def test_answer_in_text(answer: str, text: str, expected: bool) -> None:
    assert answer_in_text(answer, text) is expected


def test_answer_recall() -> None:
    assert answer_recall(["nothing here", "a passage about Paris."], ["London", "Paris"]) == 1.0
    assert answer_recall(["Parisian life"], ["Paris"]) == 0.0
    assert answer_recall([], ["Paris"]) == 0.0
    assert answer_recall(["Paris"], []) == 0.0


def test_article_recall() -> None:
    assert article_recall(["b", "a"], ["a"]) == 1.0
    assert article_recall([None, "c"], ["a", "b"]) == 0.0
    assert article_recall(iter(["x", "y"]), iter(["y"])) == 1.0  # any iterables
    assert article_recall([], ["a"]) == 0.0


def test_average_skips_none() -> None:
    rows = [{"em": 1.0}, {"em": 0.0}, {"em": None}, {"other": 1.0}, {"em": 0.5}]
    assert average(rows, "em") == pytest.approx(0.5)
    assert average([{"em": 0.0}, {"em": 0.0}], "em") == 0.0  # zeros count (not dropped as falsy)
    assert average([{"em": None}, {"x": 1.0}], "em") is None
    assert average([], "em") is None


def test_hubness() -> None:
    from imprag.evaluation.metrics import hubness

    assert hubness(["a", "b", "a", "c", None]) == (0.5, 3)  # 2 of the 4 queries that retrieved hit "a"
    assert hubness(["p"] * 5) == (1.0, 1)  # a collapsed retriever
    assert hubness([None, None]) is None and hubness([]) is None
