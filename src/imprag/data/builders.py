"""Candidate items per task, from the packaged data and the corpus (`imprag.data.build` splits, checks and
writes them).

Hardness, and where it comes from (the paper's unseen formats are hard in the same ways):
- entity linking marks a *partial* mention (a surname, an acronym, a distinctive word of a place name)
  inside a sentence of *another* article, so the raw prompt is mostly about the wrong article and the
  answer is not a copy (measured: MiniLM with the raw prompt finds the gold article for 59%, with the
  mention alone for 93.5%);
- slot filling and fact checking name their entity (as T-REx, zsRE and FEVER do: easy to retrieve for,
  97% for MiniLM), with the task instruction making up most of the prompt;
- fact-check False claims swap in a value of the same kind (another country's capital, a description with
  the same head noun), so the topic alone cannot decide them.
"""

from __future__ import annotations

import collections
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from imprag.data.sources import Country, read_countries, read_fanout_leaves, read_trivia
from imprag.retrieval.corpus import Passage
from imprag.text import answer_in_text, normalize_answer

__all__ = ["EVAL_BUILDERS", "TRAIN_BUILDERS", "Candidate", "check", "sentences"]


@dataclass
class Candidate:
    """An item before splitting: `group` decides the split; `support` must occur in an evidence passage."""

    task: str
    key: str
    fields: dict[str, str]
    answers: list[str]
    evidence: list[str]
    oracle_query: str
    group: str
    support: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ABBREV = re.compile(r"\b(?:[A-Z]|St|Mr|Mrs|Dr|Jr|Sr|c|ca|e\.g|i\.e|U\.S|No|vs)\.$")


def sentences(text: str) -> list[str]:
    """Split text into sentences; a split after a common abbreviation or initial is undone."""
    out: list[str] = []
    for piece in _SENTENCE.split(text.strip()):
        if out and _ABBREV.search(out[-1]):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s for s in out if s]


def _base(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)$", "", title).strip()


# -- seen format: open QA ------------------------------------------------------------------------------


def _describe(corpus: dict[str, Passage]) -> list[Candidate]:
    """Descriptions that pick out one article: unique, not containing the title, and of at least four words
    (shorter ones such as "Physics phenomenon" or "Group of stars" fit many articles)."""
    by_desc = collections.Counter(normalize_answer(p.meta.get("description") or "") for p in corpus.values())
    out = []
    for p in corpus.values():
        desc = (p.meta.get("description") or "").strip()
        if (
            len(desc.split()) < 4
            or by_desc[normalize_answer(desc)] > 1
            or normalize_answer(p.title) in normalize_answer(desc)
        ):
            continue
        question = f"Which article is described by: {desc}?"
        out.append(Candidate("describe", p.id, {"question": question}, [p.title], [p.id], desc, p.id))
    return out


def _fanoutqa(corpus: dict[str, Passage]) -> list[Candidate]:
    out, seen = [], set()
    for leaf in read_fanout_leaves():
        key = normalize_answer(leaf.question)  # "capital of China?" asked twice in different words/case
        if leaf.evidence_title not in corpus or key in seen:
            continue
        seen.add(key)
        out.append(
            Candidate(
                "fanoutqa", leaf.question, {"question": leaf.question}, [leaf.answer],
                [leaf.evidence_title], leaf.question, leaf.top_id,
            )
        )  # fmt: skip
    return out


_STOP = frozenset(
    "what which who whom whose when where why how that this these those with from into about for and the "  # noqa: SIM905
    "was were are is has have had been does did its their there than then they them".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_answer(text).split() if len(w) > 3 and w not in _STOP}


