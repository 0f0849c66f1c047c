"""Scores as pure functions of strings: exact match, token F1, True/False accuracy, retrieval recall.

Answers are compared after `normalize_answer`: the SQuAD normalisation (lower case, no punctuation, no
articles a/an/the, single spaces) plus accent folding ("Brasília" == "Brasilia"), as in KILT/ImpRAG-style
EM. A prediction scores against the best of several gold answers. Retrieval recall is the paper's: the share
of examples whose read passages contain a gold answer string (normalised, on word boundaries), and
gold-article recall: the share whose read passages include one of the item's evidence passages.

`normalize_answer` and `answer_in_text` live in `imprag.text` (the benchmark builder uses them too) and are
re-exported here.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

from imprag.text import answer_in_text, normalize_answer

__all__ = [
    "answer_in_text",
    "answer_recall",
    "article_recall",
    "average",
    "exact_match",
    "hubness",
    "normalize_answer",
    "parse_bool",
    "token_f1",
    "true_false_accuracy",
]


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best bag-of-tokens F1 between the prediction and any gold answer (SQuAD definition)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def parse_bool(prediction: str) -> bool | None:
    """The True/False verdict of a generated answer: its first word, if that is true/false/yes/no."""
    words = normalize_answer(prediction).split()
    if not words:
        return None
    return {"true": True, "yes": True, "false": False, "no": False}.get(words[0])


def true_false_accuracy(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the prediction's verdict equals the gold verdict (gold answers are "True" or "False")."""
    verdict = parse_bool(prediction)
    return float(verdict is not None and any(verdict == parse_bool(g) for g in golds))


def answer_recall(passages: Sequence[str], golds: Sequence[str]) -> float:
    """1.0 when some read passage contains some gold answer string (the paper's retrieval recall)."""
    return float(any(answer_in_text(g, p) for p in passages for g in golds))


def article_recall(passage_ids: Iterable[str | None], evidence: Iterable[str]) -> float:
    """1.0 when one of the read passages is one of the item's evidence passages."""
    return float(bool(set(passage_ids) & set(evidence)))


def hubness(top1: Sequence[str | None]) -> tuple[float, int] | None:
    """Retrieval health over a set of queries: the share of queries whose top-1 passage is the single most
    frequent top-1, and the number of distinct top-1 passages (None when nothing was retrieved). A
    collapsed retriever sends every query to one hub: share 1.0, one distinct passage."""
    hits = [t for t in top1 if t is not None]
    if not hits:
        return None
    counts = collections.Counter(hits)
    return counts.most_common(1)[0][1] / len(hits), len(counts)


def average(rows: Sequence[Mapping[str, float | None]], key: str) -> float | None:
    """Mean of `key` over rows where it is not None (None when no row has it)."""
    values = [row[key] for row in rows if row.get(key) is not None]
    return sum(values) / len(values) if values else None  # type: ignore[arg-type]
