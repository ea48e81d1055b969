"""Correctness of the preference losses (issue 3): dpo/training/losses.py by hand, dpo/training/trainer.py vs TRL.

Three kinds of test, in this order:
  * hand-worked values: every loss in LOSSES on three-element tensors, the expected numbers worked out
    in the docstring and written with `math` (never by calling the loss under test or TRL); gradients
    checked with autograd against the closed form where the paper gives one;
  * the table: what `LossSpec` reads from a loss's signature, the paper in every docstring, and that
    `compute_loss` passes a loss only the tensors and hyperparameters it takes;
  * parity: for every loss TRL 1.16 also implements, `dpo.training.trainer.Trainer` gives the same loss value, gradient
    and metrics as plain `trl.DPOTrainer` on the same real batch of the tiny model from tests/conftest.py.

Shorthand in the docstrings: l(z) = -log sigmoid(z) = log(1 + e^-z), s(z) = sigmoid(z) = 1 / (1 + e^-z).
Most cases use z in {0, ln 3, -ln 3}, where s = 1/2, 3/4, 1/4 and
    l(0) = ln 2 = 0.693147,  l(ln 3) = ln(4/3) = 0.287682,  l(-ln 3) = ln 4 = 1.386294.
Run: python -m pytest tests/training/test_losses.py
"""

from __future__ import annotations

import inspect
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dpo.training import losses
from dpo.training.losses import LOSSES, LossSpec, cdpo_optimal_margin, compute_loss
from tests.conftest import ARITHMETIC, read_jsonl

LN2, LN3 = math.log(2), math.log(3)
L0, L_LN3, L_MINUS_LN3 = LN2, math.log(4 / 3), math.log(4)  # l(0), l(ln 3), l(-ln 3)