def _trivia(corpus: dict[str, Passage]) -> list[Candidate]:
    """Evidence: the article titled like the answer, else the passages holding the answer that share the
    most content words (at least two) with the question (at most 3). One-letter/one-digit answers are
    dropped: they occur everywhere and prove nothing."""
    by_title = {normalize_answer(p.title): p.id for p in corpus.values()}
    norm = {p.id: f" {normalize_answer(p.content)} " for p in corpus.values()}
    words_of = {pid: set(text.split()) for pid, text in norm.items()}
    out = []
    for question, answer in read_trivia():
        ans = normalize_answer(answer)
        if len(ans) < 3:
            continue
        words = _content_words(question)
        if ans in by_title and words & words_of[by_title[ans]]:  # the article named like the answer, if it
            evidence = [by_title[ans]]  # is about the question (not the disease "Cancer" for the zodiac)
        else:
            scored = [(len(words & words_of[pid]), pid) for pid, text in norm.items() if f" {ans} " in text]
            best = max((s for s, _ in scored), default=0)
            evidence = sorted(pid for s, pid in scored if s == best and best >= 2)[:3]
        if evidence:
            out.append(
                Candidate("trivia", question, {"question": question}, [answer], evidence, question, question)
            )
    return out


# -- unseen formats ------------------------------------------------------------------------------------


def _continent(c: Country) -> str:
    if c.region != "Americas":
        return c.region
    return "South America" if c.subregion == "South America" else "North America"


def _currency_answers(name: str) -> list[str]:
    words = name.split()
    return [name] + ([words[-1]] if len(words) > 1 and len(words[-1]) > 3 else [])


def _country_facts(corpus: dict[str, Passage]) -> list[tuple[Country, str, list[str]]]:
    """(country, relation, gold values) for every country that has a corpus article."""
    facts = []
    for c in read_countries():
        if c.name not in corpus:
            continue
        relations = [
            ("capital", list(c.capitals)),
            ("continent", [_continent(c)]),
            ("currency", _currency_answers(c.currencies[0]) if c.currencies else []),
            ("official language", list(c.languages)),
        ]
        for rel, values in relations:
            # a value named like the country itself (the language "Tuvalu") is found in any article about
            # it, so it proves nothing: drop it
            values = [v for v in values if v and normalize_answer(v) != normalize_answer(c.name)]
            if values:
                facts.append((c, rel, values))
    return facts


def _slot_filling(corpus: dict[str, Passage]) -> list[Candidate]:
    """Not "continent": "Europe" or "Asia" occurs in almost every passage read, so its answer recall says
    nothing about retrieval."""
    return [
        Candidate(
            "slot-filling", f"{c.name}/{rel}", {"entity": c.name, "relation": rel}, values, [c.name],
            f"{c.name} {rel}", c.name,
        )
        for c, rel, values in _country_facts(corpus)
        if rel != "continent"
    ]  # fmt: skip


_FACT_CLAIMS = {
    "capital": "The capital of {entity} is {value}.",
    "continent": "{entity} is a country in {value}.",
    "currency": "The currency of {entity} is the {value}.",
    "official language": "{value} is an official language of {entity}.",
}


def _fact_check(corpus: dict[str, Passage], rng: random.Random) -> list[Candidate]:
    """One claim per fact; True or False is fixed later per split (balanced). `meta` holds both claims.

    False claims swap in a value of the same kind: another country's capital (currency, language,
    continent), or another article's description with the same head noun ("Pancreas is an organ of the
    ..." vs another organ), so the topic alone cannot give the claim away."""
    out = []
    facts = _country_facts(corpus)
    pool: dict[str, list[str]] = collections.defaultdict(list)
    for _, rel, values in facts:
        pool[rel].append(values[0])
    for c, rel, values in facts:
        wrong = sorted({v for v in pool[rel] if normalize_answer(v) not in map(normalize_answer, values)})
        if not wrong:
            continue
        claim = _FACT_CLAIMS[rel]
        true = claim.format(entity=c.name, value=values[0])
        false = claim.format(entity=c.name, value=rng.choice(wrong))
        stated = _currency_answers(values[0]) if rel == "currency" else [values[0]]  # what the claim says
        candidate = _claim(f"{c.name}/{rel}", true, false, c.name, stated, c.name)
        if check(candidate, corpus):
            out.append(candidate)
    # Wikipedia descriptions the summary itself states (so it can be checked), as many as geography claims
    lower = _lowercase_words(corpus.values())
    by_head: dict[str, list[Passage]] = collections.defaultdict(list)
    stated_desc = []
    for p in sorted(corpus.values(), key=lambda p: p.id):
        desc = (p.meta.get("description") or "").strip()
        if desc:
            by_head[_head(desc)].append(p)
            if answer_in_text(desc, p.text):
                stated_desc.append(p)
    rng.shuffle(stated_desc)
    claims = []
    for p in stated_desc:
        desc = p.meta["description"].strip()
        others = [
            o for o in by_head[_head(desc)]
            if o.id != p.id and normalize_answer(o.meta["description"]) != normalize_answer(desc)
        ]  # fmt: skip
        if not others:
            continue
        true, false = (
            f"{p.title} is {_noun_phrase(d, lower)}." for d in (desc, rng.choice(others).meta["description"])
        )
        claims.append(_claim(p.id, true, false, p.id, [desc], p.id))
        if len(claims) == len(out):
            break
    return out + claims


