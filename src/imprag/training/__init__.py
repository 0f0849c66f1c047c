"""Training: losses (pure functions) and warmup targets (teacher pseudo labels); the loop and checkpoints
arrive with the rest of the training issue."""

from imprag.training.losses import distillation_kl, generation_loss, multi_label_nce
from imprag.training.targets import PseudoLabel, PseudoLabelConfig, cached_pseudo_labels, pseudo_label

__all__ = [
    "PseudoLabel",
    "PseudoLabelConfig",
    "cached_pseudo_labels",
    "distillation_kl",
    "generation_loss",
    "multi_label_nce",
    "pseudo_label",
]