# The losses whose values are worked out by hand below. A loss added to LOSSES without its own hand-worked
# test fails test_every_loss_has_a_hand_worked_test.
HAND_WORKED = {
    "sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm", "dpop", "sft",
    "cal_dpo", "dpo_shift", "chi_po", "dr_dpo", "simpo", "orpo", "odpo",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(*values: float, grad: bool = False) -> torch.Tensor:
    """A float64 tensor, so that hand-worked values are checked to ~1e-7."""
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def grads(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """d sum(loss) / d tensor: each example's loss depends only on its own entries, so this is per example."""
    return torch.autograd.grad(loss.sum(), tensors)


# ---------------------------------------------------------------- hand-worked values, closed-form gradients


def test_sigmoid_is_dpo():
    """DPO, Eq. 7: l(beta * Delta). beta = 1/2, Delta = [0, 2 ln 3, -2 ln 3] -> z = [0, ln 3, -ln 3].

    Scores chosen = [1, 1 + 2 ln 3, -2], rejected = [1, 1, -2 + 2 ln 3] (only the difference matters).
    Expected l(z) = [ln 2, ln(4/3), ln 4] = [0.693147, 0.287682, 1.386294].
    """
    chosen, rejected = t(1, 1 + 2 * LN3, -2), t(1, 1, -2 + 2 * LN3)
    assert_close(losses.sigmoid(chosen, rejected, beta=0.5), t(L0, L_LN3, L_MINUS_LN3))


def test_sigmoid_gradient_matches_closed_form():
    """dL/dDelta = -beta * s(-beta * Delta) (DPO paper, Sec. 4, "What does the DPO update do?").

    beta = 1/2, z = beta * Delta = [0, ln 3, -ln 3]: s(-z) = [1/2, 1/4, 3/4], so
    dL/d chosen = [-1/4, -1/8, -3/8] and dL/d rejected = [1/4, 1/8, 3/8].
    """
    chosen, rejected = t(0, 2 * LN3, 0, grad=True), t(0, 0, 2 * LN3, grad=True)
    d_chosen, d_rejected = grads(losses.sigmoid(chosen, rejected, beta=0.5), chosen, rejected)
    assert_close(d_chosen, t(-1 / 4, -1 / 8, -3 / 8))
    assert_close(d_rejected, t(1 / 4, 1 / 8, 3 / 8))


def test_sigmoid_with_label_smoothing_is_cdpo():
    """cDPO: (1 - eps) l(z) + eps l(-z), with eps = 1/4, beta = 1 and z = Delta = [0, ln 3, -ln 3].

    z = 0:      3/4 ln 2 + 1/4 ln 2                         = ln 2     = 0.693147
    z = ln 3:   3/4 ln(4/3) + 1/4 ln 4 = 0.215762 + 0.346574 = 0.562335
    z = -ln 3:  3/4 ln 4 + 1/4 ln(4/3) = 1.039721 + 0.071921 = 1.111641
    """
    chosen, rejected = t(0, LN3, 0), t(0, 0, LN3)
    expected = t(L0, 0.75 * L_LN3 + 0.25 * L_MINUS_LN3, 0.75 * L_MINUS_LN3 + 0.25 * L_LN3)
    assert_close(losses.sigmoid(chosen, rejected, beta=1.0, label_smoothing=0.25), expected)
    assert_close(expected, t(0.693147, 0.562335, 1.111641), atol=1e-6, rtol=0)  # the decimals above


def test_cdpo_gradient_vanishes_at_its_optimal_margin():
    """cDPO's dL/dz = -(1 - eps) s(-z) + eps s(z) is zero where e^z = (1 - eps) / eps (Mitchell 2023).

    So beta * Delta* = log((1 - eps) / eps): ln 3 for eps = 1/4, ln 9 for eps = 1/10, ln(3/2) for eps = 2/5.
    Below it the gradient pushes the margin up (dL/dDelta < 0), above it back down (dL/dDelta > 0); with
    beta = 2, Delta = z / 2. At z = 0 for eps = 1/4: dL/dDelta = beta * (-3/4 * 1/2 + 1/4 * 1/2) = -1/2.
    """
    assert cdpo_optimal_margin(0.25) == pytest.approx(LN3)
    assert cdpo_optimal_margin(0.1) == pytest.approx(math.log(9))
    assert cdpo_optimal_margin(0.4) == pytest.approx(math.log(1.5))
    beta = 2.0
    for eps in (0.25, 0.1, 0.4):
        z_star = cdpo_optimal_margin(eps)
        chosen = t(z_star / beta - 0.5, z_star / beta, z_star / beta + 0.5, grad=True)
        (d_chosen,) = grads(losses.sigmoid(chosen, t(0, 0, 0), beta=beta, label_smoothing=eps), chosen)
        assert d_chosen[0] < 0 and abs(d_chosen[1]) < 1e-12 and d_chosen[2] > 0, (eps, d_chosen)
    chosen = t(0, grad=True)
    (d_chosen,) = grads(losses.sigmoid(chosen, t(0), beta=beta, label_smoothing=0.25), chosen)
    assert_close(d_chosen, t(-0.5))


def test_robust():
    """rDPO: [(1 - eps) l(z) - eps l(-z)] / (1 - 2 eps). eps = 1/4: = 3/2 l(z) - 1/2 l(-z). beta = 1.

    z = 0:      3/2 ln 2 - 1/2 ln 2                       = ln 2      =  0.693147
    z = ln 3:   3/2 ln(4/3) - 1/2 ln 4 = 0.431523 - 0.693147           = -0.261624
    z = -ln 3:  3/2 ln 4 - 1/2 ln(4/3) = 2.079442 - 0.143841           =  1.935601
    """
    expected = t(L0, 1.5 * L_LN3 - 0.5 * L_MINUS_LN3, 1.5 * L_MINUS_LN3 - 0.5 * L_LN3)
    assert_close(losses.robust(t(0, LN3, 0), t(0, 0, LN3), beta=1.0, label_smoothing=0.25), expected)
    assert_close(expected, t(0.693147, -0.261624, 1.935601), atol=1e-6, rtol=0)
    # eps = 0 is plain DPO
    assert_close(losses.robust(t(0, LN3, 0), t(0, 0, LN3), beta=1.0), t(L0, L_LN3, L_MINUS_LN3))


def test_hinge():
    """SLiC hinge: max(0, 1 - beta * Delta). beta = 1/2, Delta = [-2, 1, 4]: 1 - [-1, 1/2, 2] = [2, 1/2, -1],
    clipped at 0: [2, 1/2, 0].

    Gradient wrt chosen: -beta where the hinge is active, 0 past it: [-1/2, -1/2, 0].
    """
    chosen = t(-1, 3, 4, grad=True)
    loss = losses.hinge(chosen, t(1, 2, 0), beta=0.5)
    assert_close(loss, t(2, 0.5, 0))
    assert_close(grads(loss, chosen)[0], t(-0.5, -0.5, 0))


def test_ipo_is_length_normalised():
    """IPO, Eq. 17, on per-token scores: (Delta_avg - 1/(2 beta))^2 with beta = 1/2, so the target is 1.

    chosen scores [2, 6, 0] over lengths [2, 3, 1] -> [1, 2, 0]; rejected [-2, 0, 3] over [1, 4, 3] -> [-2, 0, 1].
    Delta_avg = [3, 2, -1]; minus 1 = [2, 1, -2]; squared = [4, 1, 4].
    """
    loss = losses.ipo(t(2, 6, 0), t(-2, 0, 3), t(2, 3, 1), t(1, 4, 3), beta=0.5)
    assert_close(loss, t(4, 1, 4))


def test_ipo_gradient_and_minimum_at_half_inverse_beta():
    """dL/d chosen_score = 2 (Delta_avg - 1/(2 beta)) / |y_w|; zero exactly at Delta_avg = 1/(2 beta).

    Same numbers as above: 2 * [2, 1, -2] / [2, 3, 1] = [2, 2/3, -4]; rejected: -2 * [2, 1, -2] / [1, 4, 3].
    With beta = 1/4 the target is 2: chosen [4, 2, 6] / [2, 1, 3] = [2, 2, 2] against rejected 0 -> loss 0, gradient 0.
    """
    chosen, rejected = t(2, 6, 0, grad=True), t(-2, 0, 3, grad=True)
    d_chosen, d_rejected = grads(losses.ipo(chosen, rejected, t(2, 3, 1), t(1, 4, 3), beta=0.5), chosen, rejected)
    assert_close(d_chosen, t(2, 2 / 3, -4))
    assert_close(d_rejected, t(-4, -1 / 2, 4 / 3))
    chosen = t(4, 2, 6, grad=True)
    loss = losses.ipo(chosen, t(0, 0, 0), t(2, 1, 3), t(1, 1, 1), beta=0.25)
    assert_close(loss, t(0, 0, 0))
    assert_close(grads(loss, chosen)[0], t(0, 0, 0))


def test_exo_pair_is_kl_to_the_smoothed_target():
    """EXO-pref: KL((s(z), s(-z)) || (1 - eps, eps)), eps = 1/4, beta = 1, z = [0, ln 3, -ln 3].

    z = 0:      1/2 (ln 1/2 - ln 3/4) + 1/2 (ln 1/2 - ln 1/4) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.143841
    z = ln 3:   p_theta = (3/4, 1/4) = p_target                                            -> 0
    z = -ln 3:  1/4 (ln 1/4 - ln 3/4) + 3/4 (ln 3/4 - ln 1/4) = -1/4 ln 3 + 3/4 ln 3 = 1/2 ln 3 = 0.549306
    """
    loss = losses.exo_pair(t(0, LN3, 0), t(0, 0, LN3), beta=1.0, label_smoothing=0.25)
    assert_close(loss, t(0.5 * math.log(4 / 3), 0, 0.5 * LN3))


def test_nca_pair():
    """NCA: l(r_w) + 1/2 l(-r_w) + 1/2 l(-r_l), r = beta * logratio. beta = 2; logratios halved so that
    r_w = [0, ln 3, -ln 3], r_l = [0, -ln 3, ln 3].

    row 1: ln 2 + 1/2 ln 2 + 1/2 ln 2                       = 2 ln 2                = 1.386294
    row 2: l(ln 3) + 1/2 l(-ln 3) + 1/2 l(ln 3)              = 3/2 ln(4/3) + ln 2    = 1.124670
    row 3: l(-ln 3) + 1/2 l(ln 3) + 1/2 l(-ln 3)             = 3/2 ln 4 + 1/2 ln(4/3) = 2.223283
    """
    loss = losses.nca_pair(t(0, LN3 / 2, -LN3 / 2), t(0, -LN3 / 2, LN3 / 2), beta=2.0)
    assert_close(loss, t(2 * LN2, 1.5 * L_LN3 + LN2, 1.5 * L_MINUS_LN3 + 0.5 * L_LN3))
    assert_close(loss, t(1.386294, 1.124670, 2.223283), atol=1e-6, rtol=0)


def test_bco_pair():
    """BCO (pairwise, no shift): l(r_w) + l(-r_l), beta = 1, r_w = [0, ln 3, -ln 3], r_l = [0, -ln 3, ln 3].

    row 1: 2 ln 2 = 1.386294;  row 2: 2 l(ln 3) = 2 ln(4/3) = 0.575364;  row 3: 2 l(-ln 3) = 2 ln 4 = 2.772589.
    """
    loss = losses.bco_pair(t(0, LN3, -LN3), t(0, -LN3, LN3), beta=1.0)
    assert_close(loss, t(2 * LN2, 2 * L_LN3, 2 * L_MINUS_LN3))


def test_sppo_hard_and_its_gradient():
    """SPPO (hard): (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2; beta = 1/2, so targets r_w = 1, r_l = -1.

    r_w = [1, 3, 0], r_l = [-1, 1, -3]: [0 + 0, 4 + 4, 1 + 4] = [0, 8, 5].
    Gradient: 2 (r_w - 1) = [0, 4, -2]; 2 (r_l + 1) = [0, 4, -4]; zero at the targets (row 1).
    """
    chosen, rejected = t(1, 3, 0, grad=True), t(-1, 1, -3, grad=True)
    loss = losses.sppo_hard(chosen, rejected, beta=0.5)
    assert_close(loss, t(0, 8, 5))
    d_chosen, d_rejected = grads(loss, chosen, rejected)
    assert_close(d_chosen, t(0, 4, -2))
    assert_close(d_rejected, t(0, 4, -4))


def test_aot_sorts_policy_and_reference_margins_separately():
    """AOT (paired): delta = sort(logp_w - logp_l) - sort(ref_w - ref_l), then l(beta * delta); beta = ln 3.

    policy: chosen [0, -2, -1] - rejected [-3, -2, -3] = [3, 0, 2] -> sorted [0, 2, 3]
    reference: [-1, 0, -2] - [-2, -4, -2] = [1, 4, 0]             -> sorted [0, 1, 4]
    delta = [0, 1, -1], z = [0, ln 3, -ln 3] -> [ln 2, ln(4/3), ln 4] (in sorted order). Unsorted, delta would be
    [2, -4, 2]: the sort is the point of the loss.
    """
    args = t(0, -2, -1), t(-3, -2, -3), t(-1, 0, -2), t(-2, -4, -2)
    assert_close(losses.aot(*args, beta=LN3), t(L0, L_LN3, L_MINUS_LN3))


def test_aot_unpaired_with_label_smoothing():
    """AOT (unpaired): delta = sort(r_w) - sort(r_l), then cDPO's loss; beta = ln 3, eps = 1/4.

    r_w = [3, 0, 2] -> [0, 2, 3]; r_l = [1, 4, 0] -> [0, 1, 4]; delta = [0, 1, -1]; z = [0, ln 3, -ln 3].
    As in the cDPO test: [ln 2, 3/4 ln(4/3) + 1/4 ln 4, 3/4 ln 4 + 1/4 ln(4/3)] = [0.693147, 0.562335, 1.111641].
    """
    loss = losses.aot_unpaired(t(3, 0, 2), t(1, 4, 0), beta=LN3, label_smoothing=0.25)
    assert_close(loss, t(L0, 0.75 * L_LN3 + 0.25 * L_MINUS_LN3, 0.75 * L_MINUS_LN3 + 0.25 * L_LN3))


def test_apo_zero():
    """APO-zero: 1 - s(beta r_w) + s(beta r_l). beta = 1/2, beta r_w = [0, ln 3, -ln 3], beta r_l = [ln 3, -ln 3, 0].

    [1 - 1/2 + 3/4, 1 - 3/4 + 1/4, 1 - 1/4 + 1/2] = [5/4, 1/2, 5/4].
    Gradient wrt r_w: -beta s(z)(1 - s(z)) = -1/2 * [1/4, 3/16, 3/16] = [-1/8, -3/32, -3/32].
    """
    chosen = t(0, 2 * LN3, -2 * LN3, grad=True)
    loss = losses.apo_zero(chosen, t(2 * LN3, -2 * LN3, 0), beta=0.5)
    assert_close(loss, t(1.25, 0.5, 1.25))
    assert_close(grads(loss, chosen)[0], t(-1 / 8, -3 / 32, -3 / 32))


def test_apo_down():
    """APO-down: s(beta r_w) + 1 - s(beta (r_w - r_l)). beta = 1, r_w = [0, ln 3, -ln 3], r_l = [-ln 3, 0, 0].

    r_w - r_l = [ln 3, ln 3, -ln 3]: [1/2 + 1 - 3/4, 3/4 + 1 - 3/4, 1/4 + 1 - 1/4] = [3/4, 1, 1].
    """
    loss = losses.apo_down(t(0, LN3, -LN3), t(-LN3, 0, 0), beta=1.0)
    assert_close(loss, t(0.75, 1, 1))


def test_discopop():
    """DiscoPOP: m = s(z / tau), (1 - m) l(z) + m e^-z. beta = 1, tau = 1, z = [0, ln 3, -ln 3]: m = [1/2, 3/4, 1/4].

    z = 0:      1/2 ln 2 + 1/2 * 1          = 0.346574 + 0.5  = 0.846574
    z = ln 3:   1/4 ln(4/3) + 3/4 * 1/3      = 0.071921 + 0.25 = 0.321921
    z = -ln 3:  3/4 ln 4 + 1/4 * 3           = 1.039721 + 0.75 = 1.789721
    With the default tau = 0.05 at z = 0, m is still 1/2 (0.846574); at z = ln 3, m = s(21.97) = 1 - 2.9e-10, so
    the loss is e^-z = 1/3 to ~1e-10.
    """
    chosen, rejected = t(0, LN3, 0), t(0, 0, LN3)
    loss = losses.discopop(chosen, rejected, beta=1.0, discopop_tau=1.0)
    assert_close(loss, t(0.5 * L0 + 0.5, 0.25 * L_LN3 + 0.25, 0.75 * L_MINUS_LN3 + 0.75))
    assert_close(loss, t(0.846574, 0.321921, 1.789721), atol=1e-6, rtol=0)
    assert_close(losses.discopop(t(0, LN3), t(0, 0), beta=1.0), t(0.5 * L0 + 0.5, 1 / 3))


def test_discopop_stays_finite_far_below_zero():
    """At z = beta * Delta = -100 (float32: e^100 overflows, m = s(-2000) underflows to 0) the modulated term m e^-z
    is e^(log s(z / tau) - z) ~ e^(-2000 + 100) = 0 and the loss is the logistic term l(-100) = 100 (to 1e-43), with
    gradient -1 in Delta. The old product 0 * inf gave NaN, and a NaN loss stops the run."""
    f32 = torch.float32  # where the old form overflowed (float64 reaches e^709)
    chosen = torch.tensor([0.0, 0.0], dtype=f32, requires_grad=True)
    loss = losses.discopop(chosen, torch.tensor([90.0, 100.0], dtype=f32), beta=1.0)
    assert_close(loss, torch.tensor([90.0, 100.0], dtype=f32))
    loss.sum().backward()
    assert_close(chosen.grad, torch.tensor([-1.0, -1.0], dtype=f32))


def test_forward_kl_link_caps_its_exponent():
    """f'(t) = 1 - e^-u: at u = -100 e^100 overflows float32 (the score -inf, the loss NaN); capped at e^80, as the
    alpha link is, the score is 1 - e^80 and the sigmoid loss of chosen u = 0 against it is l(beta * e^80) = 0."""
    f32 = torch.float32  # where e^100 overflows (float64 reaches e^709)
    scores = losses.forward_kl_scores(torch.tensor([0.0, -1.0, -100.0], dtype=f32))
    assert_close(scores, torch.tensor([0.0, 1 - math.e, 1 - math.exp(80)], dtype=f32))
    assert torch.isfinite(scores).all()
    rejected = losses.forward_kl_scores(torch.tensor([-100.0, -100.0], dtype=f32))
    loss = losses.sigmoid(losses.forward_kl_scores(torch.tensor([0.0, -1.0], dtype=f32)), rejected, beta=0.1)
    assert torch.isfinite(loss).all() and loss.max() < 1e-30


def test_sigmoid_norm():
    """Length-normalised DPO: l(beta * (s_w / |y_w| - s_l / |y_l|)), beta = 1/2.

    chosen [2, 6 ln 3, 0] / [2, 3, 1] = [1, 2 ln 3, 0]; rejected [4, 0, 4 ln 3] / [4, 2, 2] = [1, 0, 2 ln 3].
    Delta = [0, 2 ln 3, -2 ln 3], z = [0, ln 3, -ln 3] -> [ln 2, ln(4/3), ln 4].
    """
    loss = losses.sigmoid_norm(t(2, 6 * LN3, 0), t(4, 0, 4 * LN3), t(2, 3, 1), t(4, 2, 2), beta=0.5)
    assert_close(loss, t(L0, L_LN3, L_MINUS_LN3))


def test_dpop_penalises_only_a_falling_chosen_likelihood():
    """DPO-Positive: l(beta (r_w - r_l - lambda max(0, -r_w))). beta = 1, lambda = 2.

    r_w = [0, ln 3, -ln 3], r_l = [0, 0, -4 ln 3].
    rows 1, 2 (r_w >= 0): no penalty, as DPO: l(0) = ln 2, l(ln 3) = ln(4/3).
    row 3: -ln 3 + 4 ln 3 - 2 ln 3 = ln 3 -> ln(4/3) = 0.287682 (plain DPO: l(3 ln 3) = ln(28/27) = 0.036368).
    """
    chosen, rejected = t(0, LN3, -LN3), t(0, 0, -4 * LN3)
    assert_close(losses.dpop(chosen, rejected, beta=1.0, dpop_lambda=2.0), t(L0, L_LN3, L_LN3))
    assert_close(losses.sigmoid(chosen, rejected, beta=1.0)[2], t(math.log(28 / 27))[0])
    assert_close(losses.dpop(chosen, rejected, beta=1.0, dpop_lambda=0.0), losses.sigmoid(chosen, rejected, beta=1.0))


def test_dpop_gradient_has_the_lambda_term_only_below_the_reference():
    """dL/dr_w = -beta (1 + lambda) s(-z) when r_w < 0 (z = beta ((1 + lambda) r_w - r_l)); when r_w > 0 it is
    DPO's -beta s(-beta (r_w - r_l)). The rejected side always gets DPO's +beta s(-z).

    beta = 1, lambda = 2, r_w = [ln 3, -ln 3], r_l = [0, -4 ln 3]: z = [ln 3, ln 3], s(-z) = 1/4.
    dL/dr_w = [-1/4 (as DPO), -3 * 1/4 = -3/4]; dL/dr_l = [1/4, 1/4].
    """
    chosen, rejected = t(LN3, -LN3, grad=True), t(0, -4 * LN3, grad=True)
    d_chosen, d_rejected = grads(losses.dpop(chosen, rejected, beta=1.0, dpop_lambda=2.0), chosen, rejected)
    assert_close(d_chosen, t(-1 / 4, -3 / 4))
    assert_close(d_rejected, t(1 / 4, 1 / 4))
    dpo_chosen = t(LN3, grad=True)
    (d_dpo,) = grads(losses.sigmoid(dpo_chosen, t(0), beta=1.0), dpo_chosen)
    assert_close(d_chosen[:1], d_dpo)


def test_sft_is_the_token_averaged_nll_of_the_chosen_answers():
    """NLL: per example -logp_w * B / sum|y_w|, so that the batch mean is -sum(logp_w) / sum(|y_w|).

    logp_w = [-2, -4, -6], |y_w| = [1, 2, 3], B = 3: sum|y_w| = 6, per example [2, 4, 6] * 3 / 6 = [1, 2, 3];
    mean = 2 = 12 / 6 (the NLL per token). beta is unused: any beta gives the same value.
    Gradient wrt logp_w: -B / sum|y_w| = -1/2 each.
    """
    chosen = t(-2, -4, -6, grad=True)
    loss = losses.sft(chosen, t(1, 2, 3), beta=0.1)
    assert_close(loss, t(1, 2, 3))
    assert_close(loss.mean(), t(2)[0])
    assert_close(losses.sft(chosen, t(1, 2, 3), beta=10.0), loss)
    assert_close(grads(loss, chosen)[0], t(-0.5, -0.5, -0.5))


# ---------------------------------------------------------------- the losses of issue 16 (overfitting-resistant)


def test_cal_dpo_and_its_gradient():
    """Cal-DPO: l(r_w - r_l) + 1/2 [(r_w - c)^2 + (r_l + c)^2], c = 1/(2 beta) = 1 for beta = 1/2. No beta in l.

    row 1: r_w = 1, r_l = 1:           l(0)  + 1/2 (0 + 4)           = ln 2 + 2           = 2.693147
    row 2: r_w = 1, r_l = 1 - ln 3:    l(ln 3) + 1/2 (2 - ln 3)^2     = ln(4/3) + 0.406250 = 0.693932
    row 3: r_w = -1, r_l = ln 3 - 1:   l(-ln 3) + 1/2 (4 + ln^2 3)     = ln 4 + 2.603474    = 3.989768
    Gradient (differentiating): dL/dr_w = -s(-Delta) + (r_w - c), dL/dr_l = s(-Delta) + (r_l + c), s(-Delta) =
    [1/2, 1/4, 3/4]: dL/dr_w = [-1/2, -1/4, -11/4], dL/dr_l = [5/2, 1/4 + 2 - ln 3, 3/4 + ln 3].
    """
    chosen, rejected = t(1, 1, -1, grad=True), t(1, 1 - LN3, LN3 - 1, grad=True)
    loss = losses.cal_dpo(chosen, rejected, beta=0.5)
    expected = t(L0 + 2, L_LN3 + 0.5 * (2 - LN3) ** 2, L_MINUS_LN3 + 0.5 * (4 + LN3**2))
    assert_close(loss, expected)
    assert_close(expected, t(2.693147, 0.693932, 3.989768), atol=1e-6, rtol=0)
    d_chosen, d_rejected = grads(loss, chosen, rejected)
    assert_close(d_chosen, t(-0.5, -0.25, -2.75))
    assert_close(d_rejected, t(2.5, 0.25 + 2 - LN3, 0.75 + LN3))


def test_cal_dpo_equals_the_authors_formula():
    """tengxiao1/Cal-DPO (scripts/dpo_trainer.py, loss_type "Cal-DPO"): the batch loss is
    mean(-logsigmoid(r_w - r_l)) + 0.5 * (mse(r_w, 1/(2 beta)) + mse(r_l, -1/(2 beta))), mse averaged over the batch;
    our per-example values average to it."""
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = (
        torch.randn(8, generator=generator, dtype=torch.float64) * 3,
        torch.randn(8, generator=generator, dtype=torch.float64) * 3,
    )
    beta = 0.1
    target = torch.full_like(chosen, 1 / (2 * beta))
    authors = (-F.logsigmoid(chosen - rejected)).mean() + 0.5 * (
        F.mse_loss(chosen, target) + F.mse_loss(rejected, -target)
    )
    assert_close(losses.cal_dpo(chosen, rejected, beta=beta).mean(), authors)


def test_dpo_shift_fixed_and_linear_factor_and_gradient():
    """DPO-Shift: l(beta (r_w - f r_l)). beta = 1, f = 1/2: r_w = [0, ln 3, 0], r_l = [0, 0, 2 ln 3] ->
    z = [0, ln 3, -ln 3] -> [ln 2, ln(4/3), ln 4]. f = 1 is DPO.

    Linear factor from 1/2 (first step) to 1 (last): at progress 1/2, f = 3/4, so r_l = 4/3 ln 3 gives z = -ln 3.
    Gradient: dL/dr_w = -beta s(-z) = [-1/2, -1/4, -3/4]; dL/dr_l = beta f s(-z) = [1/4, 1/8, 3/8] (f = 1/2).
    """
    chosen, rejected = t(0, LN3, 0, grad=True), t(0, 0, 2 * LN3, grad=True)
    half = torch.tensor(0.5, dtype=torch.float64)
    loss = losses.dpo_shift(chosen, rejected, half, beta=1.0, shift_lambda=0.5)
    assert_close(loss, t(L0, L_LN3, L_MINUS_LN3))
    d_chosen, d_rejected = grads(loss, chosen, rejected)
    assert_close(d_chosen, t(-0.5, -0.25, -0.75))
    assert_close(d_rejected, t(0.25, 0.125, 0.375))
    linear = losses.dpo_shift(t(0), t(4 / 3 * LN3), half, beta=1.0, shift_lambda=0.5, shift_lambda_end=1.0)
    assert_close(linear, t(L_MINUS_LN3))
    assert_close(
        losses.dpo_shift(chosen, rejected, half, beta=1.0, shift_lambda=1.0), losses.sigmoid(chosen, rejected, beta=1.0)
    )


def test_dpo_shift_with_label_smoothing_is_cdpo_on_the_shifted_margin():
    """eps = 1/4, f = 1/2, the z of the test above, [0, ln 3, -ln 3]: (1 - eps) l(z) + eps l(-z) =
    [ln 2, 3/4 ln(4/3) + 1/4 ln 4, 3/4 ln 4 + 1/4 ln(4/3)]. At f = 1 it is sigmoid with the same smoothing (cDPO),
    which is what lets the autopilot turn a (c)DPO run into DPO-Shift mid-run."""
    chosen, rejected = t(0, LN3, 0), t(0, 0, 2 * LN3)
    half = torch.tensor(0.5, dtype=torch.float64)
    smoothed = losses.dpo_shift(chosen, rejected, half, beta=1.0, shift_lambda=0.5, label_smoothing=0.25)
    assert_close(smoothed, t(L0, 0.75 * L_LN3 + 0.25 * L_MINUS_LN3, 0.75 * L_MINUS_LN3 + 0.25 * L_LN3))
    assert_close(
        losses.dpo_shift(chosen, rejected, half, beta=1.0, shift_lambda=1.0, label_smoothing=0.25),
        losses.sigmoid(chosen, rejected, beta=1.0, label_smoothing=0.25),
    )


def test_dpo_shift_equals_the_authors_formula():
    """Meaquadddd/DPO-Shift (scripts/dposhift_trainer.py): logits = (logp_w - lambda logp_l) - (ref_w - lambda ref_l),
    loss -logsigmoid(beta logits); "increase_linear": lambda = min + (max - min) * step / max_steps."""
    generator = torch.Generator().manual_seed(1)
    logps = [torch.randn(6, generator=generator, dtype=torch.float64) * 5 - 20 for _ in range(4)]
    policy_w, policy_l, ref_w, ref_l = logps
    beta, low, high, step, max_steps = 0.1, 0.5, 0.95, 30, 120
    lam = low + (high - low) * step / max_steps
    authors = -F.logsigmoid(beta * ((policy_w - lam * policy_l) - (ref_w - lam * ref_l)))
    progress = torch.tensor(step / max_steps, dtype=torch.float64)
    ours = losses.dpo_shift(
        policy_w - ref_w, policy_l - ref_l, progress, beta=beta, shift_lambda=low, shift_lambda_end=high
    )
    assert_close(ours, authors)


def test_chi_po_link_clip_and_gradient():
    """chi-PO: l(clip_C(beta (phi(z_w) - phi(z_l)))), phi(z) = z + log z, z = e^r. beta = 1, C = 5.

    row 1: r_w = r_l = 0: phi = 1 each, difference 0                       -> l(0) = ln 2
    row 2: r_w = ln 2, r_l = 0: (2 + ln 2) - 1 = 1 + ln 2                  -> ln(1 + e^-(1 + ln 2)) = ln(1 + 1/(2e))
    row 3: r_w = 0, r_l = ln 8: 1 - (8 + ln 8) = -9.08, clipped to -5      -> l(-5) = ln(1 + e^5)
    Gradient: dL/dr_w = -beta s(-beta Delta) (e^r_w + 1) inside the clip, 0 outside:
    row 1: -1/2 * 2 = -1; row 2: -3 / (1 + 2e); row 3: 0 (clipped).
    """
    chosen, rejected = t(0, math.log(2), 0, grad=True), t(0, 0, math.log(8), grad=True)
    loss = losses.chi_po(chosen, rejected, beta=1.0, chi_clip=5.0)
    assert_close(loss, t(L0, math.log(1 + 1 / (2 * math.e)), math.log(1 + math.exp(5))))
    (d_chosen,) = grads(loss, chosen)
    assert_close(d_chosen, t(-1, -3 / (1 + 2 * math.e), 0))


def test_dr_dpo_soft_minimum_and_its_pair_weights():
    """Dr. DPO: -beta' log mean exp(-l_i / beta'). beta = beta' = 1, z = Delta = [0, ln 3, -ln 3]:
    exp(-l_i) = s(z_i) = [1/2, 3/4, 1/4], mean 1/2 -> ln 2 (every entry: one value for the batch).

    dL/dl_i = softmax(-l / beta')_i = [1/3, 1/2, 1/6] (DPO's mean: 1/3 each): the pair the model finds least
    plausible (row 3) counts half, row 2 more. Gradient wrt chosen score: weight * -s(-z) =
    [-1/6, -1/8, -1/8], where DPO's mean gives [-1/6, -1/12, -1/4]. As beta' grows it tends to DPO's mean.
    """
    chosen = t(0, LN3, 0, grad=True)
    loss = losses.dr_dpo(chosen, t(0, 0, LN3), beta=1.0, dr_dpo_beta_prime=1.0)
    assert_close(loss, t(L0, L0, L0))
    (d_chosen,) = torch.autograd.grad(loss.mean(), chosen)
    assert_close(d_chosen, t(-1 / 6, -1 / 8, -1 / 8))
    per_pair = losses.sigmoid(chosen, t(0, 0, LN3), beta=1.0)
    (weights,) = torch.autograd.grad(losses.dr_dpo(chosen, t(0, 0, LN3), beta=1.0).mean(), chosen)
    assert_close(weights / -torch.sigmoid(-t(0, LN3, -LN3)), t(1 / 3, 1 / 2, 1 / 6))
    wide = losses.dr_dpo(chosen, t(0, 0, LN3), beta=1.0, dr_dpo_beta_prime=1e4)
    assert_close(wide, per_pair.mean().expand(3), atol=1e-4, rtol=0)


def test_dr_dpo_equals_the_authors_formula():
    """junkangwu/Dr_DPO (trainers.py): -mode_weight * log(mean(exp(-losses / mode_weight))) over DPO's losses."""
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = (
        torch.randn(8, generator=generator, dtype=torch.float64) * 4,
        torch.randn(8, generator=generator, dtype=torch.float64) * 4,
    )
    beta, beta_prime = 0.1, 0.5
    dpo = -F.logsigmoid(beta * (chosen - rejected))
    authors = -beta_prime * torch.log(torch.mean(torch.exp(-dpo / beta_prime)))
    assert_close(losses.dr_dpo(chosen, rejected, beta=beta, dr_dpo_beta_prime=beta_prime).mean(), authors)


def test_simpo_and_its_gradient():
    """SimPO, Eq. 6: l(beta (logp_w/|y_w| - logp_l/|y_l|) - gamma). beta = 1, gamma = 1; average log-probs
    chosen [-2/2, -3/3, -4/4] = [-1, -1, -1], rejected [-4/2, -(2 + ln 3)/1, (2 ln 3 - 4)/2]
    = [-2, -2 - ln 3, ln 3 - 2]:
    delta = [1, 1 + ln 3, 1 - ln 3], minus gamma: z = [0, ln 3, -ln 3] -> [ln 2, ln(4/3), ln 4].

    Gradient wrt the summed chosen log-prob: -beta s(-z) / |y_w| = [-1/4, -1/12, -3/16].
    """
    chosen = t(-2, -3, -4, grad=True)
    loss = losses.simpo(chosen, t(-4, -2 - LN3, 2 * LN3 - 4), t(2, 3, 4), t(2, 1, 2), beta=1.0, simpo_gamma=1.0)
    assert_close(loss, t(L0, L_LN3, L_MINUS_LN3))
    assert_close(grads(loss, chosen)[0], t(-1 / 4, -1 / 12, -3 / 16))


@pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")
def test_simpo_equals_trl_cpo_and_the_authors_formula():
    """TRL 1.16's CPOTrainer.cpo_loss with loss_type "simpo" (on average log-probs, as its forward computes them for
    simpo), and princeton-nlp/SimPO's simpo_loss: -logsigmoid(beta * (avg_w - avg_l - gamma_beta_ratio))."""
    from trl.experimental.cpo import CPOTrainer

    generator = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(6, generator=generator) * 10 - 30, torch.randn(6, generator=generator) * 10 - 30
    lengths_w, lengths_l = torch.tensor([3.0, 5, 7, 9, 11, 13]), torch.tensor([4.0, 4, 8, 8, 12, 12])
    beta, gamma = 2.0, 1.0
    avg_w, avg_l = chosen / lengths_w, rejected / lengths_l
    cpo = SimpleNamespace(
        alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )  # fmt: skip
    trl_losses, _, _ = CPOTrainer.cpo_loss(cpo, avg_w, avg_l)
    ours = losses.simpo(chosen, rejected, lengths_w, lengths_l, beta=beta, simpo_gamma=gamma)
    assert_close(ours, trl_losses)
    authors = -F.logsigmoid(beta * ((avg_w - avg_l) - gamma / beta))
    assert_close(ours, authors)


def test_orpo_and_the_gradient_of_its_odds_ratio_term():
    """ORPO: NLL(y_w) + lambda l(log OR), OR = odds_w / odds_l, odds = P / (1 - P), P = exp(logp / |y|); lambda = beta
    = 1/2. All lengths 2 (chosen scored tokens 2 each, so the NLL term is -logp_w * 3 / 6 = -logp_w / 2 = -avg_w).

    row 1: P_w = P_l = 1/2: OR = 1                  -> ln 2   + 1/2 ln 2
    row 2: P_w = 1/2, P_l = 1/4: OR = 1 / (1/3) = 3  -> ln 2   + 1/2 ln(4/3)
    row 3: P_w = 1/4, P_l = 1/2: OR = 1/3           -> 2 ln 2 + 1/2 ln 4 = 3 ln 2
    The paper's gradient of the odds-ratio term, delta(d) h(d) with delta = 1 / (1 + OR): wrt avg_w it is
    -delta / (1 - P_w), wrt avg_l +delta / (1 - P_l). Row 2: delta = 1/4: -1/2 and +1/3; per summed log-prob (/2),
    times lambda: -1/8 and +1/12. The NLL term adds -3/6 = -1/2 to the chosen side.
    """
    chosen = t(-2 * LN2, -2 * LN2, -4 * LN2, grad=True)
    rejected = t(-2 * LN2, -4 * LN2, -2 * LN2, grad=True)
    twos = t(2, 2, 2)
    loss = losses.orpo(chosen, rejected, twos, twos, twos, beta=0.5)
    assert_close(loss, t(1.5 * LN2, LN2 + 0.5 * L_LN3, 3 * LN2))
    d_chosen, d_rejected = grads(loss, chosen, rejected)
    assert_close(d_chosen[1], t(-1 / 8 - 1 / 2)[0])
    assert_close(d_rejected[1], t(1 / 12)[0])


@pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")
def test_orpo_odds_ratio_term_equals_trl():
    """TRL 1.16's ORPOTrainer.odds_ratio_loss returns beta * logsigmoid(log odds) on average log-probs, and the
    ORPO loss is nll - mean of it: so our loss minus the NLL term is minus TRL's, example by example."""
    from trl.experimental.orpo import ORPOTrainer

    generator = torch.Generator().manual_seed(4)
    chosen, rejected = -torch.rand(6, generator=generator) * 20 - 0.5, -torch.rand(6, generator=generator) * 20 - 0.5
    lengths_w, lengths_l = torch.tensor([3.0, 5, 7, 9, 11, 13]), torch.tensor([4.0, 4, 8, 8, 12, 12])
    scored = lengths_w
    orpo_self = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu"))
    trl_losses, *_ = ORPOTrainer.odds_ratio_loss(orpo_self, chosen / lengths_w, rejected / lengths_l)
    ours = losses.orpo(chosen, rejected, lengths_w, lengths_l, scored, beta=0.1)
    assert_close(ours - losses.sft(chosen, scored, beta=0.1), -trl_losses)


def test_odpo_offset_from_the_score_gap():
    """ODPO: l(beta Delta - alpha log(gap)). beta = alpha = 1; gaps [1, 3, 1/3] give offsets [0, ln 3, -ln 3];
    Delta = [0, 2 ln 3, -2 ln 3]: z = [0, ln 3, -ln 3] -> [ln 2, ln(4/3), ln 4]. alpha = 0 is DPO.
    Gradient wrt the chosen score: -beta s(-z) = [-1/2, -1/4, -3/4], DPO's at the shifted margin."""
    chosen = t(0, 2 * LN3, -2 * LN3, grad=True)
    loss = losses.odpo(chosen, t(0, 0, 0), t(1, 3, 1 / 3), beta=1.0, odpo_alpha=1.0)
    assert_close(loss, t(L0, L_LN3, L_MINUS_LN3))
    assert_close(grads(loss, chosen)[0], t(-0.5, -0.25, -0.75))
    assert_close(
        losses.odpo(chosen, t(0, 0, 0), t(1, 3, 1 / 3), beta=1.0, odpo_alpha=0.0),
        losses.sigmoid(chosen, t(0, 0, 0), beta=1.0),
    )


def test_odpo_equals_the_authors_formula():
    """rycolab/odpo (trainers.py, offset without ratio): -logsigmoid(beta * logits - alpha * log(r_w - r_l))."""
    generator = torch.Generator().manual_seed(5)
    chosen, rejected = (
        torch.randn(6, generator=generator, dtype=torch.float64),
        torch.randn(6, generator=generator, dtype=torch.float64),
    )
    reward_w = torch.rand(6, generator=generator, dtype=torch.float64) + 1
    reward_l = torch.rand(6, generator=generator, dtype=torch.float64)
    beta, alpha = 0.5, 2.0
    authors = -F.logsigmoid(beta * (chosen - rejected) - alpha * torch.log(reward_w - reward_l))
    assert_close(losses.odpo(chosen, rejected, reward_w - reward_l, beta=beta, odpo_alpha=alpha), authors)


# ---------------------------------------------------------------- the table


def test_every_loss_has_a_hand_worked_test():
    assert set(LOSSES) == HAND_WORKED


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_table_entry_is_consistent(name):
    """Name = function name, a one-line summary, the paper in the docstring, inputs from the documented
    vocabulary (the tensors the trainer provides), beta keyword-only, every other hyperparameter with a default."""
    spec = LOSSES[name]
    assert spec.name == name and spec.fn is getattr(losses, name)
    assert spec.summary and "\n" not in spec.summary
    doc = inspect.getdoc(spec.fn) or ""
    assert re.search(r"arXiv \d{4}\.\d{4,5}", doc) or re.search(r'"[A-Z][^"]+"', doc), f"{name}: no paper named"
    vocabulary = {
        f"{side}_{kind}" for side in ("chosen", "rejected") for kind in ("logps", "logratios", "scores", "lengths")
    } | {"ref_chosen_logps", "ref_rejected_logps", "chosen_scored_tokens", "score_gaps", "progress"}
    assert spec.inputs and set(spec.inputs) <= vocabulary
    params = inspect.signature(spec.fn).parameters
    assert params["beta"].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(default is not inspect.Parameter.empty for default in spec.hyperparameters.values())


@pytest.mark.parametrize(
    ("name", "inputs", "hyperparameters", "needs_reference", "supports_f_divergence"),
    [
        ("sigmoid", ("chosen_scores", "rejected_scores"), {"label_smoothing": 0.0}, True, True),
        ("ipo", ("chosen_scores", "rejected_scores", "chosen_lengths", "rejected_lengths"), {}, True, True),
        ("hinge", ("chosen_scores", "rejected_scores"), {}, True, True),
        ("exo_pair", ("chosen_scores", "rejected_scores"), {"label_smoothing": 1e-3}, True, True),
        ("discopop", ("chosen_scores", "rejected_scores"), {"discopop_tau": 0.05}, True, True),
        ("dpop", ("chosen_logratios", "rejected_logratios"), {"dpop_lambda": 50.0}, True, False),
        ("nca_pair", ("chosen_logratios", "rejected_logratios"), {}, True, False),
        (
            "aot",
            ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"),
            {"label_smoothing": 0.0},
            True,
            False,
        ),
        ("sft", ("chosen_logps", "chosen_scored_tokens"), {}, False, False),
        (
            "simpo",
            ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"),
            {"simpo_gamma": 0.5},
            False,
            False,
        ),
        (
            "orpo",
            ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths", "chosen_scored_tokens"),
            {},
            False,
            False,
        ),
        ("odpo", ("chosen_scores", "rejected_scores", "score_gaps"), {"odpo_alpha": 1.0}, True, True),
        (
            "dpo_shift",
            ("chosen_logratios", "rejected_logratios", "progress"),
            {"shift_lambda": 0.9, "shift_lambda_end": None, "label_smoothing": 0.0},
            True,
            False,
        ),
        ("dr_dpo", ("chosen_scores", "rejected_scores"), {"dr_dpo_beta_prime": 1.0}, True, True),
    ],
)
def test_spec_reads_the_signature(name, inputs, hyperparameters, needs_reference, supports_f_divergence):
    spec = LOSSES[name]
    assert spec.inputs == inputs
    assert spec.hyperparameters == hyperparameters
    assert spec.needs_reference is needs_reference
    assert spec.supports_f_divergence is supports_f_divergence


def _all_tensors() -> dict[str, torch.Tensor]:
    return {
        "chosen_logps": t(-2, -4, -6),
        "rejected_logps": t(-3, -3, -3),
        "ref_chosen_logps": t(-2, -5, -5),
        "ref_rejected_logps": t(-2, -2, -4),
        "chosen_logratios": t(0, 1, -1),
        "rejected_logratios": t(-1, -1, 1),
        "chosen_scores": t(0, 1, -1),
        "rejected_scores": t(-1, -1, 1),
        "chosen_lengths": t(1, 2, 3),
        "rejected_lengths": t(2, 2, 2),
        "chosen_scored_tokens": t(1, 2, 3),
        "score_gaps": t(1, 2, 0.5),
        "progress": torch.tensor(0.5, dtype=torch.float64),
    }


def test_compute_loss_passes_only_what_the_loss_takes(monkeypatch):
    """The trainer hands every loss all tensors and all hyperparameters of the plan; each loss gets its own."""
    seen = {}

    def spy(chosen_scores, chosen_lengths, *, beta, label_smoothing=0.0):
        seen.update(chosen_scores=chosen_scores, chosen_lengths=chosen_lengths, beta=beta, eps=label_smoothing)
        return chosen_scores

    monkeypatch.setitem(LOSSES, "spy", LossSpec("spy", spy, "test double"))
    tensors = _all_tensors()
    compute_loss("spy", tensors, beta=0.3, label_smoothing=0.2, dpop_lambda=5.0, discopop_tau=0.1)
    assert set(seen) == {"chosen_scores", "chosen_lengths", "beta", "eps"}
    assert seen["chosen_scores"] is tensors["chosen_scores"] and seen["chosen_lengths"] is tensors["chosen_lengths"]
    assert seen["beta"] == 0.3 and seen["eps"] == 0.2

    # Real losses: a hyperparameter the loss does not take is dropped, one it takes is used.
    hp = {"label_smoothing": 0.25, "dpop_lambda": 2.0, "discopop_tau": 1.0}
    assert_close(compute_loss("hinge", tensors, beta=0.5, **hp), losses.hinge(t(0, 1, -1), t(-1, -1, 1), beta=0.5))
    assert_close(
        compute_loss("sigmoid", tensors, beta=1.0, **hp),
        losses.sigmoid(t(0, 1, -1), t(-1, -1, 1), beta=1.0, label_smoothing=0.25),
    )
    assert_close(
        compute_loss("dpop", tensors, beta=1.0, **hp),
        losses.dpop(t(0, 1, -1), t(-1, -1, 1), beta=1.0, dpop_lambda=2.0),
    )
    assert_close(compute_loss("sft", tensors, beta=1.0, **hp), t(-2, -4, -6) * -3 / 6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_through_compute_loss_with_per_example_output(name):
    """Shape (B,) out, finite, and differentiable wrt the inputs it takes (EXO needs label_smoothing > 0)."""
    fixed = ("lengths", "progress", "score_gaps")  # data, not model outputs
    tensors = {k: v.clone().requires_grad_(not k.endswith(fixed)) for k, v in _all_tensors().items()}
    hp = {"label_smoothing": 0.1} if name in {"exo_pair", "robust"} else {}
    loss = compute_loss(name, tensors, beta=0.5, **hp)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    taken = [k for k in LOSSES[name].inputs if not k.endswith(fixed)]
    assert all(tensors[k].grad is not None for k in taken)


# ---------------------------------------------------------------- parity with TRL on a real batch

# The loss names of TRL 1.16's `_compute_loss` chain; each has the same name in LOSSES.
# (case, beta, hyperparameters): exo_pair needs eps > 0; robust, aot, aot_unpaired use it; discopop's tau is
# set away from its default so that the value proves it was passed through.
PARITY_CASES = [
    ("sigmoid", 0.5, {}),
    ("hinge", 0.5, {}),
    ("ipo", 0.5, {}),
    ("exo_pair", 0.5, {"label_smoothing": 0.1}),
    ("nca_pair", 0.5, {}),
    ("robust", 0.5, {"label_smoothing": 0.1}),
    ("bco_pair", 0.5, {}),
    ("sppo_hard", 0.5, {}),
    ("aot", 0.5, {"label_smoothing": 0.1}),
    ("aot_unpaired", 0.5, {"label_smoothing": 0.1}),
    ("apo_zero", 0.5, {}),
    ("apo_down", 0.5, {}),
    ("discopop", 0.5, {"discopop_tau": 0.5}),
    ("sft", 0.5, {}),
    ("sigmoid_norm", 0.5, {}),
]
TRL_LOSSES = {name for name, _, _ in PARITY_CASES}


@pytest.fixture(scope="module")
def parity_setup(tiny_model_dir, tmp_path_factory):
    """Six arithmetic pairs (conversational), the tiny model's tokenizer, and a perturbed copy of its weights
    (the policy), so that log-ratios against the saved weights (the reference) are non-zero."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = Dataset.from_list(read_jsonl(ARITHMETIC / "train.jsonl")[:6])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy_state = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in reference.state_dict().items()}
    return {
        "model_dir": tiny_model_dir,
        "dataset": dataset,
        "tokenizer": tokenizer,
        "policy_state": policy_state,
        "output_dir": tmp_path_factory.mktemp("parity"),
    }


def _config(setup, name: str, beta: float, hyperparameters: dict, **overrides):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(setup["output_dir"]),
        loss_type=[name],
        beta=beta,
        label_smoothing=hyperparameters.get("label_smoothing", 0.0),
        discopop_tau=hyperparameters.get("discopop_tau", 0.05),
        per_device_train_batch_size=6,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        **overrides,
    )


def _trainers(
    setup, name: str, beta: float, hyperparameters: dict, peft: bool = False, plan: dict | None = None, **overrides
):
    """Plain TRL and ours, each on its own model loaded from the tiny model's directory (full fine-tuning: the
    reference is loaded again from the directory by TRL; with LoRA it is the adapter-disabled base), the policy
    then perturbed identically in both. Models in train mode, so metrics land under "train". `overrides` are
    further DPOConfig fields, given to both; `plan` holds extra LossPlan fields for ours (e.g. f_divergence),
    whose TRL counterparts go in `overrides`."""
    from peft import LoraConfig
    from trl import DPOTrainer

    from dpo.training.losses import LossPlan
    from dpo.training.trainer import Trainer

    common = {"train_dataset": setup["dataset"], "processing_class": setup["tokenizer"]}
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    if peft:
        common["peft_config"] = lora
    model = str(setup["model_dir"])
    trl_trainer = DPOTrainer(model=model, args=_config(setup, name, beta, hyperparameters, **overrides), **common)
    plan = LossPlan(terms=((name, 1.0),), beta=beta, hyperparameters=dict(hyperparameters), **(plan or {}))
    # As dpo/training/arguments.py builds it: DPOConfig carries beta, the loss knobs live in the plan only.
    ours = Trainer(model=model, args=_config(setup, "sigmoid", beta, {}, **overrides), loss_plan=plan, **common)
    if peft:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for pname, param in sorted(trl_trainer.model.named_parameters()):
                if "lora_" in pname:
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
        ours.model.load_state_dict(trl_trainer.model.state_dict())
    else:
        trl_trainer.model.load_state_dict(setup["policy_state"])
        ours.model.load_state_dict(setup["policy_state"])
    for trainer in (trl_trainer, ours):
        trainer.model.train()
    return trl_trainer, ours


def _float32_atol(expected: torch.Tensor) -> float:
    """The absolute tolerance of a float32 result that we and TRL sum in another order: 1e-6, or 4e-6 of the
    tensor's largest entry (some 30 units in its last place) where that is larger. The rounding grows with the
    values summed: on an AMD EPYC sppo_hard's loss of 6.48 came out 3e-6 apart, and its embedding gradients 1.1e-6
    of their largest entry (other machines: below 1e-6 throughout)."""
    return max(1e-6, 4e-6 * expected.detach().abs().max().item())


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _independent_logratios(setup, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair log-ratios from plain forward passes (log_softmax + gather over the completion tokens), using
    neither TRL's nor our log-prob code: the reference is the saved model, the policy its perturbed copy."""
    from transformers import AutoModelForCausalLM

    ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:]

    def logps(model):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (per_token * mask).sum(dim=1)

    reference = AutoModelForCausalLM.from_pretrained(setup["model_dir"])
    policy = AutoModelForCausalLM.from_pretrained(setup["model_dir"])
    policy.load_state_dict(setup["policy_state"])
    return (logps(policy) - logps(reference)).chunk(2)


def test_parity_cases_cover_every_trl_loss():
    """The loss names in the installed TRL's `_compute_loss` chain are exactly the parity cases, all in LOSSES."""
    from trl import DPOTrainer

    trl_names = set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(DPOTrainer._compute_loss)))
    assert trl_names == TRL_LOSSES
    assert TRL_LOSSES <= set(LOSSES)