def _head(description: str) -> str:
    """The head noun of a description: the last word before "of"/"in"/"from"/a comma ("organ")."""
    words = re.split(r"\s+(?:of|in|from|for|by|on|at|with|that|who|which)\s+|,", description.lower())[
        0
    ].split()
    return words[-1] if words else ""


def _claim(key: str, true: str, false: str, evidence: str, support: list[str], group: str) -> Candidate:
    return Candidate(
        "fact-check", key, {"statement": true}, ["True"], [evidence], f"{evidence}", group, support,
        meta={"true_claim": true, "false_claim": false},
    )  # fmt: skip


def _lowercase_words(passages: Iterable[Passage]) -> set[str]:
    """Words seen lower-case somewhere: their capitalised form at a description's start is not a name."""
    words: set[str] = set()
    for p in passages:
        words.update(w for w in re.findall(r"[A-Za-z]+", p.text) if w.islower())
    return words


def _noun_phrase(desc: str, lower: set[str]) -> str:
    first, _, rest = desc.partition(" ")
    if first.lower() in lower and not first[1:2].isupper():
        desc = f"{first.lower()} {rest}".strip()
        first = first.lower()
    if first.lower() in {"a", "an", "the"} or (first[:1].isdigit() and not rest):
        return desc
    return f"{'an' if first[:1].lower() in 'aeiou' else 'a'} {desc}"


