"""Training examples and the step schedule (method page, "Training data").

Three kinds of batches, each step one kind, drawn by `DataConfig.mix`:

    retrieval    a seen-format task's train items with teacher pseudo labels (positives, hard negatives;
                 the positives may be the items' gold articles instead: DataConfig.positives_from);
                 trained with J_gen + lambda * J_ret, the generator reading passages
    instruction  retrieval-free tasks (phrase denoising, next/previous sentence, reading comprehension),
                 trained with J_gen only, reading nothing
    lm           plain corpus text (the passage's body given its title), J_gen over every body token

Which examples a step sees is a pure function of (seed, step): each kind's items are walked in seeded
permutations, one pass after another, so a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import zip_longest
from pathlib import Path
from typing import Literal

from imprag.data.benchmark import Benchmark, Item
from imprag.errors import ImpragError
from imprag.retrieval.memory import TextRetriever
from imprag.retrieval.store import PassageStore
from imprag.training.config import DataConfig, PositivesFrom
from imprag.training.targets import PseudoLabel, PseudoLabelConfig, cached_pseudo_labels

__all__ = [
    "KINDS",
    "Example",
    "TrainingData",
    "TrainingDataError",
    "labelled",
    "load_training_data",
    "readers_first",
    "spread",
]

log = logging.getLogger(__name__)

Kind = Literal["retrieval", "instruction", "lm"]
KINDS: tuple[Kind, ...] = ("retrieval", "instruction", "lm")


class TrainingDataError(ImpragError, ValueError):
    """Training data that cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class Example:
    id: str
    kind: Kind
    prompt: str
    answer: str
    """The target text the prompt is continued with (loss on these tokens only)."""
    positives: tuple[int, ...] = ()
    """Passage-store rows of the teacher's positives (retrieval examples)."""
    negatives: tuple[int, ...] = ()
    """Passage-store rows of the hard negatives."""
    evidence: tuple[int, ...] = ()
    """Rows of the gold articles (logged as training recall; the positives only where data.positives_from
    or objective.pooling_positives says so: `labelled`)."""
    teacher_rows: tuple[int, ...] = ()
    """Rows of the teacher's top-m passages, best first (data.teacher_top_m; the dense teacher signal)."""
    teacher_scores: tuple[float, ...] = ()
    """The teacher's scores of `teacher_rows`."""
    task: str = ""
    """The benchmark task the example comes from (empty for plain-LM text)."""

    @property
    def candidates(self) -> tuple[int, ...]:
        return self.positives + self.negatives


def labelled(example: Example, source: PositivesFrom) -> Example:
    """`example` with the positives `source` names: the teacher's top data.positives ('teacher', as the
    example is built), its gold articles ('gold'), or both ('both': the gold articles first, then the
    teacher's others). An example without a gold article keeps the teacher's; hard negatives that are gold
    articles are dropped whenever gold articles are positives."""
    if source == "teacher" or not example.evidence:
        return example
    negatives = tuple(n for n in example.negatives if n not in example.evidence)
    positives = example.evidence
    if source == "both":
        positives += tuple(p for p in example.positives if p not in example.evidence)
    return replace(example, positives=positives, negatives=negatives)


