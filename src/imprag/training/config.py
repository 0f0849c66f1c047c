"""The training configuration: small typed dataclasses, one per concern, validated when built.

A recipe is a YAML file of these dataclasses (`configs/*.yaml`); `load_train_config(path, overrides)` reads
it, applies dotted command-line overrides (`optim.lr=1e-4`), and refuses unknown keys. The resolved
config is written next to every checkpoint, so a run can always be reproduced and resumed.

Marks as on the method page: [P] the paper's value, [D] our decision where the paper is silent.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from imprag.config import ConfigError

__all__ = [
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "ModelSpec",
    "ObjectiveConfig",
    "OptimConfig",
    "PositivesFrom",
    "TrainConfig",
    "load_train_config",
]

Group = Literal["bottom", "middle", "top"]
PositivesFrom = Literal["teacher", "gold", "both"]
"""Where a retrieval query's positives come from (DataConfig.positives_from)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str = "smollm2-135m"
    """Embedded default name, local folder or hub id of the model to train."""
    b: int | None = None
    """Retrieval layer (default: the model's own split)."""
    t: int | None = None
    """Last reading layer (default: the model's own split)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights dtype of the frozen base; "auto": the dtype this machine runs fast (imprag.hardware), and
    fp32 for full fine-tuning (engine.lora_r=0). LoRA adapters and fully trained weights are kept in fp32."""
    pooling: Literal["last", "mean"] | None = None
    """E_q/E_p pooling (None: the model's own; the paper: last). `benchmarks/probe_scoring.py` measures
    both; the trained model and every index built with it use this value."""
    query_pooling: Literal["last", "mean", "attention"] | None = None
    """E_q's pooling when it should differ from E_p's (EmbeddingConfig.query_pooling; None: `pooling`).
    E_p does not depend on it, so a frozen run with pooling=mean and query_pooling=last trains against
    the base model's mean-pooled index. 'attention' [D]: a learned weighted mean over the prompt's tokens
    whose scorer v trains with the adapter (starting at 0, the mean; model/query_pooling.py)."""
    center: bool = False
    """Score with (E_q - mu_q) . E_p, mu_q the mean E_q of `center_prompts` train prompts, estimated before
    the first step and again at every epoch end, saved with the model (EmbeddingConfig.query_center)."""
    center_prompts: int = 256
    """How many train prompts (retrieval and instruction, interleaved) estimate mu_q."""
    passages: Literal["shared", "frozen"] = "shared"
    """Which weights encode passages (ImpRAGConfig.passages). 'shared' [P]: the trained model's own, so E_p
    moves with every step. 'frozen' [D]: the base model's (the LoRA adapter is off for passage passes, in
    training and at inference), so the index of the base model (data.index, built with this run's pooling)
    holds every E_p exactly, stays valid for the trained adapter, and training can score each query
    against the whole corpus (objective.negatives=corpus). Needs LoRA (engine.lora_r > 0)."""
    retrieval_key: Literal["base", "trained"] = "base"
    """EmbeddingConfig.retrieval_key. 'trained' [D] (with passages=frozen, pooling=mean): training also
    learns W_ret, the key projection E_p is read through, over the base model's frozen layer-b inputs; the
    index (data.index) must be built with `imprag index --pooling mean --retrieval-key trained` and holds
    those inputs, so it still serves every adapter."""