def _entity_linking(corpus: dict[str, Passage], rng: random.Random) -> list[Candidate]:
    """Partial mentions of article B -- a distinctive word of its title (a surname, "Everest") or its
    acronym -- found in a sentence of another article A.

    Noise filters (each from a failure seen in samples): word forms come only from titles made of
    capitalised words (a name: not "Burmese language", "Messier 87", "Christ the Redeemer"), and are their
    last word, or the first before a generic head like "Sea" (not first names: "Gottfried", "August"); a
    word form must belong to exactly one title and never occur lower-case in the corpus ("Doors", "Parks");
    an adjective-like form before a noun is skipped ("Norwegian archipelago"); an acronym must spell the
    initials of B's title and be introduced right after it; the mention must stand alone (no capitalised
    word right before or after, no hyphen: "Lake Volta", "Richard III"); A's own title must not contain it
    (the subject referring to itself); and A's sentence must be about B's world: A's title occurs in B's
    summary or the sentence shares at least two content words with it."""
    bases = collections.Counter(_base(t).lower() for t in corpus)
    lower = _lowercase_words(corpus.values())
    owners: dict[str, set[str]] = collections.defaultdict(set)  # capitalised title word -> titles using it
    forms: dict[str, list[str]] = collections.defaultdict(list)
    for p in corpus.values():
        base = _base(p.title)
        words = base.split()
        for w in words:
            owners[w].add(p.id)
        if len(words) > 1 and words[0] != "The" and all(re.fullmatch(r"[A-Z][a-z'\-]{2,}", w) for w in words):
            # a proper name: its last word (a surname, "Huron" of Lake Huron), or its first when the last
            # is a generic head ("Caspian" of Caspian Sea)
            forms[words[0] if words[-1] in _GENERIC_HEADS else words[-1]].append(p.id)
        acronym = re.search(rf"{re.escape(base)} \(([A-Z]{{2,6}})\)", p.text)
        initials = "".join(w[0] for w in words if w[:1].isupper())
        if acronym and acronym.group(1) == initials:
            forms[acronym.group(1)].append(p.id)
    usable = {
        f: ids[0]
        for f, ids in forms.items()
        if len(ids) == 1
        and not bases[f.lower()]
        and (f.isupper() or (len(owners[f]) == 1 and f.lower() not in lower))
    }
    pattern = re.compile(
        r"(?<![\w\-–'])(" + "|".join(sorted(map(re.escape, usable), key=len, reverse=True)) + r")(?![\w\-–])"
    )
    found: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    for a in sorted(corpus.values(), key=lambda p: p.id):
        for sent in sentences(a.text):
            if len(sent.split()) < 8:
                continue
            for m in pattern.finditer(sent):
                target, mention = usable[m.group(1)], m.group(1)
                b = corpus[target]
                if (
                    target == a.id
                    or mention in a.title
                    or _base(target).lower() in sent.lower()  # the full name would make it a copy task
                    or _inside_name(sent, m.start(), m.end())
                    or _attributive(mention, sent[m.end() :])
                    or not (
                        _base(a.title) in b.text
                        or len((_content_words(sent) & _content_words(b.text)) - {mention.lower()}) >= 2
                    )
                ):
                    continue
                marked = f"{sent[: m.start()]}[START] {mention} [END]{sent[m.end() :]}"
                found[target].append((a.id, mention, marked))
    out = []
    for target in sorted(found):
        by_source = {source: (source, mention, marked) for source, mention, marked in found[target]}
        # up to three mentions of one target, from different articles (one split: grouped by target)
        for source, mention, marked in rng.sample(sorted(by_source.values()), min(3, len(by_source))):
            out.append(
                Candidate(
                    "entity-linking", f"{target}<-{source}", {"context": marked}, [corpus[target].title],
                    [target], mention, target, support=[mention], meta={"mention": mention, "source": source},
                )
            )  # fmt: skip
    return out


_GENERIC_HEADS = frozenset(
    # not "River": rivers share their names with states and regions ("Missouri", "Colorado")
    "Sea Ocean Empire Caliphate Dynasty Kingdom Mountains Desert Islands Gulf Strait".split()  # noqa: SIM905
)


def _attributive(mention: str, rest: str) -> bool:
    """An adjective-like form used before a noun ("Norwegian archipelago", "Asian continent") names the
    country or region, not the article it was taken from."""
    nxt = rest.split()[0] if rest.split() else ""
    return bool(re.search(r"(ian|ean|ese|ish|ic|an)$", mention)) and nxt.isalpha() and nxt.islower()


def _inside_name(sentence: str, start: int, end: int) -> bool:
    """Whether a capitalised word touches the span (part of a longer name: "Lake Volta", "Richard III")."""
    before = sentence[:start].split()
    after = sentence[end:].split()
    glued_before = bool(before) and sentence[:start].rstrip()[-1:] not in ",;:()\"'"
    return (glued_before and before[-1][:1].isupper()) or (bool(after) and after[0][:1].isupper())


# -- retrieval-free training tasks ---------------------------------------------------------------------


def _denoise(p: Passage, rng: random.Random) -> Candidate | None:
    words = p.text.split()
    if len(words) < 30:
        return None
    spans, taken = [], set()
    for _ in range(2):
        size = rng.randint(2, 4)
        start = rng.randrange(0, len(words) - size)
        span = range(start, start + size)
        if taken & set(range(start - 1, start + size + 1)):
            continue
        taken.update(span)
        spans.append((start, size))
    spans.sort()
    out, answers, pos = [], [], 0
    for start, size in spans:
        out += words[pos:start] + ["[START]"] + ["_"] * size + ["[END]"]
        answers.append(" ".join(words[start : start + size]))
        pos = start + size
    out += words[pos:]
    answer = "; ".join(answers)
    return Candidate("denoise", p.id, {"context": " ".join(out)}, [answer], [p.id], "", p.id, [answers[0]])


