"""The training losses against values derived by hand (method page formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from imprag.training.losses import answer_log_likelihood, distillation_kl, generation_loss, multi_label_nce


def test_generation_loss_is_the_mean_over_answer_tokens_only() -> None:
    # one row, 3 positions, vocabulary 2; only position 2 is an answer token
    logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0], [math.log(3.0), 0.0]]])
    targets = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[False, False, True]])
    # p(target 0 at position 2) = 3 / (3 + 1)
    assert_close(generation_loss(logits, targets, mask), torch.tensor(-math.log(0.75)))
    # two answer tokens (positions 0 and 2): the token-level mean; p(target 1 at position 0) = 1/2
    both = torch.tensor([[True, False, True]])
    expected = (-math.log(0.5) - math.log(0.75)) / 2
    assert_close(generation_loss(logits, targets, both), torch.tensor(expected))


def test_generation_loss_refuses_batches_without_answers_and_bad_shapes() -> None:
    logits = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="no answer tokens"):
        generation_loss(logits, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must agree"):
        generation_loss(logits, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))


def test_answer_log_likelihood_sums_each_rows_tokens_and_means_all_tokens() -> None:
    # 3 answer positions over 2 rows (row 0: two tokens, row 1: one), vocabulary 2
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    targets = torch.tensor([1, 0, 1])
    rows = torch.tensor([0, 0, 1])
    lp = [math.log(0.5), math.log(0.75), math.log(0.8)]  # p = 1/2, 3/4, 4/5
    per_row, j_gen = answer_log_likelihood(logits, targets, rows, batch=2)
    assert_close(per_row, torch.tensor([lp[0] + lp[1], lp[2]]))
    assert_close(j_gen, torch.tensor(-sum(lp) / 3))
    # the mean of the rows' means is a different number: J_gen is token-level
    assert abs(-((lp[0] + lp[1]) / 2 + lp[2]) / 2 - j_gen.item()) > 1e-3
    per_row_mean, _ = answer_log_likelihood(logits, targets, rows, batch=2, reduce="mean")
    assert_close(per_row_mean, torch.tensor([(lp[0] + lp[1]) / 2, lp[2]]))
    # a row with no answer position gets 0 (it is never asked for: every example has an answer)
    assert answer_log_likelihood(logits, targets, rows, batch=3)[0][2].item() == 0.0


def test_answer_log_likelihood_is_generation_loss_on_the_selected_positions() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    mask = torch.rand(2, 5) > 0.4
    _, j_gen = answer_log_likelihood(logits[mask], targets[mask], mask.nonzero()[:, 0], batch=2)
    assert_close(j_gen, generation_loss(logits, targets, mask))
    with pytest.raises(ValueError, match="must agree on n"):
        answer_log_likelihood(logits[mask], targets[mask][:-1], mask.nonzero()[:-1, 0], batch=2)
    with pytest.raises(ValueError, match="reduce"):
        answer_log_likelihood(logits[mask], targets[mask], mask.nonzero()[:, 0], batch=2, reduce="max")


def test_multi_label_nce_normalises_each_positive_against_negatives_only() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    positives = torch.tensor([[True, True, False, False]])
    e = math.exp
    expected = -(math.log(e(2) / (e(2) + e(0) + e(-1))) + math.log(e(1) / (e(1) + e(0) + e(-1))))
    assert_close(multi_label_nce(scores, positives), torch.tensor(expected))
    # the other positive (score 1) is not in the denominator of the first: adding it would change the value
    wrong = -(math.log(e(2) / (e(2) + e(1) + e(0) + e(-1))) + math.log(e(1) / (e(2) + e(1) + e(0) + e(-1))))
    assert not math.isclose(expected, wrong)


def test_multi_label_nce_masks_temperature_and_batch_mean() -> None:
    scores = torch.tensor([[2.0, 0.0, 50.0], [0.0, 1.0, 0.0]])
    positives = torch.tensor([[True, False, False], [False, True, False]])
    candidates = torch.tensor([[True, True, False], [True, True, True]])  # 50.0 is padding in row 0
    e = math.exp
    row0 = -math.log(e(2 / 2) / (e(2 / 2) + e(0)))
    row1 = -math.log(e(1 / 2) / (e(1 / 2) + e(0) + e(0)))
    got = multi_label_nce(scores, positives, candidates, temperature=2.0)
    assert_close(got, torch.tensor((row0 + row1) / 2))


def test_multi_label_nce_without_negatives_is_zero_and_gradients_are_finite() -> None:
    scores = torch.tensor([[1.0, 3.0]], requires_grad=True)
    loss = multi_label_nce(scores, torch.tensor([[True, True]]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(scores.grad).all()
    with pytest.raises(ValueError, match="at least one positive"):
        multi_label_nce(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_distillation_kl_matches_the_definition() -> None:
    scores = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    logp = torch.tensor([[-1.0, -2.0, -4.0]], requires_grad=True)
    tau_r, tau_t = 0.5, 2.0

    def softmax(xs: list[float]) -> list[float]:
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    p_t = softmax([x / tau_t for x in (-1.0, -2.0, -4.0)])
    p_r = softmax([x / tau_r for x in (1.0, 0.0, -1.0)])
    expected = sum(t * (math.log(t) - math.log(r)) for t, r in zip(p_t, p_r, strict=True))
    loss = distillation_kl(scores, logp, tau_r=tau_r, tau_t=tau_t)
    assert_close(loss, torch.tensor(expected))
    loss.backward()
    assert scores.grad is not None and logp.grad is None  # the target is fixed: no gradient to the LM


def test_distillation_kl_ignores_masked_candidates_and_is_zero_when_distributions_agree() -> None:
    scores = torch.tensor([[0.3, -0.2, 9.0]])
    candidates = torch.tensor([[True, True, False]])
    assert_close(distillation_kl(scores, scores.clone(), candidates), torch.tensor(0.0))
    # the masked candidate's extreme values change nothing
    other = torch.tensor([[0.3, -0.2, -9.0]])
    assert_close(distillation_kl(scores, other, candidates), torch.tensor(0.0))
