"""Readers of the paper's task files: each line of a KILT, NQ-open, FlashRAG or instructions file becomes one
`Item`.

Formats, told apart by the keys of a file's first non-empty line:
  kilt      {id, input, output: [{answer, provenance: [{wikipedia_id, title, start_paragraph_id,
            end_paragraph_id, ...}]}], meta}; named `<task>-<split>-kilt.jsonl` (the task from the name:
            nq, hotpotqa, triviaqa, fever, aidayago2, trex, structured_zeroshot -> zsre)
  nq-open   {question, answer: [..]}; the task is nq
  flashrag  {id, question, golden_answers: [..]}; the task from the folder or the name (`.../nq/test.jsonl`)
  instructions  {prompt, answer, id?}: the user's own instruction data; the task is `instructions`, for
            the training mix (data.instruction_tasks), the prompt taken as written
The task and the split can always be given instead (`--task`, `--split`); the split is read from the
name otherwise (`-dev-`, `.dev.`, `dev.jsonl`, ...).

Every format is first read into one shape (id, input text, answers, provenance); the task's template then
makes the fields:
  QA (nq, hotpotqa, triviaqa, 2wikimultihopqa)  question = input
  fact checking (fever)       statement = input; answers SUPPORTS / REFUTES -> "True" / "False"
  entity linking (aidayago2)  context = input, its [START_ENT] mention [END_ENT] written [START] .. [END]
  slot filling (trex, zsre)   input "subject [SEP] relation" -> entity, relation
  instructions                prompt = input, the one answer as given

Answers are every non-empty answer string, deduplicated in order. A line without one is dropped and
counted (`Row.item` is None): KILT's test files carry no outputs, and an item without a gold answer can be
neither scored nor trained on. A line that is not a task line -- not JSON, a field missing or of the wrong
type, an empty input -- is an error (`TaskFileError`) naming the file, the line, the field and the fix; no
line is skipped silently.

Everything streams: one line at a time, so a file of millions of lines costs the memory of one line.
Provenance is returned beside the item (`Row.provenance`); `evidence.py` maps it to corpus passage ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imprag.data.benchmark import SPLITS, Item
from imprag.data.tasks import (
    FACT_TEMPLATE,
    LINK_TEMPLATE,
    PROMPT_TEMPLATE,
    QA_TEMPLATE,
    SLOT_TEMPLATE,
    TASKS,
    get_task,
    imported_tasks,
)
from imprag.errors import ImpragError

__all__ = [
    "FLASHRAG_NAMES",
    "KILT_NAMES",
    "FileFormat",
    "Provenance",
    "Row",
    "TaskFile",
    "TaskFileError",
    "open_task_file",
    "read_task_file",
]

FileFormat = Literal["kilt", "nq-open", "flashrag", "instructions"]

KILT_NAMES = {
    "nq": "nq", "hotpotqa": "hotpotqa", "triviaqa": "triviaqa", "fever": "fever", "aidayago2": "aidayago2",
    "trex": "trex", "structured_zeroshot": "zsre",
}  # fmt: skip
"""KILT's task name (the start of its file names) -> the imprag task."""
FLASHRAG_NAMES = {
    "nq": "nq", "hotpotqa": "hotpotqa", "triviaqa": "triviaqa", "2wikimultihopqa": "2wikimultihopqa",
    "fever": "fever", "ay2": "aidayago2", "t-rex": "trex", "zero-shot_re": "zsre",
}  # fmt: skip
"""FlashRAG's dataset folder name -> the imprag task."""
_KILT_FILE = re.compile(r"^(?P<task>[a-z0-9_]+)-(?P<split>train|dev|test)[a-z_]*-kilt\.jsonl$")
"""`nq-dev-kilt.jsonl`, `nq-test_without_answers-kilt.jsonl`, `triviaqa-dev_id-kilt.jsonl`."""
_ENTITY = re.compile(r"\[START(?:_ENT)?\]\s*(?P<mention>.*?)\s*\[END(?:_ENT)?\]", re.DOTALL)
"""KILT's entity-linking mark (`[START_ENT] British [END_ENT]`); the template's own `[START]`/`[END]` too."""


class TaskFileError(ImpragError, ValueError):
    """A task file is missing, of an unknown format, or holds a bad line; the message names the file, the
    line and the field, and says what to do."""


class _FieldError(ImpragError, ValueError):
    """A bad field of one line; `read_task_file` adds the file and line number (a `TaskFileError`)."""

    def __init__(self, field: str, why: str, fix: str = "") -> None:
        super().__init__(f"{field}: {why}")
        self.field, self.why, self.fix = field, why, fix