def _sentence(p: Passage, rng: random.Random) -> Candidate | None:
    sents = sentences(p.text)
    if len(sents) < 2:
        return None
    i = rng.randrange(len(sents) - 1)
    if rng.random() < 0.5:
        fields, answer = {"context": sents[i], "relation": "next sentence"}, sents[i + 1]
    else:
        fields, answer = {"context": sents[i + 1], "relation": "previous sentence"}, sents[i]
    return Candidate("sentence", p.id, fields, [answer], [p.id], "", p.id)


def _reading(p: Passage, rng: random.Random) -> Candidate | None:
    desc = (p.meta.get("description") or "").strip()
    if not desc or not answer_in_text(desc, p.text):
        return None
    question = f"Which phrase in the text describes {p.title}?"
    return Candidate("reading", p.id, {"context": p.content, "question": question}, [desc], [p.id], "", p.id)


def _description_claims(
    passages: list[Passage], rng: random.Random
) -> list[tuple[Passage, bool, str] | None]:
    """Per article: (article, true?, claimed noun phrase) -- its own Wikipedia description (True) or, half
    the time, another article's with the same head noun (False, so the kind of thing cannot give it away);
    None where no other description shares the head noun."""
    lower = _lowercase_words(passages)
    by_head: dict[str, list[Passage]] = collections.defaultdict(list)
    for p in passages:
        if desc := (p.meta.get("description") or "").strip():
            by_head[_head(desc)].append(p)
    out: list[tuple[Passage, bool, str] | None] = []
    for p in passages:
        desc = (p.meta.get("description") or "").strip()
        others = [
            o for o in by_head.get(_head(desc), [])
            if o.id != p.id and normalize_answer(o.meta["description"]) != normalize_answer(desc)
        ] if desc else []  # fmt: skip
        if not others:
            out.append(None)
            continue
        true = rng.random() < 0.5
        claimed = desc if true else rng.choice(others).meta["description"].strip()
        out.append((p, true, _noun_phrase(claimed, lower)))
    return out


def _verify(passages: list[Passage], rng: random.Random) -> list[Candidate | None]:
    """True/False judgements of a claim against the text in the prompt: "<title> is <description>", the
    claim of `_description_claims`. Unseen fact checking answers True/False too; without this no training
    task ever does."""
    return [
        None if c is None else Candidate(
            "verify", c[0].id, {"context": c[0].content, "claim": f"{c[0].title} is {c[2]}."},
            [str(c[1])], [c[0].id], "", c[0].id, [c[0].title],
        )
        for c in _description_claims(passages, rng)
    ]  # fmt: skip


def _yesno(passages: list[Passage], rng: random.Random) -> list[Candidate | None]:
    """Yes/no open QA about a named article, in the seen format: "Is <title> <description>?" with the
    claim of `_description_claims` (Yes, or No for another article's description). A retrieval training
    task (the gold article is the one named), the only retrieval task whose answer is a verdict: fact
    checking asks for one about a named entity and is scored by its polarity (yes = True), but its template,
    "Is this statement true? <statement>", is never trained on. Measured, and not in the CPU recipe: it
    gives verdicts at chance and pulls "What is ...?" answers toward descriptions (docs/results.md)."""
    out: list[Candidate | None] = []
    for c in _description_claims(passages, rng):
        base = _base(c[0].title) if c else ""
        if c is None or not base:
            out.append(None)
            continue
        p, true, phrase = c
        fields = {"question": f"Is {base} {phrase}?"}
        out.append(Candidate("yesno", p.id, fields, ["Yes" if true else "No"], [p.id], base, p.id, [base]))
    return out


