"""`imprag data import` on hand-made files in each real schema (KILT task lines of every kind, NQ-open,
FlashRAG; KILT, Atlas and title-keyed corpora): the items, the file:line:field errors, the evidence
mapping, the written benchmark, the CLI, and that `imprag data build` is unaffected."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from imprag.cli import main
from imprag.data import (
    Benchmark,
    BenchmarkError,
    CorpusSpec,
    ImportConfig,
    Item,
    TaskFileError,
    build_benchmark,
    import_benchmark,
)
from imprag.data import build as build_module
from imprag.data.evidence import EvidenceMap, page_key
from imprag.data.importers import Provenance, open_task_file, read_task_file
from imprag.io import LockedError, writer_lock
from imprag.retrieval.corpus import CorpusError, read_corpus
from imprag.retrieval.store import PassageStore


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def prov(
    wikipedia_id: str | None, title: str | None, start: int | None = None, end: int | None = None
) -> dict:
    """A KILT provenance entry with every field KILT writes."""
    entry = {"wikipedia_id": wikipedia_id, "title": title, "section": "Section::::Abstract.",
             "start_paragraph_id": start, "start_character": 0, "end_paragraph_id": end,
             "end_character": 10, "bleu_score": 1.0, "meta": {}}  # fmt: skip
    return {k: v for k, v in entry.items() if v is not None}


# Real-schema KILT lines, one of each kind (ids and texts in the style of the KILT dev files).
NQ = {
    "id": "-2982", "input": "how many episodes in season 2 breaking bad",
    "output": [
        {"answer": "13", "provenance": [prov("100", "Anarchism", 4, 4)]},
        {"answer": "13", "meta": {"score": 0}},
        {"answer": " thirteen "},
        {"provenance": [prov("200", "Zeno")]},  # a long-answer annotation: provenance, no answer
    ],
    "meta": {},
}  # fmt: skip
HOTPOT = {
    "id": "5a8b57f25542995d1e6f1371", "input": "Were Scott Derrickson and Ed Wood of the same nationality?",
    "output": [{"answer": "yes", "provenance": [prov("2816539", "Scott Derrickson", 1, 1),
                                                prov("10520", "Ed Wood", 1, 1)]}],
    "meta": {},
}  # fmt: skip
FEVER = [
    {"id": 75397, "input": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
     "output": [{"answer": "SUPPORTS", "provenance": [prov("1", "Nikolaj Coster-Waldau", 7, 7)]},
                {"answer": "SUPPORTS", "provenance": [prov("2", "Fox Broadcasting Company", 1, 1)]}]},
    {"id": 150448, "input": "Roman Atwood is a content creator.",
     "output": [{"answer": "REFUTES", "provenance": []}]},
]  # fmt: skip
AIDA = {
    "id": "947testa CRICKET_0",
    "input": "CRICKET - LEICESTERSHIRE TAKE OVER AT TOP AFTER INNINGS VICTORY . [START_ENT] LONDON [END_ENT] "
    "1996-08-30 West Indian all-rounder Phil Simmons took four for 38 on Friday .",
    "output": [{"answer": "London", "provenance": [{"wikipedia_id": "17867", "title": "London"}]}],
    "meta": {"left_context": "CRICKET - LEICESTERSHIRE TAKE OVER AT TOP AFTER INNINGS VICTORY .",
             "mention": "LONDON", "right_context": "1996-08-30 West Indian all-rounder ..."},
}  # fmt: skip
TREX = {
    "id": "9b8a3b1c-1b2a-11eb-8d5b-e4b97a5c3a8c", "input": "Lucas Nogueira [SEP] member of sports team",
    "output": [{"answer": "Toronto Raptors", "provenance": [prov("38597207", "Lucas Nogueira", 1, 1)]},
               {"answer": "Raptors"}],
    "meta": {"template_questions": ["Which team does Lucas Nogueira play for?"]},
}  # fmt: skip
ZSRE = {
    "id": "2bf1c2b8-8a39-4e39-9bc0-4a0b8bbbf2f4",
    "input": "Mosquito Creek [SEP]  located in or next to body of water",
    "output": [{"answer": "Nepean River", "provenance": [prov("1234", "Mosquito Creek", 1, 2)]}],
    "meta": {"template_questions": ["What body of water is Mosquito Creek next to?"]},
}  # fmt: skip


def items_of(path: Path, **kw) -> list[Item | None]:
    return [row.item for row in read_task_file(open_task_file(path, **kw))]


# -- reading each format --------------------------------------------------------------------------------


def test_kilt_qa_line(tmp_path) -> None:
    path = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ])
    source = open_task_file(path)
    assert (source.format, source.task, source.split) == ("kilt", "nq", "dev")
    [row] = read_task_file(source)
    question = "how many episodes in season 2 breaking bad"
    assert row.item == Item(
        id="nq/-2982", task="nq", split="dev", fields={"question": question}, answers=["13", "thirteen"],
        evidence=[], oracle_query=question,
        meta={"file": "nq-dev-kilt.jsonl", "line": 1, "pages": ["Anarchism", "Zeno"]},
    )  # fmt: skip
    assert row.item.prompt == "Q: how many episodes in season 2 breaking bad A:"
    assert row.provenance == (Provenance("100", "Anarchism", 4, 4), Provenance("200", "Zeno", None, None))


def test_kilt_hotpotqa_train_line(tmp_path) -> None:
    [item] = items_of(write_jsonl(tmp_path / "hotpotqa-train-kilt.jsonl", [HOTPOT]))
    assert (item.id, item.split, item.answers) == ("hotpotqa/5a8b57f25542995d1e6f1371", "train", ["yes"])
    assert item.meta["pages"] == ["Scott Derrickson", "Ed Wood"]


def test_kilt_fever_lines_become_true_false(tmp_path) -> None:
    supports, refutes = items_of(write_jsonl(tmp_path / "fever-dev-kilt.jsonl", FEVER))
    assert supports.id == "fever/75397" and supports.answers == ["True"]  # two SUPPORTS outputs, one answer
    assert supports.fields == {"statement": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company."}
    assert (
        supports.prompt
        == "Is this statement true? Nikolaj Coster-Waldau worked with the Fox Broadcasting Company. A:"
    )
    assert refutes.answers == ["False"] and "pages" not in refutes.meta  # an empty provenance list


def test_kilt_aidayago2_marks_become_the_templates(tmp_path) -> None:
    [item] = items_of(write_jsonl(tmp_path / "aidayago2-dev-kilt.jsonl", [AIDA]))
    assert item.fields == {
        "context": "CRICKET - LEICESTERSHIRE TAKE OVER AT TOP AFTER INNINGS VICTORY . [START] LONDON [END] "
        "1996-08-30 West Indian all-rounder Phil Simmons took four for 38 on Friday ."
    }
    assert (item.answers, item.oracle_query, item.id) == (
        ["London"],
        "LONDON",
        "aidayago2/947testa CRICKET_0",
    )
    assert item.prompt.endswith(
        "Friday . Output the Wikipedia page title of the entity mentioned between [START] and [END] in the "
        "given text A:"
    )


@pytest.mark.parametrize(
    "name, line, task, entity, relation, answers",
    [
        ("trex-dev-kilt.jsonl", TREX, "trex", "Lucas Nogueira", "member of sports team",
         ["Toronto Raptors", "Raptors"]),
        ("structured_zeroshot-dev-kilt.jsonl", ZSRE, "zsre", "Mosquito Creek",
         "located in or next to body of water", ["Nepean River"]),
    ],
)  # fmt: skip
def test_kilt_slot_filling_lines(tmp_path, name, line, task, entity, relation, answers) -> None:
    [item] = items_of(write_jsonl(tmp_path / name, [line]))
    assert (item.task, item.fields, item.answers) == (task, {"entity": entity, "relation": relation}, answers)
    assert item.oracle_query == f"{entity} {relation}"
    assert item.prompt.startswith(f"{entity} [SEP] {relation} Provide the answer corresponding")


def test_kilt_lines_without_answers_are_dropped_not_errors(tmp_path) -> None:
    """KILT's test files carry no output; an output list without an answer string is the same."""
    path = write_jsonl(
        tmp_path / "nq-test_without_answers-kilt.jsonl",
        [{"id": "a", "input": "who?"}, {"id": "b", "input": "what?", "output": [{"answer": "  "}]},
         {"id": "c", "input": "when?", "output": [{"provenance": [prov("1", "X")]}]}],
    )  # fmt: skip
    rows = list(read_task_file(open_task_file(path)))
    assert [(r.number, r.item) for r in rows] == [(1, None), (2, None), (3, None)]
    assert rows[2].provenance == (Provenance("1", "X"),)


