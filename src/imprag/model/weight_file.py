"""One learned tensor saved beside a model's weights as its own safetensors file (tensor "weight").

The retrieval key W_ret and the query scorer v live outside the HF model (they are not modules of it), so
`save_pretrained`, the training export and the checkpoints write each as a file of its own; loading checks
the file is there, readable and of the shape this model needs, and says what to do when not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from imprag.model.reader import InputError

__all__ = ["load_weight", "save_weight"]


def save_weight(weight: Tensor, directory: str | Path, filename: str) -> Path:
    """Write `weight` (in fp32) as `directory/filename`."""
    from safetensors.torch import save_file

    path = Path(directory) / filename
    save_file({"weight": weight.detach().float().cpu().contiguous()}, path, metadata={"format": "pt"})
    return path


def load_weight(directory: str | Path, filename: str, into: nn.Parameter, missing: str) -> None:
    """Copy the weight saved as `directory/filename` into `into`. A missing file is an InputError with
    `missing` (why it was expected and what to do); an unreadable or misshapen one names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / filename
    if not path.is_file():
        raise InputError(f"{directory} {missing}")
    try:
        weight = load_file(path).get("weight")
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path} is not a readable safetensors file ({err}); copy it again") from None
    if weight is None or weight.shape != into.shape:
        found = None if weight is None else tuple(weight.shape)
        raise InputError(f"{path} holds a weight of shape {found}, this model needs {tuple(into.shape)}")
    with torch.no_grad():
        into.copy_(weight)