def _about(p: Passage, rng: random.Random) -> Candidate | None:
    """Open QA about a named article, in the seen format: "What is <title>?", answered with its Wikipedia
    description. Describe names the description and asks for the title; this names the entity and asks
    what it is, which is how slot filling, fact checking and entity linking point at their article (by
    name). A retrieval training task: the gold article is the one named."""
    desc = (p.meta.get("description") or "").strip()
    base = _base(p.title)
    if len(desc.split()) < 2 or not base or normalize_answer(base) in normalize_answer(desc):
        return None
    question = f"What is {base}?"
    return Candidate("about", p.id, {"question": question}, [desc], [p.id], base, p.id, [base])


_MONTH = "January|February|March|April|May|June|July|August|September|October|November|December"
_NAME = (
    r"(?P<a>(?:[A-Z]\.\s?){0,3}[A-Z][\w'’\-]+"
    r"(?:\s(?:(?:de|da|di|van|von|der|del|la|le|al|bin|ibn)\s)?(?:[A-Z]\.\s?)*[A-Z][\w'’\-]+){0,4})"
)
"""A proper name: up to five capitalised words (initials and name particles allowed)."""
_YEAR = (
    rf"(?:(?:\d{{1,2}}\s)?(?:{_MONTH})\s(?:\d{{1,2}},\s)?)?"
    r"(?P<a>\d{3,4})(?:\s(?:BC|BCE|AD|CE))?\b(?![\d,.]\d)"
)
"""A year (a full date is allowed before it; the answer is the year)."""
_COUNT = r"(?P<a>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?\s(?:million|billion))"
_PLACE_NOUN = "city|town|river|country|state|region|province|island|lake|mountain|port|capital"
_ADJECTIVE_OF = "state|province|region|city|part|coast|capital|district"
"""Words after a place's adjective ("in the Indian state of"): the name before them is not the answer."""
_SPAN_QUESTIONS = [
    (q, re.compile(pattern))
    for q, pattern in [
        ("Who directed {e}?", rf"\bdirected by {_NAME}"),
        ("Who wrote {e}?", rf"\bwritten by {_NAME}"),
        ("Who composed {e}?", rf"\bcomposed by {_NAME}"),
        ("Who founded {e}?", rf"\bfounded by {_NAME}"),
        ("Who designed {e}?", rf"\bdesigned by {_NAME}"),
        ("Who painted {e}?", rf"\bpainted by {_NAME}"),
        ("Who discovered {e}?", rf"\bdiscovered by {_NAME}"),
        ("Who invented {e}?", rf"\binvented by {_NAME}"),
        (
            "What is the capital of {e}?",
            rf"\b[Ii]ts capital(?: and (?:largest|most populous) city)? is {_NAME}",
        ),
        ("When was {e} founded?", rf"\b(?:was|were) founded (?:in|on) {_YEAR}"),
        ("When was {e} established?", rf"\b(?:was|were) established (?:in|on) {_YEAR}"),
        ("When was {e} built?", rf"\b(?:was|were) (?:built|constructed) (?:in|between|from|around) {_YEAR}"),
        ("When was {e} completed?", rf"\b(?:was|were) completed (?:in|on) {_YEAR}"),
        ("When was {e} published?", rf"\b(?:was|were) (?:first )?published (?:in|on) {_YEAR}"),
        ("When was {e} released?", rf"\b(?:was|were) released (?:in|on) {_YEAR}"),
        ("When was {e} discovered?", rf"\b(?:was|were) discovered (?:in|on) {_YEAR}"),
        ("When did {e} begin?", rf"\bbegan (?:in|on) {_YEAR}"),
        ("When did {e} end?", rf"\bended (?:in|on) {_YEAR}"),
        (
            "What is the population of {e}?",
            rf"\bpopulation of (?:about |approximately |around |over |more than |nearly |some )?{_COUNT}",
        ),
        (
            "Where is {e} located?",
            rf"^[^,]*? (?:is|are) (?:a|an|the) (?:[\w\-]+ ){{0,4}}(?:{_PLACE_NOUN})[\w ]{{0,20}}? "
            rf"(?:located )?in (?:the )?{_NAME}\b(?!\s(?:{_ADJECTIVE_OF}))",
        ),
    ]
]
"""Questions that name an article, and where in one of its sentences the answer span stands."""
_SPAN_YES_NO = {
    "Who directed {e}?": "Was {e} directed by {a}?",
    "Who wrote {e}?": "Was {e} written by {a}?",
    "Who composed {e}?": "Was {e} composed by {a}?",
    "Who founded {e}?": "Was {e} founded by {a}?",
    "Who designed {e}?": "Was {e} designed by {a}?",
    "Who painted {e}?": "Was {e} painted by {a}?",
    "Who discovered {e}?": "Was {e} discovered by {a}?",
    "Who invented {e}?": "Was {e} invented by {a}?",
    "What is the capital of {e}?": "Is the capital of {e} {a}?",
    "When was {e} founded?": "Was {e} founded in {a}?",
    "When was {e} established?": "Was {e} established in {a}?",
    "When was {e} built?": "Was {e} built in {a}?",
    "When was {e} completed?": "Was {e} completed in {a}?",
    "When was {e} published?": "Was {e} published in {a}?",
    "When was {e} released?": "Was {e} released in {a}?",
    "When was {e} discovered?": "Was {e} discovered in {a}?",
    "When did {e} begin?": "Did {e} begin in {a}?",
    "When did {e} end?": "Did {e} end in {a}?",
    "What is the population of {e}?": "Does {e} have a population of {a}?",
    "Where is {e} located?": "Is {e} located in {a}?",
}
"""The yes/no form of each `_SPAN_QUESTIONS` question: does the article say that {a} is its answer?"""
_RELATION = re.compile(
    rf"^(?P<s>[^,;]+?)(?: \([^)]*\))?,? (?P<v>is|was) the (?P<r>(?:[a-z\-]+ ){{0,3}}[a-z\-]+) (?P<p>of|in) "
    rf"(?:the )?{_NAME}"
)
"""An opening sentence "<title> is the <relation> of <object>": the article answers "What is the <relation>
of <object>?"."""