def test_nq_open_file(tmp_path) -> None:
    path = write_jsonl(
        tmp_path / "NQ-open.dev.jsonl",
        [{"question": "the last time la dodgers won the world series", "answer": ["1988"]}, "",
         {"question": "where does the movie the sound of music take place",
          "answer": ["Salzburg, Austria", "Austria"]}],
    )  # fmt: skip
    source = open_task_file(path)
    assert (source.format, source.task, source.split) == ("nq-open", "nq", "dev")
    first, second = items_of(path)
    question = "the last time la dodgers won the world series"
    assert first == Item(
        id="nq/NQ-open.dev-1", task="nq", split="dev", fields={"question": question}, answers=["1988"],
        evidence=[], oracle_query=question, meta={"file": "NQ-open.dev.jsonl", "line": 1},
    )  # fmt: skip
    assert (second.id, second.answers) == ("nq/NQ-open.dev-3", ["Salzburg, Austria", "Austria"])  # line 3
    assert [it.task for it in items_of(path, task="triviaqa")] == ["triviaqa", "triviaqa"]


def test_instructions_file_for_the_training_mix(tmp_path, kilt_corpus) -> None:
    """{prompt, answer} lines: the user's instruction data, prompts as written, one answer each; a line
    without an answer or with a non-string answer is an error naming its field."""
    prompt = "Rewrite in the passive voice: The cat chased the mouse.\nAnswer:"
    path = write_jsonl(
        tmp_path / "my-instructions.train.jsonl",
        [{"prompt": prompt, "answer": "The mouse was chased by the cat."},
         {"id": 7, "prompt": "Translate 'chat' to English:", "answer": " cat "}],
    )  # fmt: skip
    source = open_task_file(path)
    assert (source.format, source.task, source.split) == ("instructions", "instructions", "train")
    first, second = items_of(path)
    assert (first.prompt, first.answers, first.id) == (
        prompt, ["The mouse was chased by the cat."], "instructions/my-instructions.train-1"
    )  # fmt: skip
    assert (second.id, second.answers) == ("instructions/7", ["cat"])
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    bench = import_benchmark([path], tmp_path / "b", config, progress=False)
    assert bench.counts["instructions"]["train"] == 2
    assert bench.manifest["formats"]["instructions"] == "no-retrieval"
    bad = write_jsonl(tmp_path / "bad.train.jsonl", [{"prompt": "p"}])
    with pytest.raises(TaskFileError, match=re.escape(f'{bad}:1: field "answer": missing')):
        items_of(bad)
    bad = write_jsonl(tmp_path / "bad2.train.jsonl", [{"prompt": "p", "answer": ["a"]}])
    with pytest.raises(TaskFileError, match=re.escape(f'{bad}:1: field "answer": expected a string')):
        items_of(bad)