@dataclass(frozen=True)
class DataConfig:
    benchmark: str = ""
    """A benchmark directory built by `imprag data build`."""
    index: str = ""
    """An index directory over the benchmark's corpus with the teacher baseline built
    (`imprag index wiki-summaries --out DIR --baselines minilm`); its passage store is the candidate pool."""
    retrieval_tasks: tuple[str, ...] = ("describe",)
    """Tasks trained with retrieval (their train split) [P: NQ, HotpotQA]."""
    instruction_tasks: tuple[str, ...] = ("denoise", "sentence", "reading")
    """Tasks trained without passages [P: instruction tuning + the two synthetic tasks]."""
    read_tasks: tuple[str, ...] = ()
    """Retrieval tasks the generator learns to answer from in retrieval steps, taken in turn [D]: the
    first optim.batch_size queries of each retrieval step also learn J_gen, reading what the retriever
    finds; with this set they are drawn round-robin from these tasks' items in the step's batch (then the
    rest), so a small task with the answers the reader needs (names, years: `span-qa`) is read as often as
    a large one. Empty: the batch's first queries, whatever their task (each task in proportion to its
    size)."""
    cap: int = 5000
    """At most this many train items per task [P: 5k each]; 0: all of them."""
    mix: tuple[float, float, float] = (0.5, 0.4, 0.1)
    """Share of steps that are retrieval / instruction / plain-corpus LM batches [P: ~10% LM; D: rest]."""
    teacher: Literal["minilm", "bm25"] = "minilm"
    """Teacher retriever for the warmup pseudo labels [P: Contriever; here MiniLM]."""
    positives: int = 5
    """Teacher top-n passages taken as positives [P]."""
    positives_from: PositivesFrom = "teacher"
    """What the retrieval steps' J_ret takes as each query's positives: the teacher's top data.positives
    ([P]: pseudo labels), the item's gold articles ('gold' [D]: the articles the benchmark built the
    training item from, train split only), or both (the gold first). An item without a gold article keeps
    the teacher's; gold articles leave the hard negatives. The teacher's top-m (objective.teacher_kl_weight)
    stays the dense signal either way. RA-IT reads the teacher's positives whatever this says (as it reads
    the teacher's at evaluation). The choice is the item's positives everywhere: its candidates (the
    stage-2 KL's, the sampled negatives') are these positives and its hard negatives, and
    objective.read=positives reads them; the NCE sums over positives, so one gold article weighs about a
    fifth of the teacher's five (objective.ret_weight may want raising). Stop 29 found gold labels lift
    the query where the teacher's did not (docs/results.md)."""
    hard_negatives: int = 4
    """Hard negatives per item, sampled from teacher ranks 10-50 [P: a few, < 10]."""
    random_negatives: int = 8
    """Corpus passages drawn at random per process and step, shared by all its queries as extra negatives
    [D]: in-batch negatives alone never push down a passage that is never in a batch (hubness)."""
    label_cache: str = ""
    """Where pseudo labels are cached (default: OUT/pseudo-labels)."""
    teacher_top_m: int = 0
    """Keep the teacher's top-m passages and scores per item (0: none): the dense teacher signal of
    objective.teacher_kl_weight."""