def _span_qa(passages: list[Passage], rng: random.Random) -> list[Candidate | None]:
    """Wh-questions answered by a short span of a named article: who directed/wrote/founded, when it was
    founded/built/published, its population, capital, where it lies (`_SPAN_QUESTIONS`, at most one
    question of each kind per article); and, from an opening sentence "<title> is the <relation> of
    <object>", "What is the <relation> of <object>?" answered by the article's title. A retrieval training
    task in the seen format whose answers are names, years and numbers read from the gold article: every
    other training answer is a title, a description, a verdict or a copied phrase, and a reader trained on
    those alone answers "What is the capital of X?" with a description of the article it found. The object
    of a relation question must itself be a free article, so no question names an article a dev/test item
    is about (whose facts, like a country's capital, are test answers)."""
    free = {_base(p.title) for p in passages}
    out: list[Candidate | None] = []
    for p in passages:
        base = _base(p.title)
        if not base:
            continue
        sents = sentences(p.text)
        for template, answer in _span_answers(base, sents):
            question = template.format(e=base)
            out.append(Candidate("span-qa", f"{p.id}/{question}", {"question": question}, [answer], [p.id],
                                 base, p.id))  # fmt: skip
        match = _RELATION.search(sents[0]) if sents else None
        if match and match["s"].strip() in (base, p.title):
            obj = match["a"].strip(" .,'’")
            if obj in free and obj != base:
                question = f"What {match['v']} the {match['r']} {match['p']} {obj}?"
                out.append(Candidate("span-qa", f"{p.id}/{question}", {"question": question}, [base], [p.id],
                                     question, p.id))  # fmt: skip
    return out


def _span_answers(base: str, sents: list[str]) -> list[tuple[str, str]]:
    """(question template, answer span) for each `_SPAN_QUESTIONS` kind an article's sentences answer: the
    first match of the kind, not a possessive, not (part of) the article's own name."""
    out = []
    for template, pattern in _SPAN_QUESTIONS:
        match = next((m for s in sents if (m := pattern.search(s))), None)
        answer = match["a"].strip(" .,'’") if match else ""
        if not answer or answer.endswith(("'s", "’s")):
            continue
        if normalize_answer(answer) in normalize_answer(base):
            continue
        out.append((template, answer))
    return out