def test_flashrag_file_task_from_folder_or_name(tmp_path) -> None:
    rows = [{"id": "test_0", "question": "who got the first nobel prize in physics",
             "golden_answers": ["Wilhelm Conrad Röntgen"]}]  # fmt: skip
    nq = write_jsonl(tmp_path / "nq" / "test.jsonl", rows)
    two = write_jsonl(tmp_path / "2wikimultihopqa" / "dev.jsonl", rows)
    named = write_jsonl(tmp_path / "flashrag-nq-test.jsonl", rows)
    assert [(s.format, s.task, s.split) for s in map(open_task_file, (nq, two, named))] == [
        ("flashrag", "nq", "test"), ("flashrag", "2wikimultihopqa", "dev"), ("flashrag", "nq", "test"),
    ]  # fmt: skip
    [item] = items_of(nq)
    assert (item.id, item.answers, item.fields) == (
        "nq/test_0",
        ["Wilhelm Conrad Röntgen"],
        {"question": "who got the first nobel prize in physics"},
    )
    other = write_jsonl(tmp_path / "popqa" / "test.jsonl", rows)
    with pytest.raises(TaskFileError, match=r"cannot tell the task of a FlashRAG file.*pass --task"):
        open_task_file(other)
    assert open_task_file(other, task="triviaqa").task == "triviaqa"


@pytest.mark.parametrize(
    "name, split",
    [("nq-train-kilt.jsonl", "train"), ("triviaqa-dev_id-kilt.jsonl", "dev"),
     ("nq-test_without_answers-kilt.jsonl", "test"), ("NQ-open.efficientqa.dev.jsonl", "dev")],
)  # fmt: skip
def test_split_from_the_file_name(tmp_path, name, split) -> None:
    line = {"question": "q", "answer": ["a"]} if name.startswith("NQ") else NQ
    assert open_task_file(write_jsonl(tmp_path / name, [line])).split == split


def test_split_and_task_errors(tmp_path) -> None:
    for name, found in [("nq.jsonl", "none of train, dev, test"), ("train-dev.jsonl", "dev and train")]:
        path = write_jsonl(tmp_path / name, [{"question": "q", "answer": ["a"]}])
        with pytest.raises(TaskFileError, match=rf"cannot tell the split .*it names {found}\); pass --split"):
            open_task_file(path)
        assert open_task_file(path, split="test").split == "test"
    path = write_jsonl(tmp_path / "wow-dev-kilt.jsonl", [NQ])
    with pytest.raises(TaskFileError, match=r"is KILT's 'wow', which has no imprag task.*pass --task"):
        open_task_file(path)
    with pytest.raises(
        TaskFileError, match="--task 'describe' is built by `imprag data build`, not imported"
    ):
        open_task_file(path, task="describe")
    with pytest.raises(TaskFileError, match="--task 'qa' is not a task; imported tasks: nq, hotpotqa"):
        open_task_file(path, task="qa")
    with pytest.raises(TaskFileError, match="--split 'validation' is not a split"):
        open_task_file(path, task="nq", split="validation")


def test_format_errors(tmp_path) -> None:
    with pytest.raises(TaskFileError, match="no such file"):
        open_task_file(tmp_path / "missing-dev-kilt.jsonl")
    empty = tmp_path / "nq-dev-kilt.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(TaskFileError, match="holds no lines"):
        open_task_file(empty)
    other = write_jsonl(tmp_path / "x-dev.jsonl", ["", {"id": "p1", "title": "T", "text": "a corpus line"}])
    with pytest.raises(
        TaskFileError, match=re.escape(f"{other}:2: cannot tell the format from the keys ['id'")
    ):
        open_task_file(other)


# -- malformed lines: file, line, field ----------------------------------------------------------------