@dataclass(frozen=True)
class ObjectiveConfig:
    system: Literal["imprag", "ra-it", "retriever"] = "imprag"
    """'imprag': J_gen + lambda * J_ret, passages read by the middle layers. 'ra-it' (the paper's baseline):
    the teacher's top read_k passages pasted before the prompt, J_gen only (the retriever stays frozen).
    'retriever': the stage-1 NCE alone on retrieval batches, training layers 0..b as a separate retriever
    (the `ra-dit-llama` baseline's; its generator is an `ra-it` run)."""
    warmup_epochs: int = 3
    """Epochs of stage 1 (pseudo-label NCE) before self-distillation [P: 3 of 10]."""
    ret_weight: float = 1.0
    """lambda in J = J_gen + lambda * J_ret [D]."""
    tau_r: float = 8.0
    """Retriever temperature: s(q,p)/tau_r. 8 = sqrt(head_dim) of SmolLM2, the attention's own scale [D]."""
    tau_t: float = 1.0
    """Target temperature on log P_LM(answer | p, prompt) [D]."""
    answer_logprob: Literal["sum", "mean"] = "sum"
    """How an answer's token log-probabilities make log P_LM(answer | p) [D]."""
    read_k: int = 3
    """Passages the generator reads per retrieval example during training [D; the paper reads 10]."""
    read: Literal["retrieved", "positives"] = "retrieved"
    """What it reads: the retriever's current top read_k among the item's candidates (default; with
    negatives=corpus, among the whole corpus but the articles dev/test items are about), or its top
    positives (the teacher's, or its gold articles: data.positives_from)."""
    negatives: Literal["sampled", "corpus"] = "sampled"
    """What each query's positives are normalised against in the NCE. 'sampled' [P-like]: the step's
    candidates (positives, hard negatives, data.random_negatives, all gathered over processes), encoded
    with gradient. 'corpus' [D]: every passage of data.index (one (B, D) x (D, N) matmul, the softmax over
    the whole corpus but the query's other positives and gold articles). With model.passages=frozen the
    index holds the exact E_p; with shared they are refreshed every refresh_every steps (ANCE-style: the
    negatives stale, each query's positives re-encoded with gradient)."""
    refresh_every: int = 0
    """negatives=corpus with shared passages: re-encode the whole corpus every this many steps (> 0)."""
    teacher_kl_weight: float = 0.0
    """Weight of the dense teacher signal: KL(P_teacher || P_model) over the teacher's top
    data.teacher_top_m passages, P_teacher = softmax(teacher score / tau_teacher), P_model =
    softmax(s / tau_r) [D]. Added to the warmup NCE; 0 = off."""
    tau_teacher: float = 0.05
    """Temperature of the teacher's scores (MiniLM cosines of a top-32 span ~0.2: 0.05 gives ~e^4)."""
    distill_kl_weight: float = 1.0
    """Weight of the self-distillation KL in stage 2 [P: 1]."""
    distill_nce_weight: float = 0.0
    """Weight of the warmup NCE kept in stage 2 (0 [P]: self-distillation alone), the gate that keeps a
    small reader's self-distillation from pulling full-corpus recall down."""
    pooling_steps: int = 0
    """A final stage after the schedule [D]: this many retrieval steps that train the attention pooling's
    scorer v alone (Adam at optim.pooling_lr, constant; the warmup's J_ret; the adapter, W_ret and mu_q
    stay as trained), then the export. A probe doing this on finished adapters added 2-5 points of test
    gold-article recall in 1.5 min (docs/results.md). OUT/model-before-pooling keeps the model before
    it. A finished run may be given the stage afterwards: run the same command with this set. 0 = off."""
    pooling_positives: Literal["", "teacher", "gold", "both"] = ""
    """The stage's positives (data.positives_from's choices; '' = the schedule's, data.positives_from),
    with the warmup's J_ret; a stage towards gold articles (set here or inherited) drops the teacher KL
    (the NCE alone), as the probe that found the stage's gain trained (docs/results.md, stop 29)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    query_scorer_lr: float = 0.0
    """Peak learning rate of the query scorer v (model.query_pooling=attention) in a parameter group of its
    own, on the same warmup and cosine schedule; 0 = optim.lr. v is one vector whose scale sets how sharply
    the pooling picks tokens: a probe training v alone on a finished adapter moved it further at 1e-2 (norm
    3.05, +5 points of test gold recall) than the recipe's joint 3e-3 did (norm 1.46) (docs/results.md)."""
    pooling_lr: float = 1.0e-2
    """Learning rate of objective.pooling_steps' stage (constant, Adam)."""
    weight_decay: float = 0.0
    warmup_steps: int = 20
    """Linear learning-rate warmup, then cosine decay to 10% over the run."""
    batch_size: int = 8
    """Global batch (examples per step over all processes); must divide by the process count."""
    retrieval_batch_size: int = 0
    """Queries per retrieval step (0: batch_size). J_ret is over all of them, J_gen over the first
    batch_size: with frozen passages a query costs only layers 0..b, so a step can train many queries for
    the price of a few generator reads [D]. Must divide by the process count."""
    epochs: int = 10
    """Epochs of the schedule [P: 10]."""
    steps_per_epoch: int = 50
    """Optimizer steps per epoch (an epoch is a fixed step budget, not a pass over every item)."""
    grad_clip: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class EngineConfig:
    train_groups: tuple[Group, ...] = ("bottom", "middle", "top")
    """Layer groups that learn (others frozen). Embeddings and the LM head stay frozen."""
    lora_r: int = 8
    """LoRA rank through peft on the trained groups' attention and MLP projections; 0 = full fine-tuning."""
    lora_alpha: int = 16
    query_lora_r: int = 0
    """LoRA rank of layer b's query projection, the linear map onto E_q (0: lora_r), with the same
    scaling (alpha / r) as the rest. A linear probe training only that map on frozen layer-b inputs
    (benchmarks/probe_query_rank.py) reached 0.20 dev recall@10 at rank 8, 0.30 at 64 and 0.40 at full
    rank; in the full frozen recipe, rank 64 did not beat rank 8 by epoch 4 (docs/results.md)."""
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    autocast: bool | Literal["auto"] = "auto"
    """bf16 autocast for the forward passes: true, false, or "auto" -- on where bf16 is this machine's fast
    dtype (AMX on CPU, tensor cores on GPU; imprag.hardware), off where bf16 is emulated (~70x slower)."""
    gradient_checkpointing: bool = False
    """Recompute the layers' activations in backward instead of storing them (Backbone's flag): about one
    hidden state per layer is kept, for about one more forward pass of compute; it changes how a run
    executes, not what it computes, so a resume may switch it (benchmarks/bench_training.py)."""
    checkpoint_every: int = 50
    """Steps between checkpoints (an epoch end always writes one)."""
    keep_checkpoints: int = 2
    log_every: int = 1


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("describe", "slot-filling", "fact-check", "entity-linking")
    """Dev tasks whose gold-article recall and hubness are measured at epoch ends."""
    per_task: int = 50
    """Dev items per task."""
    pool: int = 2000
    """Random corpus passages searched beside the dev items' gold articles, with scope=pool."""
    k: int = 10
    scope: Literal["auto", "pool", "corpus"] = "auto"
    """What the epoch-end health searches: 'corpus', every passage of data.index (with frozen passages one
    matmul against the index's exact E_p; with shared ones the corpus is re-encoded, minutes per epoch on a
    CPU); 'pool', the dev items' gold articles plus `pool` random passages (cheap, but it ranked runs
    differently from the corpus and flattered them); 'auto': corpus when passages are frozen, else pool."""


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        o, opt, d, e = self.objective, self.optim, self.data, self.engine
        checks = [
            (opt.batch_size >= 1, "optim.batch_size must be >= 1"),
            (
                opt.epochs >= 1 and opt.steps_per_epoch >= 1,
                "optim.epochs and optim.steps_per_epoch must be >= 1",
            ),
            (0 <= o.warmup_epochs <= opt.epochs, "objective.warmup_epochs must lie in [0, optim.epochs]"),
            (o.tau_r > 0 and o.tau_t > 0, "objective.tau_r and objective.tau_t must be > 0"),
            (o.read_k >= 1, "objective.read_k must be >= 1"),
            (opt.lr > 0, "optim.lr must be > 0"),
            (opt.query_scorer_lr >= 0, "optim.query_scorer_lr must be >= 0 (0 = optim.lr)"),
            (
                opt.query_scorer_lr == 0 or self.model.query_pooling == "attention",
                "optim.query_scorer_lr sets the learning rate of the attention pooling's scorer: it needs "
                "model.query_pooling=attention",
            ),
            (
                o.pooling_steps >= 0 and opt.pooling_lr > 0,
                "objective.pooling_steps >= 0, optim.pooling_lr > 0",
            ),
            (
                o.pooling_steps == 0 or self.model.query_pooling == "attention",
                "objective.pooling_steps trains the attention pooling's scorer v: it needs "
                "model.query_pooling=attention",
            ),
            (
                len(d.mix) == 3 and min(d.mix) >= 0 and sum(d.mix) > 0,
                "data.mix needs 3 shares >= 0, not all 0",
            ),
            (
                set(d.read_tasks) <= set(d.retrieval_tasks),
                f"data.read_tasks {sorted(set(d.read_tasks) - set(d.retrieval_tasks))} are not in "
                "data.retrieval_tasks: the generator reads only in retrieval steps",
            ),
            (d.positives >= 1, "data.positives must be >= 1"),
            (d.hard_negatives >= 0 and d.random_negatives >= 0, "data negatives must be >= 0"),
            (e.lora_r >= 0, "engine.lora_r must be >= 0 (0 = full fine-tuning)"),
            (bool(e.train_groups), "engine.train_groups must name at least one of bottom, middle, top"),
            (e.checkpoint_every >= 1 and e.keep_checkpoints >= 1, "engine checkpoint settings must be >= 1"),
            (e.log_every >= 1, "engine.log_every must be >= 1"),
            (
                self.model.passages != "frozen" or e.lora_r > 0,
                "model.passages=frozen encodes passages with the base weights, which full fine-tuning "
                "(engine.lora_r=0) changes: use LoRA (engine.lora_r > 0) or model.passages=shared",
            ),
            (
                o.negatives != "corpus" or self.model.passages == "frozen" or o.refresh_every > 0,
                "objective.negatives=corpus with shared passages needs objective.refresh_every > 0 (how "
                "often the corpus is re-encoded); or set model.passages=frozen",
            ),
            (o.refresh_every >= 0, "objective.refresh_every must be >= 0"),
            (
                opt.retrieval_batch_size == 0 or opt.retrieval_batch_size >= opt.batch_size,
                "optim.retrieval_batch_size must be 0 (= batch_size) or >= optim.batch_size",
            ),
            (
                o.teacher_kl_weight == 0 or d.teacher_top_m >= 2,
                "objective.teacher_kl_weight > 0 needs data.teacher_top_m >= 2 (the teacher's top passages)",
            ),
            (
                o.teacher_kl_weight == 0 or o.negatives == "corpus",
                "objective.teacher_kl_weight scores the teacher's top-m passages, which only "
                "objective.negatives=corpus has as columns",
            ),
            (
                o.teacher_kl_weight == 0 or o.system != "ra-it",
                "objective.teacher_kl_weight trains a retriever; objective.system=ra-it has none",
            ),
            (
                min(o.teacher_kl_weight, o.distill_kl_weight, o.distill_nce_weight) >= 0
                and o.tau_teacher > 0,
                "objective weights must be >= 0 and objective.tau_teacher > 0",
            ),
            (e.query_lora_r >= 0, "engine.query_lora_r must be >= 0"),
            (
                e.query_lora_r == 0 or (e.lora_r > 0 and "q_proj" in e.lora_targets),
                "engine.query_lora_r sets the rank of a LoRA adapter on layer b's q_proj: it needs "
                "engine.lora_r > 0 and q_proj in engine.lora_targets",
            ),
            (d.cap >= 0 and d.teacher_top_m >= 0, "data.cap and data.teacher_top_m must be >= 0"),
            (d.positives < 10, "data.positives must be < 10: hard negatives come from teacher ranks 10-50"),
            (d.hard_negatives <= 41, "data.hard_negatives must be <= 41 (teacher ranks 10-50)"),
            (
                o.system != "ra-it" or d.teacher == "minilm",
                "objective.system=ra-it reads MiniLM's passages "
                "(the ra-it evaluation system): set data.teacher=minilm",
            ),
            (self.model.pooling in (None, "last", "mean"), "model.pooling must be last or mean"),
            (
                self.model.query_pooling in (None, "last", "mean", "attention"),
                "model.query_pooling must be last, mean or attention",
            ),
            (self.model.center_prompts >= 1, "model.center_prompts must be >= 1"),
            (self.model.retrieval_key in ("base", "trained"), "model.retrieval_key must be base or trained"),
            (
                self.model.retrieval_key != "trained"
                or (self.model.passages == "frozen" and self.model.pooling == "mean"),
                "model.retrieval_key=trained maps the base model's frozen mean-pooled layer-b inputs: it "
                "needs model.passages=frozen and model.pooling=mean",
            ),
            (
                o.system != "retriever"
                or (d.mix[1] == 0 and d.mix[2] == 0 and o.warmup_epochs == opt.epochs),
                "objective.system=retriever trains on pseudo labels only: set data.mix=[1,0,0] and "
                "objective.warmup_epochs equal to optim.epochs",
            ),
            (
                o.system != "retriever" or tuple(e.train_groups) == ("bottom",),
                "objective.system=retriever trains layers 0..b only: set engine.train_groups=[bottom]",
            ),
            (bool(self.eval.tasks), "eval.tasks must name at least one dev task"),
            (
                self.eval.per_task >= 1 and self.eval.k >= 1 and self.eval.pool >= 0,
                "eval.per_task and eval.k must be >= 1, eval.pool >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        bad = sorted(set(e.train_groups) - {"bottom", "middle", "top"})
        if bad:
            raise ConfigError(f"engine.train_groups: unknown group(s) {bad}; use bottom, middle, top")

    @property
    def total_steps(self) -> int:
        return self.optim.epochs * self.optim.steps_per_epoch

    @property
    def retrieval_batch_size(self) -> int:
        return self.optim.retrieval_batch_size or self.optim.batch_size

    @property
    def health_scope(self) -> Literal["pool", "corpus"]:
        if self.eval.scope == "auto":
            return "corpus" if self.model.passages == "frozen" else "pool"
        return self.eval.scope

    def stage(self, step: int) -> Literal["warmup", "distill"]:
        """The training stage of a (0-based) step."""
        return "warmup" if step // self.optim.steps_per_epoch < self.objective.warmup_epochs else "distill"

    def weights_dtype(self) -> str:
        """model.dtype with "auto" resolved the trainer's way: fp32 for full fine-tuning (bf16 weights lose
        AdamW's small updates), else this machine's fast dtype (left to ImpRAG.from_pretrained)."""
        return "float32" if self.model.dtype == "auto" and self.engine.lora_r == 0 else self.model.dtype

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "")


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe YAML (or the defaults) with `section.field=value` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise ConfigError(f"cannot read the training config {path}: {err.strerror}") from err
        except yaml.YAMLError as err:  # its message spans lines (a caret under the spot): one line here
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, data, objective, ...)")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value (e.g. optim.lr=1e-4)")
        node = data
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {name} is not a section")
        node[leaf] = yaml.safe_load(raw)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path or 'training config'}: {err}") from err


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, recursively; unknown keys and wrong types are errors naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'the config'}; known keys are {sorted(known)}"
        )
    values = {
        name: _coerce(hints[name], value, f"{where}.{name}".lstrip(".")) for name, value in data.items()
    }
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        errors = []
        for member in (a for a in get_args(hint) if a is not type(None)):  # the first that takes it
            try:
                return _coerce(member, value, where)
            except ConfigError as err:
                errors.append(str(err).removeprefix(f"{where} "))
        raise ConfigError(f"{where} {' or '.join(errors)}")
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where} must be one of {list(get_args(hint))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = get_args(hint)[0]
        return tuple(_coerce(inner, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is float and not math.isfinite(value):  # YAML reads .inf and .nan as floats
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value