@pytest.mark.parametrize(("name", "beta", "hyperparameters"), PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_loss_and_gradient_equal_trl(parity_setup, name, beta, hyperparameters):
    """Same batch, same weights: our loss equals TRL's, and so does every parameter's gradient, to float32's rounding
    (`_float32_atol`)."""
    trl_trainer, ours = _trainers(parity_setup, name, beta, hyperparameters)
    batch = _batch(trl_trainer)
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
    our_loss = ours.compute_loss(ours.model, batch)
    assert_close(our_loss, trl_loss, atol=_float32_atol(trl_loss), rtol=0)
    trl_loss.backward()
    our_loss.backward()
    trl_grads = dict(trl_trainer.model.named_parameters())
    for pname, param in ours.model.named_parameters():
        expected = trl_grads[pname].grad
        atol = _float32_atol(expected)
        assert_close(param.grad, expected, atol=atol, rtol=1e-5, msg=f"{name}: gradient of {pname}")
    assert abs(trl_trainer._metrics["train"]["rewards/margins"][-1]) > 1e-3  # the policy is not the reference


@pytest.mark.parametrize("name", ["sigmoid", "ipo"])
def test_loss_equals_trl_with_a_lora_adapter(parity_setup, name):
    """Under PEFT the reference is the policy with its adapter disabled; ours must take the same path."""
    trl_trainer, ours = _trainers(parity_setup, name, 0.5, {}, peft=True)
    batch = _batch(trl_trainer)
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
    our_loss = ours.compute_loss(ours.model, batch)
    assert abs(trl_trainer._metrics["train"]["rewards/margins"][-1]) > 1e-3  # the adapter moved the policy
    assert_close(our_loss, trl_loss, atol=_float32_atol(trl_loss), rtol=0)


def test_trl_ignores_label_smoothing_for_sigmoid_and_we_do_not(parity_setup):
    """Why we override TRL's loss: with loss_type sigmoid and label_smoothing 0.1, TRL 1.16 computes plain DPO,
    while ours computes cDPO. Both checked against the formulas on independently computed log-ratios."""
    eps, beta = 0.1, 0.5
    trl_trainer, ours = _trainers(parity_setup, "sigmoid", beta, {"label_smoothing": eps})
    assert trl_trainer.label_smoothing == eps  # TRL accepted the knob...
    batch = _batch(trl_trainer)
    chosen, rejected = _independent_logratios(parity_setup, batch)
    z = beta * (chosen - rejected)
    dpo_value = (-F.logsigmoid(z)).mean()
    cdpo_value = ((1 - eps) * -F.logsigmoid(z) + eps * -F.logsigmoid(-z)).mean()
    assert abs(cdpo_value - dpo_value) > 1e-2  # the two are distinguishable on this batch
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
        our_loss = ours.compute_loss(ours.model, batch)
    assert_close(trl_loss, dpo_value, atol=1e-5, rtol=0)  # ...and ignored it
    assert_close(our_loss, cdpo_value, atol=1e-5, rtol=0)


def test_metrics_match_trl(parity_setup):
    """Every metric TRL logs, ours logs under the same name with the same value; ours adds a few."""
    trl_trainer, ours = _trainers(parity_setup, "ipo", 0.5, {})
    batch = _batch(trl_trainer)
    with torch.no_grad():
        trl_trainer.compute_loss(trl_trainer.model, batch)
        ours.compute_loss(ours.model, batch)
    trl_metrics, our_metrics = trl_trainer._metrics["train"], ours._metrics["train"]
    assert "rewards/margins" in trl_metrics and set(trl_metrics) <= set(our_metrics)
    for key, values in trl_metrics.items():
        assert our_metrics[key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
    assert {"beta", "logps/accuracies", "logratios/chosen", "logratios/rejected"} <= set(our_metrics) - set(trl_metrics)
    assert our_metrics["beta"] == [0.5]
    assert our_metrics["logratios/chosen"][0] == pytest.approx(trl_metrics["rewards/chosen"][0] / 0.5, rel=1e-5)
    assert our_metrics["logratios/rejected"][0] == pytest.approx(trl_metrics["rewards/rejected"][0] / 0.5, rel=1e-5)


def test_loss_equals_trl_with_precomputed_reference_logps(parity_setup):
    """With precompute_ref_log_probs the batch carries the reference log-probs (computed at init, before the
    policy was perturbed); ours reads them from the batch as TRL does, and both equal the on-the-fly value."""
    trl_trainer, ours = _trainers(parity_setup, "sigmoid", 0.5, {}, precompute_ref_log_probs=True)
    batch = _batch(trl_trainer)
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(batch)
    on_the_fly, _ = _trainers(parity_setup, "sigmoid", 0.5, {})
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
        our_loss = ours.compute_loss(ours.model, batch)
        without = {k: v for k, v in batch.items() if not k.startswith("ref_")}
        fly_loss = on_the_fly.compute_loss(on_the_fly.model, without)
    assert_close(our_loss, trl_loss, atol=_float32_atol(trl_loss), rtol=0)
    assert_close(our_loss, fly_loss, atol=1e-6, rtol=0)


def test_sft_equals_trl_when_truncation_cuts_the_whole_prompt(parity_setup):
    """truncation_mode keep_end with max_length 10 keeps only the last 10 tokens, all completion: the first has no
    log-prob (nothing precedes it), so the NLL averages over 9 scored tokens per answer, not 10, as TRL does (sft
    takes `chosen_scored_tokens`). IPO and sigmoid_norm keep the unshifted count: TRL normalises them by it."""
    for name in ("ipo", "sigmoid_norm"):
        trl_trainer, ours = _trainers(parity_setup, name, 0.5, {}, max_length=10, truncation_mode="keep_end")
        batch = _batch(trl_trainer)
        with torch.no_grad():
            assert_close(ours.compute_loss(ours.model, batch), trl_trainer.compute_loss(trl_trainer.model, batch))
    trl_trainer, ours = _trainers(parity_setup, "sft", 0.5, {}, max_length=10, truncation_mode="keep_end")
    batch = _batch(trl_trainer)
    assert batch["completion_mask"][:, 0].all()  # the premise: a completion token at position 0 in every row
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
        our_loss = ours.compute_loss(ours.model, batch)
    assert_close(our_loss, trl_loss, atol=_float32_atol(trl_loss), rtol=0)


@pytest.mark.parametrize(
    ("name", "trl_settings", "plan"),
    [
        ("sigmoid", {"use_weighting": True}, {}),
        ("ipo", {"use_weighting": True}, {}),
        ("sigmoid", {"ld_alpha": 0.5}, {}),
        ("sigmoid", {"f_divergence_type": "js_divergence"}, {"f_divergence": "js_divergence"}),
        ("sigmoid", {"f_divergence_type": "forward_kl"}, {"f_divergence": "forward_kl"}),
        (
            "hinge",
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
            {"f_divergence": "alpha_divergence", "f_alpha": 0.3},
        ),
    ],
    ids=["wpo-sigmoid", "wpo-ipo", "ld-dpo", "js", "forward-kl", "alpha-0.3-hinge"],
)
def test_regularizers_match_trl(parity_setup, name, trl_settings, plan):
    """WPO weighting, LD-DPO's length-desensitised log-probs and the f-divergence links give TRL's value.
    WPO and LD-DPO are DPOConfig fields both trainers read (dpo/training/arguments.py sets them from the
    recipe's regularizers); the f-divergence is a LossPlan field in ours."""
    our_settings = {k: v for k, v in trl_settings.items() if k in ("use_weighting", "ld_alpha")}
    trl_trainer, ours = _trainers(parity_setup, name, 0.5, {}, plan=plan, **trl_settings)
    if our_settings != trl_settings:  # ours must not depend on TRL's f-divergence fields
        ours.args.f_divergence_type, ours.f_divergence_type = "reverse_kl", "reverse_kl"
    batch = _batch(trl_trainer)
    with torch.no_grad():
        assert_close(ours.compute_loss(ours.model, batch), trl_trainer.compute_loss(trl_trainer.model, batch))


def test_ld_dpo_leaves_the_nll_term_on_the_whole_answer_as_trl_does(parity_setup):
    """LD-DPO down-weights the tokens past the shorter answer in the log-probs the preference terms read; TRL's NLL
    term (sft) averages the chosen answer's every token all the same. Pairs whose chosen answer is the longer one
    (the arithmetic pairs swapped), so that the chosen answers have a tail to down-weight."""
    from datasets import Dataset

    rows = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in parity_setup["dataset"]]
    setup = {**parity_setup, "dataset": Dataset.from_list(rows)}
    trl_trainer, ours = _trainers(setup, "sft", 0.5, {}, ld_alpha=0.5)
    batch = _batch(trl_trainer)
    chosen_tokens, rejected_tokens = batch["completion_mask"].sum(dim=1).chunk(2)
    assert (chosen_tokens > rejected_tokens).any()  # the premise: some chosen answer has a tail
    with torch.no_grad():
        assert_close(ours.compute_loss(ours.model, batch), trl_trainer.compute_loss(trl_trainer.model, batch))


# ---------------------------------------------------------------- losses without a reference, losses with a score gap


def _ours(setup, plan, peft: bool = False, dataset=None):
    from peft import LoraConfig

    from dpo.training.trainer import Trainer

    extra = {}
    if peft:
        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = Trainer(
        model=str(setup["model_dir"]),
        args=_config(setup, "sigmoid", plan.beta, {}),
        loss_plan=plan,
        train_dataset=dataset if dataset is not None else setup["dataset"],
        eval_dataset=dataset,
        processing_class=setup["tokenizer"],
        **extra,
    )
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_losses_run_no_reference(parity_setup, monkeypatch, name, peft):
    """simpo and orpo take no reference tensor (LossSpec.needs_reference is False), so the trainer keeps no reference
    copy (TRL would load one for full fine-tuning), precomputes nothing and runs no reference forward; the loss
    equals the formula on log-probs from a plain forward pass; the rewards are beta * log pi / |y| (TRL's CPO/ORPO)."""
    from trl import DPOTrainer

    from dpo.training.losses import LossPlan

    forwards = []
    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", lambda *args: forwards.append(args))
    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", lambda *args: forwards.append(args))
    plan = LossPlan(terms=((name, 1.0),), beta=0.5)
    assert not plan.needs_reference
    ours = _ours(parity_setup, plan, peft=peft)
    assert ours.ref_model is None and not ours.precompute_ref_logps and not ours.args.precompute_ref_log_probs
    batch = _batch(ours)
    assert not {"ref_chosen_logps", "ref_rejected_logps"} & set(batch)
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch)
    assert forwards == []
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = ours.model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    logps = (per_token * mask[:, 1:]).sum(dim=1)
    chosen, rejected = logps.chunk(2)
    lengths_w, lengths_l = mask.sum(dim=1).float().chunk(2)
    scored, _ = mask[:, 1:].sum(dim=1).float().chunk(2)
    if name == "simpo":
        expected = losses.simpo(chosen, rejected, lengths_w, lengths_l, beta=0.5)
    else:
        expected = losses.orpo(chosen, rejected, lengths_w, lengths_l, scored, beta=0.5)
    assert_close(loss, expected.mean(), atol=1e-5, rtol=1e-5)
    metrics = ours._metrics["train"]
    assert "logratios/chosen" not in metrics
    # the rewards are beta * the per-token log-prob the loss trains (not the summed log-prob of logps/chosen)
    assert metrics["rewards/chosen"][-1] == pytest.approx(0.5 * (chosen / lengths_w).mean().item(), rel=1e-5)
    assert metrics["rewards/rejected"][-1] == pytest.approx(0.5 * (rejected / lengths_l).mean().item(), rel=1e-5)
    per_token_wins = (chosen / lengths_w > rejected / lengths_l).float().mean().item()
    assert metrics["rewards/accuracies"][-1] == pytest.approx(per_token_wins)