GOOD = {
    "nq-dev-kilt.jsonl": {"id": "ok", "input": "q?", "output": [{"answer": "a"}]},
    "fever-dev-kilt.jsonl": {"id": 0, "input": "A claim.", "output": [{"answer": "REFUTES"}]},
    "aidayago2-dev-kilt.jsonl": {
        "id": "ok",
        "input": "a [START_ENT] m [END_ENT] b",
        "output": [{"answer": "M"}],
    },
    "trex-dev-kilt.jsonl": {"id": "ok", "input": "s [SEP] r", "output": [{"answer": "o"}]},
    "NQ-open.dev.jsonl": {"question": "q?", "answer": ["a"]},
    "nq/dev.jsonl": {"id": "dev_0", "question": "q?", "golden_answers": ["a"]},
}
"""A good line of each file the bad lines below sit in (between two good ones)."""


K = "nq-dev-kilt.jsonl"
OUT = '{"id": "a", "input": "q?", "output": '
"""The start of a KILT line whose output is bad."""


@pytest.mark.parametrize(
    "name, line, message",
    [
        (K, OUT + "[", "not valid JSON"),
        (K, '["a", "list"]', "expected a JSON object, found list"),
        (K, '{"id": "a", "output": [{"answer": "x"}]}', 'field "input": missing'),
        (K, '{"id": "a", "input": 42}', 'field "input": expected a non-empty string, found 42'),
        (K, '{"id": "a", "input": "   "}', 'field "input": expected a non-empty string, found "   "'),
        (K, '{"input": "q?"}', 'field "id": expected a non-empty string or number, found null'),
        (K, OUT + '{"answer": "x"}}', 'field "output": expected a list'),
        (K, OUT + '["x"]}', 'field "output[0]": expected an object'),
        (
            K,
            OUT + '[{"answer": "x"}, {"answer": 13}]}',
            'field "output[1].answer": expected a string, found 13',
        ),
        (K, OUT + '[{"answer": "x", "provenance": {}}]}', 'field "output[0].provenance": expected a list'),
        (
            K,
            OUT + '[{"provenance": [{"wikipedia_id": [1]}]}]}',
            'field "output[0].provenance[0].wikipedia_id": expected a string, found [1]',
        ),
        (K, OUT + '[{"provenance": [{"section": "S"}]}]}', 'field "output[0].provenance[0]": names no page'),
        (
            K,
            OUT + '[{"provenance": [{"title": "T", "start_paragraph_id": "five"}]}]}',
            'field "output[0].provenance[0].start_paragraph_id": expected a paragraph number, found "five"',
        ),
        (
            "fever-dev-kilt.jsonl",
            '{"id": 1, "input": "A claim.", "output": [{"answer": "NOT ENOUGH INFO"}]}',
            'field "output[0].answer": expected SUPPORTS or REFUTES',
        ),
        (
            "aidayago2-dev-kilt.jsonl",
            '{"id": "d", "input": "No mention marked here.", "output": [{"answer": "X"}]}',
            'field "input": expected one mention marked [START_ENT] ... [END_ENT], found 0 marked mentions',
        ),
        (
            "trex-dev-kilt.jsonl",
            '{"id": "t", "input": "Lucas Nogueira member of team", "output": [{"answer": "X"}]}',
            "field \"input\": expected 'subject [SEP] relation'",
        ),
        ("NQ-open.dev.jsonl", '{"question": "q?", "answer": "Paris"}', 'field "answer": expected a list'),
        ("NQ-open.dev.jsonl", '{"question": "", "answer": ["x"]}', 'field "question": expected a non-empty'),
        ("nq/dev.jsonl", '{"id": "dev_1", "question": "q?"}', 'field "golden_answers": missing'),
    ],
)
def test_a_bad_line_names_file_line_and_field(tmp_path, name, line, message) -> None:
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    good = json.dumps(GOOD[name])
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    rows = read_task_file(open_task_file(path))
    assert next(rows).number == 1  # streamed: the good first line arrives before the bad one is read
    with pytest.raises(TaskFileError) as err:
        next(rows)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_non_utf8_line(tmp_path) -> None:
    path = tmp_path / "NQ-open.dev.jsonl"
    path.write_bytes(b'{"question": "q?", "answer": ["a"]}\n{"question": "caf\xe9", "answer": ["a"]}\n')
    with pytest.raises(TaskFileError, match=re.escape(f"{path}:2: not UTF-8")):
        list(read_task_file(open_task_file(path)))


# -- evidence -------------------------------------------------------------------------------------------


def kilt_page(page_id: str, title: str, paragraphs: list[str]) -> dict:
    text = [f"{title}\n", *paragraphs]
    return {"_id": page_id, "wikipedia_id": page_id, "wikipedia_title": title, "text": text, "anchors": [],
            "categories": "", "history": {}}  # fmt: skip


@pytest.fixture
def kilt_corpus(tmp_path) -> Path:
    """Chunked with --chunk-size 3: 100-0 "a1 a2 a3" (paragraph 1), 100-1 "a4 b1 b2" (1-3), 100-2 "b3 c1 c2"
    (3-4); 200-0 "z1 z2" (1)."""
    return write_jsonl(
        tmp_path / "kilt_knowledgesource.json",
        [kilt_page("100", "Anarchism", ["a1 a2 a3 a4\n", "Section::::History.\n", "b1 b2 b3\n", "c1 c2\n"]),
         kilt_page("200", "Zeno", ["z1 z2\n"])],
    )  # fmt: skip


