"""Answer strings compared as the benchmark compares them: normalisation and whole-word containment.

Two users: evaluation scores predictions with them (evaluation/metrics.py), and `imprag data build` keeps
only items whose answer (or support) occurs in an evidence passage (data/builders.py). So changing them
changes the benchmark itself, its splits and its hold-out set, not only the scores. (Known and left: an
ASCII hyphen is deleted while an en dash separates words, so "Mexican-American" does not match
"Mexican–American"; no stored prediction behind docs/results.md is affected.)
"""

from __future__ import annotations

import re
import string
import unicodedata

__all__ = ["answer_in_text", "normalize_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation + "‘’“”…"))  # deleted, as in SQuAD ("D.C." = "DC")
_DASHES = str.maketrans(dict.fromkeys("–—", " "))  # dashes separate words ("Rutherford–Bohr")


def normalize_answer(text: str) -> str:
    """Lower case, fold accents, delete punctuation (dashes separate words), drop the articles a/an/the,
    squeeze spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.translate(_DASHES).translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_in_text(answer: str, text: str) -> bool:
    """Whether the normalised answer occurs in the normalised text as whole words."""
    needle = normalize_answer(answer)
    return bool(needle) and f" {needle} " in f" {normalize_answer(text)} "