def spread(pools: Sequence[Sequence[str]], n: int) -> list[str]:
    """Up to `n` items from non-empty `pools`, in a fixed order: an even stride through each pool (so every
    part of a pool contributes in proportion to its size), the pools interleaved."""
    share = -(-n // len(pools))
    strided = [pool[:: max(1, len(pool) // share)][:share] for pool in pools]
    return [x for row in zip_longest(*strided) for x in row if x is not None][:n]


def readers_first(examples: Sequence[Example], tasks: Sequence[str]) -> list[Example]:
    """`examples` reordered so that the ones of `tasks` come first, taken in turn from each task (round
    robin, in `tasks` order, each task's examples in batch order), then all others in batch order. The
    loop's first optim.batch_size retrieval queries learn J_gen (`DataConfig.read_tasks`); the order of
    the rest does not matter (J_ret is a mean over all)."""
    if not tasks:
        return list(examples)
    by_task = {task: [e for e in examples if e.task == task] for task in tasks}
    first = [e for row in zip_longest(*by_task.values()) for e in row if e is not None]
    return first + [e for e in examples if e.task not in by_task]


def answer_text(answer: str) -> str:
    """How an answer continues a prompt ending in 'A:': a space, the answer, and a newline that ends it
    (the evaluation stops at a newline)."""
    return f" {answer.strip()}\n"


class TrainingData:
    """Examples per kind plus the passage store their candidate rows point into."""

    def __init__(
        self,
        examples: dict[Kind, list[Example]],
        store: PassageStore,
        mix: Sequence[float],
        seed: int = 0,
        lm_exclude: Collection[int] = (),
    ) -> None:
        """`lm_exclude`: store rows plain-LM examples never read (the articles dev/test items are about)."""
        self.examples = {kind: list(examples.get(kind, [])) for kind in KINDS}  # lm: drawn from the store
        self.store = store
        self.seed = seed
        self.lm_rows = len(store)
        self.lm_exclude = frozenset(lm_exclude)
        lm_ok = self.lm_rows > sum(1 for r in self.lm_exclude if 0 <= r < self.lm_rows)
        available = {"retrieval": bool(self.examples["retrieval"]),
                     "instruction": bool(self.examples["instruction"]), "lm": lm_ok}  # fmt: skip
        self.weights = {k: w for k, w in zip(KINDS, mix, strict=True) if w > 0 and available[k]}
        if not self.weights:
            raise TrainingDataError("no training examples: every kind with a share in data.mix is empty")
        self._kinds: list[Kind] = []
        self._orders: dict[tuple[Kind, int], list[int]] = {}

    def calibration_prompts(self, n: int) -> list[str]:
        """Up to `n` train prompts for estimating mu_q: `spread` over each kind of prompt this run trains on
        (retrieval, instruction)."""
        pools = [
            [e.prompt for e in self.examples[k]]
            for k in ("retrieval", "instruction")
            if k in self.weights and self.examples[k]
        ]
        if not pools:
            raise TrainingDataError(
                "model.center needs retrieval or instruction prompts to estimate mu_q; data.mix trains on "
                "neither"
            )
        return spread(pools, n)

    def kind_of(self, step: int) -> Kind:
        """The kind of batch at `step` (seeded, independent of anything but seed and step)."""
        while len(self._kinds) <= step:
            rng = random.Random(f"{self.seed}/kind/{len(self._kinds)}")
            kinds, weights = zip(*self.weights.items(), strict=True)
            self._kinds.append(rng.choices(kinds, weights)[0])
        return self._kinds[step]

    def batch(self, step: int, size: int | Mapping[Kind, int]) -> tuple[Kind, list[Example]]:
        """The global batch of `step`: its kind and `size` examples (or `size[kind]`, a size per kind)."""
        kind = self.kind_of(step)
        size = size if isinstance(size, int) else size[kind]
        ordinal = sum(1 for s in range(step) if self.kind_of(s) == kind)  # batches of this kind before
        if kind == "lm":
            return kind, self._lm(ordinal, size)
        return kind, self.nth(kind, ordinal, size)

    def nth(self, kind: Kind, ordinal: int, size: int) -> list[Example]:
        """The `ordinal`-th batch of `size` examples of `kind` (retrieval or instruction), walking seeded
        passes over them: what `batch` gives at the step with that many batches of the kind before it."""
        items = self.examples[kind]
        out = []
        for n in range(ordinal * size, (ordinal + 1) * size):
            epoch, pos = divmod(n, len(items))
            out.append(items[self._order(kind, epoch)[pos]])
        return out

    def _order(self, kind: Kind, epoch: int) -> list[int]:
        """The seeded permutation of a kind's items for one pass over them."""
        key = (kind, epoch)
        if key not in self._orders:
            order = list(range(len(self.examples[kind])))
            random.Random(f"{self.seed}/{kind}/{epoch}").shuffle(order)
            self._orders = {key: order}  # passes are walked in order: keep only the current one
        return self._orders[key]

    def random_rows(self, step: int, rank: int, count: int) -> list[int]:
        """`count` random store rows for extra negatives of this rank at this step."""
        rng = random.Random(f"{self.seed}/random/{step}/{rank}")
        return [rng.randrange(self.lm_rows) for _ in range(count)] if self.lm_rows else []

    def _lm(self, ordinal: int, size: int) -> list[Example]:
        rng = random.Random(f"{self.seed}/lm/{ordinal}")
        rows = []
        while len(rows) < size:  # rejection keeps the stream a pure function of (seed, ordinal)
            row = rng.randrange(self.lm_rows)
            if row not in self.lm_exclude:
                rows.append(row)
        out = []
        for passage in self.store.get(rows):
            words = passage.text.split()
            out.append(
                Example(f"lm:{passage.id}", "lm", passage.title or words[0], "\n" + " ".join(words[:120]))
            )
        return out


def load_training_data(config: DataConfig, out: Path, seed: int = 0, progress: bool = True) -> TrainingData:
    """Examples from a built benchmark (train splits) and pseudo labels from the index's teacher."""
    from imprag.retrieval.index import PassageIndex

    if not config.benchmark or not config.index:
        raise TrainingDataError(
            "data.benchmark and data.index are required: build them with `imprag data build --out BENCH` and "
            "`imprag index wiki-summaries --out INDEX --baselines minilm`"
        )
    bench = Benchmark.load(config.benchmark)
    index = PassageIndex.load(config.index)
    store = index.store
    if bench.manifest["corpus"]["hash"] != store.corpus_hash:
        raise TrainingDataError(
            f"{config.index} indexes another corpus than {config.benchmark} was built over; index the "
            "benchmark's corpus"
        )
    examples: dict[Kind, list[Example]] = {"retrieval": [], "instruction": []}
    label_config = PseudoLabelConfig(
        positives=config.positives, negatives=config.hard_negatives, top_m=config.teacher_top_m, seed=seed
    )
    teacher = None
    for task in config.retrieval_tasks:
        items = _checked(bench.items(task, "train")[: config.cap or None], task)
        if teacher is None:
            teacher = load_teacher(config, store)
        cache = config.label_cache or str(out / "pseudo-labels")
        labels, cached = cached_pseudo_labels(
            cache, config.teacher, store.corpus_hash, f"{task}-train", items, teacher, label_config, progress
        )
        log.info("%s: %d pseudo labels (%s)", task, len(labels), "cached" if cached else "computed")
        examples["retrieval"] += [
            _retrieval_example(item, label, store) for item, label in zip(items, labels, strict=True)
        ]
    if config.teacher_top_m:
        _check_teacher(examples["retrieval"], config)
    for task in config.instruction_tasks:
        items = _checked(bench.items(task, "train")[: config.cap or None], task)
        examples["instruction"] += [
            Example(it.id, "instruction", it.prompt, answer_text(it.answers[0]), task=task) for it in items
        ]
    return TrainingData(examples, store, config.mix, seed, lm_exclude=evaluated_rows(bench, store))


def evaluated_rows(bench: Benchmark, store: PassageStore) -> set[int]:
    """Store rows of the articles the benchmark's dev/test items are about (evidence, and an entity-linking
    sentence's own article): the benchmark keeps them out of every training task, and plain-LM batches must
    not read them either."""
    ids = {
        pid
        for task in bench.tasks
        for split in ("dev", "test")
        if bench.counts[task].get(split)
        for it in bench.items(task, split)
        for pid in it.articles
    }
    return {row for row in store.rows_of(sorted(ids)) if row is not None}


def _check_teacher(examples: list[Example], config: DataConfig) -> None:
    """The dense teacher signal needs a usable distribution for every query: refused before step 1."""
    for e in examples:
        rows, scores = e.teacher_rows, e.teacher_scores
        problem = ""
        if not rows:
            problem = "is empty"
        elif len(rows) < 2:
            problem = f"holds {len(rows)} passage (a distribution needs 2)"
        elif len(scores) != len(rows):
            problem = f"has {len(scores)} scores for {len(rows)} passages"
        elif not all(math.isfinite(x) for x in scores):
            problem = "has non-finite scores"
        if problem:
            raise TrainingDataError(
                f"the {config.teacher} teacher's top-{config.teacher_top_m} of item {e.id} {problem}; "
                f"rebuild the teacher (`imprag index ... --baselines {config.teacher} --overwrite`) and "
                "delete the label cache (data.label_cache, default RUN/pseudo-labels)"
            )


def _checked(items: list[Item], task: str) -> list[Item]:
    for item in items:
        if not item.answers or not item.answers[0].strip():
            raise TrainingDataError(
                f"{task} train item {item.id} has no answer; every training item needs one"
            )
    return items


def load_teacher(config: DataConfig, store: PassageStore) -> TextRetriever:
    """The teacher retriever `config.teacher` saved in the index `config.index` (built over `store`)."""
    from imprag.retrieval.baselines import baseline_dir, load_baseline

    index = Path(config.index)
    folder = baseline_dir(index, config.teacher)
    if not folder.exists():
        raise TrainingDataError(
            f"{index} has no {config.teacher} teacher; build it with "
            f"`imprag index wiki-summaries --out {index} --baselines {config.teacher} --overwrite`"
        )
    return load_baseline(config.teacher, folder, store)


def _retrieval_example(item: Item, label: PseudoLabel, store: PassageStore) -> Example:
    named = label.positives + label.negatives + label.top
    rows = store.rows_of(named + list(item.evidence))
    missing = [pid for pid, row in zip(named, rows, strict=False) if row is None]
    if missing:
        raise TrainingDataError(
            f"pseudo labels of item {item.id} name passage(s) {missing[:3]} that are not in the index store; "
            "delete the label cache (data.label_cache) to recompute them against this index"
        )
    n_pos, n_neg, n_top = len(label.positives), len(label.negatives), len(label.top)
    evidence = tuple(r for r in rows[n_pos + n_neg + n_top :] if r is not None)
    return Example(
        item.id, "retrieval", item.prompt, answer_text(item.answers[0]),
        tuple(rows[:n_pos]), tuple(rows[n_pos : n_pos + n_neg]), evidence,  # type: ignore[arg-type]
        tuple(rows[n_pos + n_neg : n_pos + n_neg + n_top]), tuple(label.scores),  # type: ignore[arg-type]
        item.task,
    )  # fmt: skip