@pytest.mark.parametrize(
    "entry, ids",
    [
        (Provenance("100", "Anarchism", 4, 4), ["100-2"]),
        (Provenance("100", None, 3, 3), ["100-1", "100-2"]),  # paragraph 3 ends one chunk, starts the next
        (Provenance("100", None, 2, 2), ["100-1"]),  # a section heading: the chunk around it
        (Provenance("100", None, 1, 4), ["100-0", "100-1", "100-2"]),
        (Provenance("100", None, 0, 0), ["100-0"]),  # the title paragraph: no chunk, so the page's lead
        (Provenance("100", None, 9, 9), ["100-0"]),  # past the page's end: the lead too
        (Provenance("100", None), ["100-0", "100-1", "100-2"]),  # no paragraphs: the whole page
        (Provenance(None, "Zeno"), ["200-0"]),  # by title
        (Provenance("999", "zeno"), ["200-0"]),  # an unknown id falls back to the title (first letter)
        (Provenance("999", "Nowhere"), []),
        (Provenance("200", "Anarchism"), ["200-0"]),  # the id wins over the title
    ],
)
def test_evidence_in_a_kilt_corpus(kilt_corpus, entry, ids) -> None:
    spec = CorpusSpec(str(kilt_corpus), chunk_size=3)
    with EvidenceMap() as evidence:
        evidence.want([entry])
        assert evidence.scan(spec.passages())[1] == 4
        assert evidence.resolve([entry]) == ids


def test_kilt_chunks_keep_ids_text_and_hash_of_read_corpus(kilt_corpus, tmp_path) -> None:
    spec = CorpusSpec(str(kilt_corpus), chunk_size=3)
    chunks = list(spec.passages())
    assert [(p.id, p.text, span) for p, span in chunks] == [
        ("100-0", "a1 a2 a3", (1, 1)), ("100-1", "a4 b1 b2", (1, 3)), ("100-2", "b3 c1 c2", (3, 4)),
        ("200-0", "z1 z2", (1, 1)),
    ]  # fmt: skip
    assert [p for p, _ in chunks] == list(read_corpus(kilt_corpus, chunk_size=3))
    store = PassageStore.build(tmp_path / "passages.sqlite", read_corpus(kilt_corpus, chunk_size=3))
    with EvidenceMap() as evidence:
        assert evidence.scan(spec.passages()) == (store.corpus_hash, 4)  # what eval and train compare


def test_evidence_in_an_atlas_corpus_is_the_whole_article(tmp_path) -> None:
    path = write_jsonl(
        tmp_path / "text-list-100-sec.jsonl",
        [{"id": "0", "title": "Zeno of Elea", "section": "", "text": "Zeno was a philosopher."},
         {"id": "1", "title": "Zeno of Elea", "section": "Paradoxes", "text": "Achilles and the tortoise."},
         {"id": "2", "title": "Elea", "section": "History", "text": "Elea was a colony."}],
    )  # fmt: skip
    entries = [Provenance("5000", "Zeno_of_Elea", 3, 3), Provenance(None, "Elea"), Provenance(None, "Zeno")]
    with EvidenceMap() as evidence:
        evidence.want(entries)
        assert evidence.scan(CorpusSpec(str(path)).passages())[1] == 3
        assert [evidence.resolve([e]) for e in entries] == [["0", "1"], ["2"], []]