def test_the_score_gap_travels_with_the_pair_into_the_batch(parity_setup):
    """A `score_gap` column (pair expansion writes it) survives TRL's tokenization and column filtering, reaches the
    batch as a tensor in the pairs' order, and ODPO's loss uses it: equal to the formula on log-ratios from plain
    forward passes."""
    from dpo.training.losses import LossPlan

    gaps = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    dataset = parity_setup["dataset"].add_column("score_gap", gaps)
    plan = LossPlan(terms=(("odpo", 1.0),), beta=0.5, hyperparameters={"odpo_alpha": 0.7})
    ours = _ours(parity_setup, plan, dataset=dataset)
    ours.model.load_state_dict(parity_setup["policy_state"])
    ours.args.per_device_eval_batch_size = 6
    # the evaluation loader: the same column filtering and collator as training's, without the shuffle
    batch = ours._prepare_inputs(next(iter(ours.get_eval_dataloader())))
    assert "score_gap" in ours._signature_columns
    assert_close(batch["score_gap"], torch.tensor(gaps))
    chosen, rejected = _independent_logratios(parity_setup, batch)
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch)
    expected = losses.odpo(chosen, rejected, torch.tensor(gaps), beta=0.5, odpo_alpha=0.7).mean()
    assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")
def test_reference_free_rewards_are_per_token_as_trl_logs_them():
    """The logged implicit rewards (rewards/chosen, /rejected, /accuracies) of a loss without a reference are beta *
    the length-normalised log-prob that SimPO and ORPO train on, as TRL's CPO (simpo) and ORPO trainers return them;
    with a reference, beta * the log-ratio. Hand-worked: a chosen answer of 6 tokens at -9 (-1.5 a token) against a
    rejected one of 2 tokens at -8 (-4 a token) is preferred per token, though its summed log-prob is lower; the
    chosen -4 over 2 tokens (-2) against the rejected -3 over 1 token (-3) likewise."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from dpo.training.trainer import implicit_rewards

    chosen, rejected, lengths_w, lengths_l = t(-9, -4), t(-8, -3), t(6, 2), t(2, 1)
    tensors = {"chosen_logps": chosen, "rejected_logps": rejected, "chosen_lengths": lengths_w,
               "rejected_lengths": lengths_l}  # fmt: skip
    chosen_rewards, rejected_rewards = implicit_rewards(tensors, 2.0)
    assert_close(chosen_rewards, t(-3.0, -4.0))
    assert_close(rejected_rewards, t(-8.0, -6.0))
    assert (chosen_rewards > rejected_rewards).all() and not (chosen > rejected).any()
    cpo = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=1.0, beta=2.0, label_smoothing=0.0,
                          accelerator=SimpleNamespace(device="cpu"))  # fmt: skip
    _, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(cpo, chosen / lengths_w, rejected / lengths_l)
    assert_close((chosen_rewards, rejected_rewards), (trl_chosen, trl_rejected), check_dtype=False)
    orpo_self = SimpleNamespace(beta=2.0, accelerator=SimpleNamespace(device="cpu"))
    _, trl_chosen, trl_rejected, *_ = ORPOTrainer.odds_ratio_loss(orpo_self, chosen / lengths_w, rejected / lengths_l)
    assert_close((chosen_rewards, rejected_rewards), (trl_chosen, trl_rejected), check_dtype=False)
    with_reference = {**tensors, "chosen_logratios": t(0.5, -1.0), "rejected_logratios": t(-0.5, 2.0)}
    assert_close(implicit_rewards(with_reference, 2.0), (t(1.0, -2.0), t(-1.0, 4.0)))
