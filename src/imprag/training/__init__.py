"""Training: losses (pure functions), warmup targets (teacher pseudo labels), the loop (`loop.Trainer`,
`loop.train`), its retrieval step (`retrieval`), data, checkpoints and health checks."""

from imprag.training.losses import answer_log_likelihood, distillation_kl, generation_loss, multi_label_nce
from imprag.training.targets import PseudoLabel, PseudoLabelConfig, cached_pseudo_labels, pseudo_label

__all__ = [
    "PseudoLabel",
    "PseudoLabelConfig",
    "answer_log_likelihood",
    "cached_pseudo_labels",
    "distillation_kl",
    "generation_loss",
    "multi_label_nce",
    "pseudo_label",
]