def test_the_evidence_map_keeps_corpus_order_past_a_batch_and_is_deleted_on_close() -> None:
    """More passages than one batch of the corpus scan, interleaved pages: each page's passages come back
    in corpus order, paragraph spans narrow them, and closing deletes the temporary file."""
    from imprag.retrieval.corpus import Passage

    corpus = [
        (Passage(id=f"{n % 7}-{n}", title=f"Page {n % 7}", text="x", meta={"wikipedia_id": str(n % 7)}),
         (n // 7, n // 7))
        for n in range(3000)
    ]  # fmt: skip
    wanted = [Provenance("3", None), Provenance(None, "page 5", 10, 11), Provenance("99", "Nowhere")]
    evidence = EvidenceMap()
    folder = Path(evidence._folder.name)
    evidence.want(wanted)
    assert evidence.pages_wanted == 4  # i:3, i:99, t:Page 5, t:Nowhere
    assert evidence.scan(corpus)[1] == 3000
    assert evidence.resolve([wanted[0]]) == [f"3-{n}" for n in range(3, 3000, 7)]
    assert evidence.resolve([wanted[1]]) == ["5-75", "5-82"]
    assert evidence.resolve([wanted[2]]) == []
    evidence.close()
    assert not folder.exists()


def test_page_key() -> None:
    assert page_key(" zeno_of  Elea ") == "Zeno of Elea"
    assert page_key("Cafe\u0301") == "Café"  # NFC: a combining accent equals the composed letter
    assert page_key("iPhone") == "IPhone"  # MediaWiki's first-letter rule, as both sides get it


# -- the written benchmark ------------------------------------------------------------------------------


def test_import_writes_a_benchmark_that_loads(tmp_path, kilt_corpus) -> None:
    nq = write_jsonl(tmp_path / "in" / "nq-dev-kilt.jsonl", [
        NQ,
        {"id": "-77", "input": "who wrote zeno's paradoxes", "output": [{"answer": "Zeno", "provenance": [
            prov("999", "Nowhere", 1, 1)]}]},
        {"id": "-78", "input": "a question without an answer"},
    ])  # fmt: skip
    fever = write_jsonl(tmp_path / "in" / "fever-dev-kilt.jsonl", FEVER)
    nq_open = write_jsonl(
        tmp_path / "in" / "NQ-open.train.jsonl", [{"question": "where is elea", "answer": ["Italy"]}]
    )
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    bench = import_benchmark([nq, fever, nq_open], tmp_path / "bench", config, progress=False)
    assert Benchmark.load(tmp_path / "bench").manifest == bench.manifest
    assert bench.tasks == ["nq", "fever"]
    assert bench.counts == {
        "nq": {"train": 1, "dev": 2, "test": 0},
        "fever": {"train": 0, "dev": 2, "test": 0},
    }
    question = "how many episodes in season 2 breaking bad"
    assert bench.items("nq", "dev") == [
        Item("nq/-2982", "nq", "dev", {"question": question}, ["13", "thirteen"], ["100-2", "200-0"],
             question, {"file": "nq-dev-kilt.jsonl", "line": 1, "pages": ["Anarchism", "Zeno"]}),
        Item("nq/-77", "nq", "dev", {"question": "who wrote zeno's paradoxes"}, ["Zeno"], [],
             "who wrote zeno's paradoxes", {"file": "nq-dev-kilt.jsonl", "line": 2, "pages": ["Nowhere"]}),
    ]  # fmt: skip
    assert bench.items("nq", "train") == [
        Item("nq/NQ-open.train-1", "nq", "train", {"question": "where is elea"}, ["Italy"], [],
             "where is elea", {"file": "NQ-open.train.jsonl", "line": 1}),
    ]  # fmt: skip
    assert [(it.answers, it.evidence) for it in bench.items("fever", "dev")] == [
        (["True"], []),
        (["False"], []),
    ]
    m = bench.manifest
    assert m["kind"] == "imported" and m["formats"] == {"nq": "seen", "fever": "unseen"}
    assert m["dropped"] == {"nq": 1, "fever": 0}
    assert m["no_evidence"] == {
        "nq": {"not_in_corpus": 1, "no_provenance": 1},  # -77 cites a page not in the corpus; NQ-open none
        "fever": {"not_in_corpus": 1, "no_provenance": 1},  # pages 1 and 2 are not in it; an empty list
    }
    store = PassageStore.build(tmp_path / "p.sqlite", read_corpus(kilt_corpus, chunk_size=3))
    assert m["corpus"] == {"name": str(kilt_corpus), "hash": store.corpus_hash, "count": 4, "format": "kilt",
                           "chunk_size": 3, "chunk_overlap": 0}  # fmt: skip
    keys = ("path", "format", "task", "split", "lines", "items", "dropped")
    assert [tuple(s[k] for k in keys) for s in m["sources"]] == [
        (str(nq.resolve()), "kilt", "nq", "dev", 3, 2, 1),
        (str(fever.resolve()), "kilt", "fever", "dev", 2, 2, 0),
        (str(nq_open.resolve()), "nq-open", "nq", "train", 1, 1, 0),
    ]
    assert m["sources"][1]["sha256"] == hashlib.sha256(fever.read_bytes()).hexdigest()
    files = sorted(
        p.relative_to(bench.directory).as_posix() for p in bench.directory.rglob("*") if p.is_file()
    )
    assert files == ["benchmark.json", "dev/fever.jsonl", "dev/nq.jsonl", "train/nq.jsonl"]


def test_import_maps_titles_of_the_embedded_corpus(tmp_path) -> None:
    """wiki-summaries (the default): passage id = article title; "Accordion" is one, "Chen Yi-hsiung" not."""
    path = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [
        {"id": "1", "input": "what is an accordion", "output": [{"answer": "an instrument", "provenance": [
            prov("3163", "Accordion", 1, 1)]}]},
        {"id": "2", "input": "In one word, how did Chen Yi-hsiung die?", "output": [
            {"answer": "suicide", "provenance": [prov("10287141", "Chen Yi-hsiung", 5, 5)]}]},
    ])  # fmt: skip
    bench = import_benchmark([path], tmp_path / "bench", progress=False)
    assert [it.evidence for it in bench.items("nq", "dev")] == [["Accordion"], []]
    assert bench.manifest["corpus"]["name"] == "wiki-summaries" and bench.manifest["corpus"]["count"] == 10033
    assert bench.manifest["no_evidence"] == {"nq": {"not_in_corpus": 1, "no_provenance": 0}}


def test_a_bad_line_stops_the_import_before_the_corpus_is_read(tmp_path, monkeypatch) -> None:
    path = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ, {"id": "x", "input": ""}])
    monkeypatch.setattr(CorpusSpec, "passages", lambda self: pytest.fail("the corpus was read"))
    with pytest.raises(TaskFileError, match=re.escape(f'{path}:2: field "input"')):
        import_benchmark([path], tmp_path / "bench", progress=False)
    assert not (tmp_path / "bench").exists()