@dataclass(frozen=True)
class Provenance:
    """One KILT provenance entry: a Wikipedia page (by id and/or title), optionally the paragraphs
    [start, end] of it, in KILT's numbering (the page's `text` list, 0 its title)."""

    wikipedia_id: str | None
    title: str | None
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class TaskFile:
    """A task file and how it is read: its format, and the task and split of all its items."""

    path: Path
    format: FileFormat
    task: str
    split: str


@dataclass
class Row:
    """One non-empty line: its item (None: dropped, the line has no answer) and its provenance."""

    number: int
    item: Item | None
    provenance: tuple[Provenance, ...] = ()


@dataclass
class _Raw:
    """A line in the shape every format shares, before the task's template makes its fields."""

    id: str
    input: Any
    input_field: str
    answers: list[tuple[str, Any]] = field(default_factory=list)
    """(field path, value) of every answer, e.g. ("output[1].answer", "13")."""
    provenance: list[Provenance] = field(default_factory=list)


# -- opening a file: format, task, split ----------------------------------------------------------------


def open_task_file(path: str | Path, task: str | None = None, split: str | None = None) -> TaskFile:
    """Detect a file's format from its first non-empty line, and its task and split from its name (or
    take the given ones). Errors name the file and what to pass."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    first = next(_objects(path), None)
    if first is None:
        raise TaskFileError(f"{path}: the file holds no lines; import a KILT, NQ-open or FlashRAG task file")
    number, row = first
    fmt = _detect(path, number, row)
    return TaskFile(path, fmt, _task(path, fmt, task), _split(path, split))


def _detect(path: Path, number: int, row: dict[str, Any]) -> FileFormat:
    if "prompt" in row:
        return "instructions"
    if "golden_answers" in row:
        return "flashrag"
    if "question" in row and "answer" in row:
        return "nq-open"
    if "input" in row or "output" in row:
        return "kilt"
    raise TaskFileError(
        f"{path}:{number}: cannot tell the format from the keys {sorted(row)}: expected a KILT line "
        "{id, input, output}, NQ-open {question, answer}, FlashRAG {id, question, golden_answers} or "
        "instructions {prompt, answer}"
    )


def _task(path: Path, fmt: FileFormat, task: str | None) -> str:
    if task is not None:
        if task not in TASKS or get_task(task).splits != "imported":
            what = "is built by `imprag data build`, not imported" if task in TASKS else "is not a task"
            raise TaskFileError(f"--task {task!r} {what}; imported tasks: {', '.join(imported_tasks())}")
        return task
    if fmt == "nq-open":
        return "nq"
    if fmt == "instructions":
        return "instructions"
    if fmt == "kilt":
        match = _KILT_FILE.match(path.name)
        if match and match["task"] in KILT_NAMES:
            return KILT_NAMES[match["task"]]
        named = f"is KILT's {match['task']!r}, which has no imprag task" if match else "is not KILT's"
        raise TaskFileError(
            f"{path}: the file name {named} (`<task>-<split>-kilt.jsonl`, task one of "
            f"{', '.join(KILT_NAMES)}); pass --task ({', '.join(imported_tasks())})"
        )
    found = {FLASHRAG_NAMES[path.parent.name]} if path.parent.name in FLASHRAG_NAMES else set()
    found = found or {FLASHRAG_NAMES[t] for t in _tokens(path.stem) if t in FLASHRAG_NAMES}
    if len(found) != 1:
        raise TaskFileError(
            f"{path}: cannot tell the task of a FlashRAG file from its folder or name (FlashRAG's dataset "
            f"folders: {', '.join(FLASHRAG_NAMES)}); pass --task ({', '.join(imported_tasks())})"
        )
    return found.pop()


def _split(path: Path, split: str | None) -> str:
    if split is not None:
        if split not in SPLITS:
            raise TaskFileError(f"--split {split!r} is not a split; splits are {', '.join(SPLITS)}")
        return split
    match = _KILT_FILE.match(path.name)
    found = {match["split"]} if match else {t for t in _tokens(path.stem) if t in SPLITS}
    if len(found) != 1:
        raise TaskFileError(
            f"{path}: cannot tell the split from the file name (it names "
            f"{' and '.join(sorted(found)) or 'none of train, dev, test'}); pass --split train|dev|test"
        )
    return found.pop()


def _tokens(name: str) -> list[str]:
    """Words of a file name: "nq-open.efficientqa.dev" -> nq, open, efficientqa, dev."""
    return [t for t in re.split(r"[-._ ]+", name.lower()) if t]


# -- reading lines --------------------------------------------------------------------------------------


def read_task_file(source: TaskFile, on_bytes: Callable[[bytes], None] | None = None) -> Iterator[Row]:
    """Stream a task file's rows; the first bad line raises a `TaskFileError`. `on_bytes` sees every raw
    line (for a progress bar or a checksum)."""
    for number, row in _objects(source.path, on_bytes):
        try:
            yield _row(source, number, row)
        except _FieldError as err:
            fix = err.fix or "fix the line or remove it, then import again"
            raise TaskFileError(f'{source.path}:{number}: field "{err.field}": {err.why}; {fix}') from None


def _objects(path: Path, on_bytes: Callable[[bytes], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) of every non-empty line, read one line at a time."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if on_bytes is not None:
                on_bytes(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TaskFileError(
                    f"{path}:{number}: not UTF-8 ({err.reason} at byte {err.start} of the line); re-encode "
                    "the file as UTF-8"
                ) from None
            line = line.removeprefix("\ufeff") if number == 1 else line
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskFileError(
                    f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); fix the line or "
                    "remove it, then import again"
                ) from None
            if not isinstance(row, dict):
                raise TaskFileError(
                    f"{path}:{number}: expected a JSON object, found {type(row).__name__}; a task file "
                    "holds one object per line"
                )
            yield number, row


def _row(source: TaskFile, number: int, row: dict[str, Any]) -> Row:
    raw = _READERS[source.format](row, source.path, number)
    text = raw.input
    if text is None:
        raise _FieldError(raw.input_field, "missing", _NO_INPUT)
    if not isinstance(text, str) or not text.strip():
        raise _FieldError(raw.input_field, f"expected a non-empty string, found {_shown(text)}")
    answers = []
    for where, answer in raw.answers:
        if not isinstance(answer, str):
            raise _FieldError(where, f"expected a string, found {_shown(answer)}")
        answers.append((where, answer.strip()))
    make_fields = _FIELDS[get_task(source.task).template]
    fields, golds, oracle = make_fields(text.strip(), raw.input_field, [a for a in answers if a[1]])
    provenance = tuple(dict.fromkeys(raw.provenance))
    if not golds:
        return Row(number, None, provenance)
    pages = list(dict.fromkeys(p.title or p.wikipedia_id for p in provenance))
    meta: dict[str, Any] = {"file": source.path.name, "line": number, **({"pages": pages} if pages else {})}
    item = Item(
        id=f"{source.task}/{raw.id}", task=source.task, split=source.split, fields=fields, answers=golds,
        evidence=[], oracle_query=oracle, meta=meta,
    )  # fmt: skip
    return Row(number, item, provenance)


_NO_INPUT = (
    "a task line needs its input (KILT's gold and prediction files for scoring carry none, and KILT's "
    "triviaqa files carry ids only: fill them in with KILT's scripts/get_triviaqa_input.py first)"
)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the three formats ----------------------------------------------------------------------------------


def _kilt(row: dict[str, Any], path: Path, number: int) -> _Raw:
    raw = _Raw(_id(row, "id", None), row.get("input"), "input")
    outputs = row.get("output")
    if outputs is None:
        return raw  # a test split: no answers, dropped
    if not isinstance(outputs, list):
        raise _FieldError("output", f"expected a list of {{answer, provenance}}, found {_shown(outputs)}")
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            why = f"expected an object {{answer, provenance}}, found {_shown(out)}"
            raise _FieldError(f"output[{i}]", why)
        if "answer" in out:
            raw.answers.append((f"output[{i}].answer", out["answer"]))
        provenance = out.get("provenance")
        if provenance is None:
            continue
        if not isinstance(provenance, list):
            raise _FieldError(f"output[{i}].provenance", f"expected a list, found {_shown(provenance)}")
        raw.provenance += [_provenance(p, f"output[{i}].provenance[{j}]") for j, p in enumerate(provenance)]
    return raw


def _provenance(entry: Any, where: str) -> Provenance:
    if not isinstance(entry, dict):
        raise _FieldError(where, f"expected an object {{wikipedia_id, title, ...}}, found {_shown(entry)}")
    page = entry.get("wikipedia_id")
    if page is not None and (isinstance(page, bool) or not isinstance(page, (str, int))):
        raise _FieldError(f"{where}.wikipedia_id", f"expected a string, found {_shown(page)}")
    title = entry.get("title")
    if title is not None and not isinstance(title, str):
        raise _FieldError(f"{where}.title", f"expected a string, found {_shown(title)}")
    page = (str(page).strip() or None) if page is not None else None
    title = (title.strip() or None) if title is not None else None
    if page is None and title is None:
        raise _FieldError(where, "names no page: expected a wikipedia_id or a title")
    start, end = (_paragraph(entry, f"{k}_paragraph_id", where) for k in ("start", "end"))
    start, end = (start if start is not None else end), (end if end is not None else start)
    return Provenance(page, title, start, end)


def _paragraph(entry: dict[str, Any], key: str, where: str) -> int | None:
    """A paragraph id: an int, or the digits of one (KILT's own test data has both)."""
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _FieldError(f"{where}.{key}", f"expected a paragraph number, found {_shown(value)}")


def _nq_open(row: dict[str, Any], path: Path, number: int) -> _Raw:
    raw = _Raw(_id(row, "id", f"{path.stem}-{number}"), row.get("question"), "question")
    raw.answers = _answer_list(row, "answer")
    return raw


def _flashrag(row: dict[str, Any], path: Path, number: int) -> _Raw:
    raw = _Raw(_id(row, "id", f"{path.stem}-{number}"), row.get("question"), "question")
    raw.answers = _answer_list(row, "golden_answers")
    return raw


def _instructions(row: dict[str, Any], path: Path, number: int) -> _Raw:
    raw = _Raw(_id(row, "id", f"{path.stem}-{number}"), row.get("prompt"), "prompt")
    if "answer" not in row:
        raise _FieldError("answer", "missing (the answer string the prompt should produce)")
    raw.answers = [("answer", row["answer"])]
    return raw


def _id(row: dict[str, Any], key: str, default: str | None) -> str:
    """The line's id as a string; `default` when the format has none (NQ-open: the file and line)."""
    value = row.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise _FieldError(key, f"expected a non-empty string or number, found {_shown(value)}")
    return str(value).strip()


def _answer_list(row: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    answers = row.get(key)
    if answers is None:
        raise _FieldError(key, "missing (a list of answer strings)")
    if not isinstance(answers, list):
        raise _FieldError(key, f"expected a list of strings, found {_shown(answers)}")
    return [(f"{key}[{i}]", a) for i, a in enumerate(answers)]


_READERS: dict[FileFormat, Callable[[dict[str, Any], Path, int], _Raw]] = {
    "kilt": _kilt,
    "nq-open": _nq_open,
    "flashrag": _flashrag,
    "instructions": _instructions,
}


# -- the task's fields, by its template -----------------------------------------------------------------

Answers = list[tuple[str, str]]
"""(field path, non-empty answer) pairs."""


def _dedupe(answers: list[str]) -> list[str]:
    return list(dict.fromkeys(answers))


def _qa(text: str, where: str, answers: Answers) -> tuple[dict[str, str], list[str], str]:
    return {"question": text}, _dedupe([a for _, a in answers]), text


_VERDICTS = {"SUPPORTS": "True", "REFUTES": "False", "TRUE": "True", "FALSE": "False"}


def _fact(text: str, where: str, answers: Answers) -> tuple[dict[str, str], list[str], str]:
    golds = []
    for path, answer in answers:
        if answer.upper() not in _VERDICTS:
            raise _FieldError(path, f"expected SUPPORTS or REFUTES (or True/False), found {_shown(answer)}")
        golds.append(_VERDICTS[answer.upper()])
    return {"statement": text}, _dedupe(golds), text


def _link(text: str, where: str, answers: Answers) -> tuple[dict[str, str], list[str], str]:
    marks = list(_ENTITY.finditer(text))
    if len(marks) != 1 or not marks[0]["mention"]:
        found = f"{len(marks)} marked mentions" if len(marks) != 1 else "an empty mention"
        raise _FieldError(where, f"expected one mention marked [START_ENT] ... [END_ENT], found {found}")
    mark = marks[0]
    context = f"{text[: mark.start()]}[START] {mark['mention']} [END]{text[mark.end() :]}"
    return {"context": context}, _dedupe([a for _, a in answers]), mark["mention"]


def _slot(text: str, where: str, answers: Answers) -> tuple[dict[str, str], list[str], str]:
    parts = [p.strip() for p in text.split("[SEP]")]
    if len(parts) != 2 or not all(parts):
        raise _FieldError(where, f"expected 'subject [SEP] relation', found {_shown(text)}")
    entity, relation = parts
    return {"entity": entity, "relation": relation}, _dedupe([a for _, a in answers]), f"{entity} {relation}"


def _prompt(text: str, where: str, answers: Answers) -> tuple[dict[str, str], list[str], str]:
    return {"prompt": text}, [a for _, a in answers], text


_FIELDS = {
    QA_TEMPLATE: _qa,
    FACT_TEMPLATE: _fact,
    LINK_TEMPLATE: _link,
    SLOT_TEMPLATE: _slot,
    PROMPT_TEMPLATE: _prompt,
}
"""Template -> how a line's input and answers become the template's fields, the gold answers and the
oracle query. Every imported task uses one of these five templates."""
