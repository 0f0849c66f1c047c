"""Training: losses (pure functions); the loop, targets and checkpoints arrive with the training issue."""

from imprag.training.losses import distillation_kl, generation_loss, multi_label_nce

__all__ = ["distillation_kl", "generation_loss", "multi_label_nce"]