def test_a_repeated_id_is_named_across_files_of_one_task_and_split(tmp_path, kilt_corpus) -> None:
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3), task="nq", split="dev")
    first = write_jsonl(tmp_path / "a.jsonl", [NQ, {**NQ, "id": "other"}])
    second = write_jsonl(tmp_path / "b.jsonl", [{**NQ, "id": "third"}, {**NQ, "id": "other"}])
    with pytest.raises(TaskFileError, match=re.escape(f"{second}:2: field \"id\": 'nq/other' repeats")):
        import_benchmark([first, second], tmp_path / "b", config, progress=False)
    assert not (tmp_path / "b").exists()


def test_a_hash_collision_of_different_ids_is_not_a_repeat(tmp_path, kilt_corpus, monkeypatch) -> None:
    """The uniqueness check keeps 8-byte hashes, not ids; ids whose hashes collide are compared as text."""
    from imprag.data import importing

    monkeypatch.setattr(importing, "_id_hash", lambda item_id: 7)  # every id collides
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    path = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ, {**NQ, "id": "b"}, {**NQ, "id": "c"}])
    bench = import_benchmark([path], tmp_path / "b", config, progress=False)
    assert [it.id for it in bench.items("nq", "dev")] == ["nq/-2982", "nq/b", "nq/c"]
    again = write_jsonl(tmp_path / "nq-train-kilt.jsonl", [NQ, {**NQ, "id": "b"}, {**NQ, "id": "b"}])
    with pytest.raises(TaskFileError, match=re.escape(f"{again}:3: field \"id\": 'nq/b' repeats")):
        import_benchmark([again], tmp_path / "c", config, progress=False)


def test_import_refusals(tmp_path, kilt_corpus) -> None:
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    path = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ, NQ])
    with pytest.raises(
        TaskFileError, match=re.escape(f"{path}:2: field \"id\": 'nq/-2982' repeats an earlier")
    ):
        import_benchmark([path], tmp_path / "b", config, progress=False)
    once = write_jsonl(tmp_path / "fever-dev-kilt.jsonl", FEVER)
    with pytest.raises(TaskFileError, match="given more than once"):
        import_benchmark(
            [once, tmp_path / "." / "fever-dev-kilt.jsonl"], tmp_path / "b", config, progress=False
        )
    test = write_jsonl(tmp_path / "nq-test_without_answers-kilt.jsonl", [{"id": "a", "input": "q?"}])
    with pytest.raises(TaskFileError, match=r"nothing to import: no line of .* has an answer"):
        import_benchmark([test], tmp_path / "b", config, progress=False)
    with pytest.raises(CorpusError, match="no such file or folder"):
        import_benchmark(
            [once], tmp_path / "b", ImportConfig(corpus=CorpusSpec(str(tmp_path / "nope.jsonl")))
        )
    assert not (tmp_path / "b").exists()


def test_overwrite_and_the_writer_lock(tmp_path, kilt_corpus) -> None:
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    fever = write_jsonl(tmp_path / "fever-dev-kilt.jsonl", FEVER)
    out = tmp_path / "bench"
    import_benchmark([fever], out, config, progress=False)
    with pytest.raises(BenchmarkError, match="already holds a benchmark; pass overwrite=True"):
        import_benchmark([fever], out, config, progress=False)
    with (
        writer_lock(out, "another writer"),
        pytest.raises(LockedError, match="imprag data import waits for no one"),
    ):
        import_benchmark([fever], out, config, overwrite=True, progress=False)
    nq = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ])
    assert import_benchmark([nq], out, config, overwrite=True, progress=False).tasks == ["nq"]
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.json", "dev"]  # no lock file, no fever
    beside = sorted(p.name for p in tmp_path.iterdir())  # no temporary or old copy left beside it
    assert beside == ["bench", "fever-dev-kilt.jsonl", "kilt_knowledgesource.json", "nq-dev-kilt.jsonl"]