def _span_yesno(passages: list[Passage], rng: random.Random) -> list[Candidate | None]:
    """Yes/no questions about a named article's facts, in the seen format: each fact `span-qa` asks for
    ("Who directed Jaws?" -> Steven Spielberg) turned into "Was Jaws directed by Steven Spielberg?" -> Yes,
    or, half the time, the same question with another article's answer of the same kind ("... by Ridley
    Scott?" -> No; never an answer that occurs in this article's text). A retrieval training task whose
    answer is a verdict that only the named article can settle, so a reader that reads what the retriever
    found learns to judge a claim by it (fact checking's answer type; its template, "Is this statement
    true? <statement>", is never trained on). `yesno` asks the same of descriptions, which the question's
    own words give away more often than a name, a year or a number does."""
    facts = []
    for p in passages:
        base = _base(p.title)
        if base:
            facts += [
                (p, base, template, answer) for template, answer in _span_answers(base, sentences(p.text))
            ]
    pool: dict[str, list[str]] = collections.defaultdict(list)
    for _, _, template, answer in facts:
        pool[template].append(answer)
    out: list[Candidate | None] = []
    for p, base, template, answer in facts:
        others = [a for a in dict.fromkeys(pool[template]) if not answer_in_text(a, p.content)]
        true = rng.random() < 0.5
        if not true and not others:
            out.append(None)
            continue
        claimed = answer if true else rng.choice(others)
        question = _SPAN_YES_NO[template].format(e=base, a=claimed)
        out.append(Candidate("span-yesno", f"{p.id}/{template.format(e=base)}", {"question": question},
                             ["Yes" if true else "No"], [p.id], base, p.id, [base]))  # fmt: skip
    return out


def _title(p: Passage, rng: random.Random) -> Candidate | None:
    """The article's title from its text, with every mention of the title blanked out ("___"): a title
    answer, the answer type of entity linking, in a template unlike it."""
    base = _base(p.title)
    text = re.sub(re.escape(base), "___", p.text, flags=re.IGNORECASE) if base else p.text
    if "___" not in text or len(text.split()) < 20:
        return None
    return Candidate("title", p.id, {"context": text}, [p.title], [p.id], "", p.id, [p.title])


def check(c: Candidate, corpus: dict[str, Passage]) -> bool:
    support = c.support if c.support is not None else c.answers
    return all(e in corpus for e in c.evidence) and any(
        answer_in_text(s, corpus[e].content) for e in c.evidence for s in support
    )


EVAL_BUILDERS = {
    "describe": lambda corpus, rng: _describe(corpus),
    "fanoutqa": lambda corpus, rng: _fanoutqa(corpus),
    "trivia": lambda corpus, rng: _trivia(corpus),
    "slot-filling": lambda corpus, rng: _slot_filling(corpus),
    "fact-check": _fact_check,
    "entity-linking": _entity_linking,
}
"""Tasks with dev/test items: task -> builder(corpus, rng) -> candidates (split later by the group key)."""


def _each(
    make: Callable[[Passage, random.Random], Candidate | None],
) -> Callable[[list[Passage], random.Random], list[Candidate | None]]:
    return lambda passages, rng: [make(p, rng) for p in passages]


TRAIN_BUILDERS = {
    "denoise": _each(_denoise),
    "sentence": _each(_sentence),
    "reading": _each(_reading),
    "verify": _verify,
    "title": _each(_title),
    "about": _each(_about),
    "yesno": _yesno,
    "span-qa": _span_qa,
    "span-yesno": _span_yesno,
}
"""Training-only tasks: task -> builder(free articles, rng) -> a candidate or None per article, built from
the articles no dev/test item uses (false claims draw only on those, too). All are retrieval-free
(instruction) tasks but `about`, `yesno`, `span-qa` and `span-yesno`, seen-format QA tasks trained with
retrieval."""
