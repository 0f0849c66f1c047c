"""Loading an ImpRAG model (`ImpRAG.from_pretrained`): an embedded default, a local folder (a stock HF
checkpoint or one `save_pretrained` wrote), a hub id, or a LoRA adapter of `imprag train` -- merged into its
base, or kept unmerged with frozen passages so passage passes can switch it off -- and a trained retrieval
key saved beside the weights."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from imprag.config import EmbeddingConfig, ImpRAGConfig, LayerSplit, ReaderConfig
from imprag.hardware import resolve_dtype
from imprag.model import defaults
from imprag.model.backbone import architecture_of
from imprag.model.query_pooling import load_query_scorer
from imprag.model.reader import InputError
from imprag.model.retrieval_key import load_retrieval_key

if TYPE_CHECKING:
    from imprag.model.imprag import DtypeLike, ImpRAG

__all__ = ["LOADING_KWARGS", "load"]

LOADING_KWARGS = ("revision", "token", "cache_dir", "trust_remote_code", "subfolder", "local_files_only")
"""`from_pretrained` keywords that the config and tokenizer loads take too (the rest go to the model's)."""


def load(
    cls: type[ImpRAG],
    name_or_path: str | Path,
    b: int | None,
    t: int | None,
    dtype: DtypeLike,
    embedding: EmbeddingConfig | None,
    reader: ReaderConfig | None,
    passages: str | None,
    weights: bool = True,
    **hf_kwargs: Any,
) -> ImpRAG:
    """`ImpRAG.from_pretrained` (which documents the arguments)."""
    adapter = Path(name_or_path) / "adapter_config.json"
    if adapter.is_file():  # a LoRA checkpoint from `imprag train`: its base model + the adapter
        return _load_adapter(
            cls, Path(name_or_path), b, t, dtype, embedding, reader, passages, weights, **hf_kwargs
        )
    path: str | Path = name_or_path
    chosen = _as_dtype(dtype)
    default_split = None
    if str(name_or_path) in defaults.DEFAULT_MODELS:
        path, spec = defaults.resolve(str(name_or_path))
        default_split = LayerSplit(*spec.split)
    if "device_map" in hf_kwargs:
        raise InputError(
            "device_map is not supported: imprag runs the layers itself and needs the whole model on one "
            "device; load it and call .to(device) instead"
        )
    shared = {k: hf_kwargs[k] for k in LOADING_KWARGS if k in hf_kwargs}
    try:
        config = AutoConfig.from_pretrained(path, **shared)
    except (OSError, ValueError) as err:
        raise InputError(
            f"cannot load model {str(name_or_path)!r}: it is not an embedded default "
            f"({', '.join(defaults.DEFAULT_MODELS)}) and not a loadable model folder or hub id: {err}"
        ) from err
    architecture_of(config)  # refuse unsupported families before loading weights
    try:
        if weights:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=chosen, **hf_kwargs)
        else:  # the structure alone: every parameter on the meta device, no file read, no memory
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=chosen)
    except OSError as err:  # a folder with a config but no (or unreadable) weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"cannot load the weights of model {str(name_or_path)!r}: {first} (a model folder needs its "
            "config and its *.safetensors or *.bin weights, as save_pretrained writes them)"
        ) from None
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **shared)
    except (OSError, ValueError) as err:
        raise InputError(f"{name_or_path}: the model loaded but its tokenizer did not: {err}") from err
    saved = ImpRAGConfig.load(path) if Path(path).is_dir() else None
    n = model.config.num_hidden_layers
    base = saved.split if saved else default_split or LayerSplit.default_for(n)
    if b is not None and t is None and base.t < b:
        base = LayerSplit(b=b, t=max(b, LayerSplit.default_for(n).t))
    split = LayerSplit(b=base.b if b is None else b, t=base.t if t is None else t)
    loaded = cls(
        model,
        tokenizer,
        split,
        embedding or (saved.embedding if saved else None),
        reader or (saved.reader if saved else None),
        passages or (saved.passages if saved else "shared"),
    )
    if weights and loaded.retrieval_key is not None and saved and saved.embedding.retrieval_key == "trained":
        load_retrieval_key(Path(path), loaded.retrieval_key)
    if (
        weights
        and loaded.query_scorer is not None
        and saved
        and saved.embedding.query_side_pooling == "attention"
    ):
        load_query_scorer(Path(path), loaded.query_scorer)
    loaded.source = str(name_or_path)
    return loaded


def _load_adapter(
    cls: type[ImpRAG],
    directory: Path,
    b: int | None,
    t: int | None,
    dtype: DtypeLike,
    embedding: EmbeddingConfig | None,
    reader: ReaderConfig | None,
    passages: str | None,
    weights: bool,
    **hf_kwargs: Any,
) -> ImpRAG:
    try:
        from peft import PeftModel
    except ImportError as err:
        raise InputError(f"{directory} is a LoRA adapter; loading it needs peft (pip install peft)") from err
    base = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = base.get("base_model_name_or_path")
    if not base_name:
        raise InputError(f"{directory}/adapter_config.json names no base_model_name_or_path")
    saved = ImpRAGConfig.load(directory)
    passages = passages or (saved.passages if saved else "shared")
    loaded = cls.from_pretrained(
        base_name,
        b=b if b is not None else saved and saved.split.b,
        t=t if t is not None else saved and saved.split.t,
        dtype=dtype,
        embedding=embedding or (saved.embedding if saved else None),
        reader=reader or (saved.reader if saved else None),
        passages=passages,
        weights=weights,
        **hf_kwargs,
    )
    if not weights:  # the base's structure is the adapter model's (a LoRA adds no shape an estimate sees)
        loaded.source = str(directory)
        return loaded
    target = loaded.model.dtype
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` while loading: a FutureWarning on
        # every command that loads an adapter, about code that is not ours and changes nothing here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if passages == "frozen":
            # Not merged: passage passes switch the adapter off and run the base weights
            # (model/adapters.py). peft's layers stay in place of the projections, so the backbone's loop
            # runs them unchanged.
            model = PeftModel.from_pretrained(loaded.model, directory).base_model.model
        else:  # merged in fp32 and cast back, so a bf16 base is not rounded twice
            model = PeftModel.from_pretrained(loaded.model.float(), directory).merge_and_unload().to(target)
    result = cls(model.eval(), loaded.tokenizer, loaded.split, loaded.config.embedding,
                 loaded.config.reader, passages)  # fmt: skip
    if result.retrieval_key is not None and saved and saved.embedding.retrieval_key == "trained":
        load_retrieval_key(directory, result.retrieval_key)
    if result.query_scorer is not None and saved and saved.embedding.query_side_pooling == "attention":
        load_query_scorer(directory, result.query_scorer)
    result.source = str(directory)
    return result


def _as_dtype(dtype: DtypeLike) -> torch.dtype:
    """A name, a torch dtype, or "auto"/None: this CPU's fast dtype (imprag.hardware), since the weights load
    onto the CPU and the commands run there; a caller that moves the model to a GPU resolves "auto" for it
    (`hardware.auto_dtype("cuda")`, as `imprag train` does)."""
    try:
        return resolve_dtype(dtype, "cpu")
    except ValueError as err:
        raise InputError(str(err)) from None