def test_an_imported_task_missing_from_a_benchmark_points_to_the_importer(tmp_path, kilt_corpus) -> None:
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    bench = import_benchmark([write_jsonl(tmp_path / "fever-dev-kilt.jsonl", FEVER)], tmp_path / "b", config,
                             progress=False)  # fmt: skip
    with pytest.raises(BenchmarkError, match=r"task 'nq' was not imported into .*`imprag data import FILE"):
        bench.items("nq", "dev")


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_import(tmp_path, capsys, kilt_corpus) -> None:
    nq = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ, {"id": "-78", "input": "no answer here"}])
    out = tmp_path / "bench"
    argv = ["data", "import", str(nq), "--out", str(out), "--corpus", str(kilt_corpus), "--chunk-size", "3"]
    assert main([*argv, "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "format", "train", "dev", "test", "dropped", "no", "evidence"]
    assert lines[1].split() == ["nq", "seen", "0", "1", "0", "1", "0"]
    assert lines[-1] == f"written to {out} (corpus {kilt_corpus}: 4 passages)"
    assert main([*argv, "--no-progress"]) == 2  # again: refused in one line
    err = capsys.readouterr().err
    assert "already holds a benchmark" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main([*argv, "--no-progress", "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "counts": {"nq": {"train": 0, "dev": 1, "test": 0}}, "dropped": {"nq": 1},
        "no_evidence": {"nq": {"not_in_corpus": 0, "no_provenance": 0}},
    }  # fmt: skip


def test_cli_import_errors_are_one_line(tmp_path, capsys) -> None:
    bad = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ, '{"id": "b", "input": 7}'])
    assert main(["data", "import", str(bad), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f'imprag data: error: {bad}:2: field "input": expected a non-empty string, found 7; fix the line or '
        "remove it, then import again\n"
    )
    assert not (tmp_path / "b").exists()


def test_cli_import_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imprag data import" in out and "--corpus" in out and "--split" in out and "--task" in out


# -- `imprag data build` is unaffected ------------------------------------------------------------------


def test_data_build_refuses_imported_tasks(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(build_module, "read_corpus", lambda *a, **k: pytest.fail("read before the check"))
    with pytest.raises(
        BenchmarkError, match=r"task 'nq' is not built .*`imprag data import FILE \.\.\. --out DIR`"
    ):
        build_benchmark(tmp_path / "b", ["slot-filling", "nq"])
    assert main(["data", "build", "--out", str(tmp_path / "b"), "--tasks", "fever"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`imprag data import" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


# What `imprag data build --tasks slot-filling,entity-linking` wrote before the importer existed (the code
# of commit 3983e3f, the pinned data packages): the first 16 hex digits of each file's sha256, and counts.
BUILT_BEFORE_FILES = {
    "dev/entity-linking.jsonl": "a01103e63dee9429", "dev/slot-filling.jsonl": "867ceb1db862b601",
    "test/entity-linking.jsonl": "d3256c0323442d95", "test/slot-filling.jsonl": "780b0fc23f0dd70b",
}  # fmt: skip
BUILT_BEFORE_MANIFEST = {
    "counts": {"slot-filling": {"train": 0, "dev": 56, "test": 148},
               "entity-linking": {"train": 0, "dev": 25, "test": 93}},
    "dropped": {"slot-filling": 351, "entity-linking": 0},
    "held_out": {"slot-filling": 0, "entity-linking": 0},
    "formats": {"slot-filling": "unseen", "entity-linking": "unseen"},
}  # fmt: skip


def test_data_build_outputs_are_unchanged(tmp_path) -> None:
    bench = build_benchmark(tmp_path / "b", ["slot-filling", "entity-linking"])
    digests = {
        p.relative_to(bench.directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(bench.directory.rglob("*.jsonl"))
    }
    assert digests == BUILT_BEFORE_FILES
    assert {
        k: bench.manifest[k] for k in ("counts", "dropped", "held_out", "formats")
    } == BUILT_BEFORE_MANIFEST


# -- `imprag eval` reads an imported benchmark unchanged ------------------------------------------------


class ScriptedSystem:
    """Answers each prompt from a script and reads the named passages: the harness without a model."""

    name, retrieves = "scripted", True

    def __init__(self, script: dict[str, tuple[str, list[str]]]) -> None:
        self.script = script

    def answer(self, prompts, queries, decode, demos=""):
        from imprag.evaluation.systems import Prediction
        from imprag.model.generation import RetrievedPassage

        return [
            Prediction(text, [RetrievedPassage("text", 1.0, pid, pid) for pid in read])
            for text, read in (self.script[p] for p in prompts)
        ]

    def describe(self) -> dict:
        return {"system": self.name}


def test_the_harness_scores_an_imported_benchmark(tmp_path, kilt_corpus) -> None:
    from imprag.evaluation.harness import evaluate

    nq = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [NQ])
    fever = write_jsonl(tmp_path / "fever-dev-kilt.jsonl", FEVER)
    config = ImportConfig(corpus=CorpusSpec(str(kilt_corpus), chunk_size=3))
    bench = import_benchmark([nq, fever], tmp_path / "bench", config, progress=False)
    script = {
        "Q: how many episodes in season 2 breaking bad A:": ("13", ["200-0"]),  # right, reads an evidence
        "Is this statement true? Nikolaj Coster-Waldau worked with the Fox Broadcasting Company. A:": (
            "False", ["100-0"]),  # wrong, reads no evidence (the item has none in this corpus)
        "Is this statement true? Roman Atwood is a content creator. A:": ("False", []),  # right
    }  # fmt: skip
    summary = evaluate(
        ScriptedSystem(script), bench, ["nq", "fever"], "dev", tmp_path / "eval", progress=False
    )
    rows = {r["task"]: r for r in summary["rows"]}
    assert (rows["nq"]["format"], rows["nq"]["em"], rows["nq"]["article_recall"]) == ("seen", 1.0, 1.0)
    assert (rows["fever"]["format"], rows["fever"]["em"], rows["fever"]["n"]) == ("unseen", 0.5, 2)
    assert rows["fever"]["recall"] is None  # True/False answers: no answer-string recall
