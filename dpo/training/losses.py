"""Preference losses as pure functions, and the one table of their names (LOSSES).

Every loss takes tensors of shape (B,) and returns the per-example loss, shape (B,). Its signature
is its contract:
  * parameters before `*` name the tensors it needs, from this vocabulary:
      chosen_logps, rejected_logps            summed log-probs of the completions under the policy
      ref_chosen_logps, ref_rejected_logps    the same under the reference model
      chosen_logratios, rejected_logratios    policy minus reference (log pi/pi_ref)
      chosen_scores, rejected_scores          the log-ratios after the f-divergence link (identity for
                                              reverse KL, i.e. plain DPO); a loss that takes scores
                                              supports `regularizers.f_divergence`, others do not
      chosen_lengths, rejected_lengths        completion token counts (for length-normalised losses)
      chosen_scored_tokens                    completion tokens that carry a log-prob (a token at position 0
                                              has none; differs from chosen_lengths only under truncation)
      score_gaps                              score(chosen) - score(rejected) > 0 of pairs expanded from scored
                                              multi-response rows (dpo/data/expand.py); only losses that take
                                              it need it, and the recipe check refuses data without it
      progress                                training progress, global step / max steps, a 0-dim tensor in [0, 1]
  * keyword-only parameters after `*` are its hyperparameters (`beta` always; `label_smoothing`,
    `dpop_lambda`, ... only where the loss uses them), with their constraints in the annotation. They are
    the recipe's `loss.*` keys: the trainer and the recipe validation (dpo/training/loss_plan.py) read them
    from the signature, so a knob a loss does not take is an error, never silently ignored.

Notation: Delta = chosen_scores - rejected_scores, l(z) = -log sigmoid(z) (the logistic loss).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval, doc
from torch import Tensor

# Hyperparameter types: their constraints are what the recipe validation enforces (dpo/training/loss_plan.py).
LabelFlipRate = Annotated[
    float, Interval(ge=0, lt=0.5), doc("assumed label-flip rate (cDPO with sigmoid, rDPO with robust, EXO, AOT)")
]
PositiveLabelFlipRate = Annotated[float, Interval(gt=0, lt=0.5), doc("EXO's target epsilon: log(eps) must be finite")]
DpopLambda = Annotated[float, Ge(0), doc("DPO-Positive penalty weight")]
DiscopopTau = Annotated[float, Gt(0), doc("DiscoPOP temperature")]
ShiftLambda = Annotated[float, Interval(gt=0, le=1), doc("DPO-Shift's factor f(lambda) on the rejected log-ratio")]
ChiClip = Annotated[float, Gt(0), doc("chi-PO's clip 2 R_max on beta times the linked log-ratio difference")]
BetaPrime = Annotated[float, Gt(0), doc("Dr. DPO's beta': lower trusts the pairs the model agrees with more")]
SimpoGamma = Annotated[float, Ge(0), doc("SimPO's target reward margin gamma")]
OdpoAlpha = Annotated[float, Ge(0), doc("ODPO's alpha: the offset is alpha * log(score gap)")]


def logistic(z: Tensor) -> Tensor:
    """l(z) = -log sigmoid(z), computed stably."""
    return -F.logsigmoid(z)


def _smoothed(z: Tensor, eps: float) -> Tensor:
    """(1 - eps) * l(z) + eps * l(-z): the logistic loss with labels flipped at rate eps (cDPO's mix)."""
    return (1 - eps) * logistic(z) + eps * logistic(-z)


def per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """log pi(y|x) / |y|: the length-normalised log-likelihood, the reward of the reference-free losses (SimPO,
    ORPO); lengths clamped at 1."""
    return logps / lengths.clamp(min=1)


def _per_token_delta(chosen: Tensor, rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor) -> Tensor:
    """chosen / |y_w| - rejected / |y_l|: the length-normalised difference."""
    return per_token(chosen, chosen_lengths) - per_token(rejected, rejected_lengths)


def sigmoid(
    chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float, label_smoothing: LabelFlipRate = 0.0
) -> Tensor:
    """DPO (arXiv 2305.18290, Eq. 7): l(beta * Delta).

    With label_smoothing eps > 0 this is conservative DPO (cDPO; Mitchell 2023, "A note on DPO with
    noisy preferences"): (1 - eps) * l(beta * Delta) + eps * l(-beta * Delta). Its optimum is a finite
    margin, beta * Delta* = log((1 - eps) / eps), instead of DPO's unbounded one.
    """
    return _smoothed(beta * (chosen_scores - rejected_scores), label_smoothing)


def robust(
    chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float, label_smoothing: LabelFlipRate = 0.0
) -> Tensor:
    """Robust DPO (rDPO, arXiv 2403.00409, Eq. 4): an unbiased loss under label-flip rate eps.

    [(1 - eps) * l(beta * Delta) - eps * l(-beta * Delta)] / (1 - 2 * eps).
    """
    z = beta * (chosen_scores - rejected_scores)
    return ((1 - label_smoothing) * logistic(z) - label_smoothing * logistic(-z)) / (1 - 2 * label_smoothing)


def hinge(chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float) -> Tensor:
    """SLiC hinge loss (arXiv 2305.10425, Eq. 3 with delta = 1/beta): max(0, 1 - beta * Delta)."""
    return torch.relu(1 - beta * (chosen_scores - rejected_scores))


def ipo(
    chosen_scores: Tensor, rejected_scores: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float
) -> Tensor:
    """IPO (arXiv 2310.12036, Eq. 17), length-normalised as TRL does: (Delta_avg - 1 / (2 beta))^2.

    Delta_avg uses per-token average scores (sum / completion length). The optimum is the finite
    margin Delta_avg* = 1 / (2 beta) (beta is the paper's tau).
    """
    delta = _per_token_delta(chosen_scores, rejected_scores, chosen_lengths, rejected_lengths)
    return (delta - 1 / (2 * beta)) ** 2


def exo_pair(
    chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float, label_smoothing: PositiveLabelFlipRate = 1e-3
) -> Tensor:
    """EXO-pref (arXiv 2402.00856, Eq. 16): KL(p_theta || p_target) over {chosen, rejected}.

    p_theta = (sigmoid(beta * Delta), sigmoid(-beta * Delta)), p_target = (1 - eps, eps), eps > 0.
    """
    z = beta * (chosen_scores - rejected_scores)
    eps = torch.as_tensor(label_smoothing, dtype=z.dtype, device=z.device)
    return torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - torch.log(eps)
    )


def nca_pair(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """NCA (arXiv 2402.05369, Eq. 12, pairwise): l(r_w) + 0.5 * l(-r_w) + 0.5 * l(-r_l), r = beta * logratio."""
    rw, rl = beta * chosen_logratios, beta * rejected_logratios
    return logistic(rw) + 0.5 * logistic(-rw) + 0.5 * logistic(-rl)


def bco_pair(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """BCO, pairwise form without the reward shift (arXiv 2404.04656, Eq. 7): l(r_w) + l(-r_l)."""
    return logistic(beta * chosen_logratios) + logistic(-beta * rejected_logratios)


def sppo_hard(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """SPPO with hard win probabilities (arXiv 2405.00675, Eq. 4.7 with P = 1 / 0).

    (logratio_w - 1 / (2 beta))^2 + (logratio_l + 1 / (2 beta))^2.
    """
    return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2


def aot(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: LabelFlipRate = 0.0,
) -> Tensor:
    """AOT, paired (arXiv 2406.05882, Eq. 9): logistic loss on sorted policy vs sorted reference log-ratios.

    delta = sort(logp_w - logp_l) - sort(ref_w - ref_l) (sorted within the batch), then as cDPO.
    """
    delta = torch.sort(chosen_logps - rejected_logps).values - torch.sort(ref_chosen_logps - ref_rejected_logps).values
    return _smoothed(beta * delta, label_smoothing)


def aot_unpaired(
    chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, label_smoothing: LabelFlipRate = 0.0
) -> Tensor:
    """AOT, unpaired (arXiv 2406.05882, Eq. 8): delta = sort(logratio_w) - sort(logratio_l), then as cDPO."""
    delta = torch.sort(chosen_logratios).values - torch.sort(rejected_logratios).values
    return _smoothed(beta * delta, label_smoothing)


def apo_zero(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """APO-zero (arXiv 2408.06266, Eq. 7): 1 - sigmoid(beta r_w) + sigmoid(beta r_l). Raises chosen likelihood."""
    return 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)


def apo_down(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """APO-down (arXiv 2408.06266, Eq. 8): sigmoid(beta r_w) + 1 - sigmoid(beta (r_w - r_l)).

    For chosen answers worse than the model's own: lowers both likelihoods, the rejected one more.
    """
    return torch.sigmoid(beta * chosen_logratios) + 1 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))


def discopop(
    chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float, discopop_tau: DiscopopTau = 0.05
) -> Tensor:
    """DiscoPOP / log-ratio modulated loss (arXiv 2406.08414, Eq. 5).

    z = beta * Delta, m = sigmoid(z / tau): (1 - m) * l(z) + m * exp(-z).
    """
    z = beta * (chosen_scores - rejected_scores)
    m = torch.sigmoid(z / discopop_tau)
    # m * exp(-z) as exp(log m - z): for z below -88.7 exp(-z) overflows float32 while m underflows to 0, and
    # 0 * inf is NaN; the product itself is finite (about -z there, where the logistic term takes over)
    return (1 - m) * logistic(z) + torch.exp(F.logsigmoid(z / discopop_tau) - z)


def sigmoid_norm(
    chosen_scores: Tensor, rejected_scores: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float
) -> Tensor:
    """Length-normalised DPO (as TRL's `sigmoid_norm`; cf. SimPO arXiv 2405.14734 Eq. 6 without margin).

    l(beta * (score_w / |y_w| - score_l / |y_l|)).
    """
    return logistic(beta * _per_token_delta(chosen_scores, rejected_scores, chosen_lengths, rejected_lengths))


def dpop(
    chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, dpop_lambda: DpopLambda = 50.0
) -> Tensor:
    """DPO-Positive (arXiv 2402.13228, Eq. 3).

    l(beta * (r_w - r_l - lambda * max(0, -r_w))) with r = log pi/pi_ref: the penalty switches on only
    when the chosen answer's likelihood falls below the reference's, and pushes it back up.
    """
    penalty = dpop_lambda * torch.relu(-chosen_logratios)
    return logistic(beta * (chosen_logratios - rejected_logratios - penalty))


def sft(chosen_logps: Tensor, chosen_scored_tokens: Tensor, *, beta: float) -> Tensor:
    """NLL of the chosen answers, token-averaged over the batch (RPO's NLL term, arXiv 2404.19733, Eq. 3).

    Returned per example so that its mean over the batch is -sum(logp_w) / sum(|y_w|), TRL's `sft`
    value. beta is accepted for a uniform call and not used: the NLL term has no KL strength.
    """
    del beta
    return -chosen_logps * chosen_logps.numel() / chosen_scored_tokens.sum().clamp(min=1)


def cal_dpo(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """Cal-DPO (arXiv 2412.14516): l(r_w - r_l) + 1/2 [(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2].

    r = log pi/pi_ref, unscaled. The squared terms calibrate the implicit rewards to the fixed scale +-1/(2 beta),
    so the chosen log-ratio is pulled up to a positive value instead of drifting down with the rejected one. The
    weight 1/2 on the calibration term is the authors' code's (tengxiao1/Cal-DPO, `dpo_loss`). Optimum: r_w = c + s,
    r_l = -c - s with c = 1/(2 beta) and s = sigmoid(-2c - 2s) (see tests/training/test_loss_behaviour.py).
    """
    target = 1 / (2 * beta)
    calibration = (chosen_logratios - target) ** 2 + (rejected_logratios + target) ** 2
    return logistic(chosen_logratios - rejected_logratios) + 0.5 * calibration


def dpo_shift(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    progress: Tensor,
    *,
    beta: float,
    shift_lambda: ShiftLambda = 0.9,
    shift_lambda_end: ShiftLambda | None = None,
    label_smoothing: LabelFlipRate = 0.0,
) -> Tensor:
    """DPO-Shift (arXiv 2502.07599): l(beta * (r_w - f(lambda) * r_l)), f(lambda) <= 1.

    Scaling down the rejected log-ratio shifts the optimum towards a higher chosen likelihood (f = 1 is DPO).
    f is `shift_lambda` throughout ("fixed"), or moves linearly from `shift_lambda` at the first step to
    `shift_lambda_end` at the last (the paper's "increase_linear" with start < end, "decrease_linear" with
    start > end). The paper sweeps f in [0.5, 0.95]. With `label_smoothing` eps > 0, cDPO's mix on the shifted
    margin (not in the paper): at f = 1 this is `sigmoid` exactly, so the autopilot can lower f on a (c)DPO run.
    """
    end = shift_lambda if shift_lambda_end is None else shift_lambda_end
    factor = shift_lambda + (end - shift_lambda) * progress
    return _smoothed(beta * (chosen_logratios - factor * rejected_logratios), label_smoothing)


def chi_po(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, chi_clip: ChiClip = 10.0) -> Tensor:
    """chi-PO (arXiv 2407.13399, Alg. 1): l(clip_C(beta * (phi(z_w) - phi(z_l)))), phi(z) = z + log z.

    z = pi/pi_ref = exp(r): the link adds the chi^2 divergence to DPO's KL, so moving far from the reference costs
    polynomially, not logarithmically, which provably resists over-optimisation. C = 2 R_max clips the argument
    to [-C, C] (the paper's clip); past it the gradient is zero. exp(r) is capped at r = 80 (float32 range).
    """
    z_w = torch.exp(chosen_logratios.clamp(max=80.0))
    z_l = torch.exp(rejected_logratios.clamp(max=80.0))
    delta = (z_w + chosen_logratios) - (z_l + rejected_logratios)
    return logistic(torch.clamp(beta * delta, -chi_clip, chi_clip))


def dr_dpo(
    chosen_scores: Tensor, rejected_scores: Tensor, *, beta: float, dr_dpo_beta_prime: BetaPrime = 1.0
) -> Tensor:
    """Dr. DPO (arXiv 2407.07880): -beta' log mean_batch exp(-l(beta * Delta) / beta').

    Distributionally robust over the pairs of a batch: the gradient weights each pair's DPO loss by
    softmax(-l_i / beta'), so pairs the model finds implausible (high loss: likely flipped labels) count less.
    One value for the whole batch, returned for every example (the trainer's mean is that value); as the
    authors' code (junkangwu/Dr_DPO, `loss.mode_weight` = beta', default 1).
    """
    per_pair = logistic(beta * (chosen_scores - rejected_scores))
    batch = -dr_dpo_beta_prime * (torch.logsumexp(-per_pair / dr_dpo_beta_prime, dim=0) - math.log(per_pair.numel()))
    return batch.expand_as(per_pair)


def simpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    simpo_gamma: SimpoGamma = 0.5,
) -> Tensor:
    """SimPO (arXiv 2405.14734, Eq. 6): l(beta * (logp_w / |y_w| - logp_l / |y_l|) - gamma). No reference model.

    The implicit reward is the length-normalised log-likelihood; gamma is a target margin. The paper uses beta
    around 2 to 2.5 and gamma / beta around 0.5; gamma is TRL's `simpo_gamma` (the SimPO code's gamma_beta_ratio
    times beta).
    """
    delta = _per_token_delta(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    return logistic(beta * delta - simpo_gamma)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0, stably (the two branches meet at -ln 2). x is capped just below 0: a sequence the
    model is certain of would give log 0."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    chosen_scored_tokens: Tensor,
    *,
    beta: float,
) -> Tensor:
    """ORPO (arXiv 2403.07691, Eqs. 4 and 7 as TRL cites them): NLL(y_w) + lambda * l(log(odds_w / odds_l)).

    odds(y) = P(y) / (1 - P(y)) with P(y) = exp(logp / |y|), the length-normalised likelihood. beta is
    lambda, the weight of the odds-ratio term, as in TRL's ORPOConfig (paper: 0.1). The NLL term is `sft`'s,
    token-averaged over the batch. No reference model.
    """
    avg_w, avg_l = chosen_logps / chosen_lengths.clamp(min=1), rejected_logps / rejected_lengths.clamp(min=1)
    log_odds = (avg_w - avg_l) - (_log1mexp(avg_w) - _log1mexp(avg_l))
    return sft(chosen_logps, chosen_scored_tokens, beta=beta) + beta * logistic(log_odds)


def odpo(
    chosen_scores: Tensor, rejected_scores: Tensor, score_gaps: Tensor, *, beta: float, odpo_alpha: OdpoAlpha = 1.0
) -> Tensor:
    """ODPO (arXiv 2402.10571): l(beta * Delta - alpha * log(score_w - score_l)).

    The pair must win by an offset that grows with how much better the chosen answer scored, so pairs with a
    small score gap are not pushed as far apart as pairs with a large one. Needs the score gap of each pair
    (pairs expanded from multi-response rows with scores). As the authors' code (rycolab/odpo, offset, no ratio).
    """
    return logistic(beta * (chosen_scores - rejected_scores) - odpo_alpha * torch.log(score_gaps))


@dataclass(frozen=True)
class LossSpec:
    """A loss from LOSSES: the function plus what its signature says it needs."""

    name: str
    fn: Callable[..., Tensor]
    summary: str
    sorts_batch: bool = False  # pairs lose their order inside the loss: no per-pair weights or filtering
    batch_loss: bool = False  # one value for the whole batch (repeated per example): no per-pair weights or filtering
    # names users know this loss by ("dpo" for sigmoid), each with what it means: an unknown loss.type that is one of
    # them is answered with this loss (dpo/training/loss_plan.py), and `dpo convert-trl` reads them too
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)

    @property
    def hyperparameters(self) -> dict[str, object]:
        """Keyword-only parameters other than beta, with their defaults."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "beta"}

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("ref_") or "logratios" in name or "scores" in name for name in self.inputs)

    @property
    def supports_f_divergence(self) -> bool:
        return "chosen_scores" in self.inputs

    @property
    def per_pair(self) -> bool:
        """Each example's value depends on its own pair only: per-pair weights (WPO) and filtering apply."""
        return not (self.sorts_batch or self.batch_loss)

    @property
    def needs_score_gaps(self) -> bool:
        """Takes the score gap of each pair: the data must come from multi-response rows with scores."""
        return "score_gaps" in self.inputs

    @property
    def includes_nll(self) -> bool:
        """Holds the token-averaged NLL of the chosen answers (the one use of `chosen_scored_tokens`): sft, orpo."""
        return "chosen_scored_tokens" in self.inputs


def _spec(
    fn: Callable[..., Tensor], summary: str, sorts_batch: bool = False, batch_loss: bool = False, **aliases: str
) -> LossSpec:
    return LossSpec(fn.__name__, fn, summary, sorts_batch, batch_loss, aliases)


# The one table of loss names. Docs, --help and error messages are built from it.
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            sigmoid,
            "DPO; with label_smoothing > 0, conservative DPO (cDPO)",
            dpo="plain DPO",
            cdpo="conservative DPO, with loss.label_smoothing > 0",
        ),
        _spec(ipo, "IPO: squared loss to a finite, length-normalised margin"),
        _spec(robust, "robust DPO (rDPO): unbiased under label-flip rate label_smoothing", rdpo="robust DPO"),
        _spec(hinge, "SLiC hinge loss", slic="SLiC"),
        _spec(dpop, "DPO-Positive: penalises chosen likelihood falling below the reference", dpo_positive="DPOP"),
        _spec(exo_pair, "EXO: reverse-KL preference matching", exo="EXO"),
        _spec(nca_pair, "NCA: noise-contrastive alignment, pairwise", nca="NCA"),
        _spec(bco_pair, "BCO: binary classifier optimisation, pairwise", bco="BCO"),
        _spec(sppo_hard, "SPPO with hard win probabilities", sppo="SPPO"),
        _spec(aot, "AOT: distributional alignment via optimal transport, paired", sorts_batch=True),
        _spec(aot_unpaired, "AOT, unpaired", sorts_batch=True),
        _spec(apo_zero, "APO-zero: raise chosen, lower rejected likelihood"),
        _spec(apo_down, "APO-down: lower both, the rejected one more"),
        _spec(discopop, "DiscoPOP: log-ratio modulated logistic/exponential loss"),
        _spec(sigmoid_norm, "DPO on length-normalised log-ratios"),
        _spec(sft, "NLL of the chosen answers (RPO's NLL term)", nll="the NLL term"),
        _spec(cal_dpo, "Cal-DPO: DPO plus calibration of the implicit rewards to +-1/(2 beta)"),
        _spec(dpo_shift, "DPO-Shift: the rejected log-ratio scaled down (fixed or linear factor)"),
        _spec(chi_po, "chi-PO: chi^2-plus-KL link on the likelihood ratio, clipped"),
        _spec(dr_dpo, "Dr. DPO: robust over the batch, down-weights implausible pairs", batch_loss=True),
        _spec(simpo, "SimPO: reference-free, length-normalised, with a target margin"),
        _spec(orpo, "ORPO: reference-free odds-ratio term plus the NLL of the chosen answers"),
        _spec(odpo, "ODPO: DPO with an offset from the pair's score gap (needs scored multi-response data)"),
    )
}


def markdown_table() -> str:
    """The loss table of docs/losses.md, built from LOSSES so the docs cannot drift from the code."""
    rows = [
        "| `loss.type` | what it is | hyperparameters (besides beta) | `regularizers.f_divergence` |",
        "|---|---|---|---|",
    ]
    for spec in LOSSES.values():
        hps = ", ".join(f"`{k}`" for k in spec.hyperparameters) or "-"
        rows.append(f"| `{spec.name}` | {spec.summary} | {hps} | {'yes' if spec.supports_f_divergence else '-'} |")
    return "\n".join(rows)


def compute_loss(name: str, tensors: dict[str, Tensor], *, beta: float, **hyperparameters: float) -> Tensor:
    """Call loss `name` with the tensors its signature asks for; returns the per-example loss (B,)."""
    spec = LOSSES[name]
    kwargs = {k: v for k, v in hyperparameters.items() if k in spec.hyperparameters}
    return spec.fn(**{k: tensors[k] for k in spec.inputs}, beta=beta, **kwargs)


# ---- f-divergence links (f-DPO, Wang et al. 2023, arXiv 2309.16240, Thm. 1) ------------------------
# The log-ratio u = log pi/pi_ref is replaced by f'(exp(u)) before it enters a loss that takes "scores".
# A link's keyword-only parameters are its `regularizers.*` keys (f_alpha), as a loss's are its `loss.*` keys.


def reverse_kl_scores(logratios: Tensor) -> Tensor:
    """f'(t) = log t + 1; the constant cancels in the chosen-rejected difference: plain DPO."""
    return logratios


def forward_kl_scores(logratios: Tensor) -> Tensor:
    """f'(t) = 1 - 1/t. The exponent is capped at 80 (as the alpha link's is): a summed log-ratio below -88.7 nats,
    common for a long rejected answer, would make exp overflow float32 and the loss NaN; at 80 the score is
    already -5.5e34, far past where any loss of it saturates."""
    return 1 - torch.exp((-logratios).clamp(max=80.0))


def js_divergence_scores(logratios: Tensor) -> Tensor:
    """f'(t) = log(2t / (t + 1)) = log 2 + log sigmoid(u)."""
    return math.log(2) + F.logsigmoid(logratios)


def alpha_divergence_scores(
    logratios: Tensor, *, f_alpha: Annotated[float, Gt(0), doc("alpha of the alpha-divergence")] = 0.5
) -> Tensor:
    """f'(t) = (t^(alpha-1) - 1) / (alpha - 1); alpha -> 1 is reverse KL. Exponent clamped as TRL does."""
    if abs(f_alpha - 1.0) < 1e-6:
        return logratios
    t = torch.clamp(((f_alpha - 1.0) * logratios).float(), max=80.0)
    return (torch.exp(t) - 1.0).to(logratios.dtype) * (1.0 / (f_alpha - 1.0))


# The one table of f-divergence names (`regularizers.f_divergence`).
F_DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "reverse_kl": reverse_kl_scores,
    "forward_kl": forward_kl_scores,
    "js_divergence": js_divergence_scores,
    "alpha_divergence": alpha_divergence_scores,
}
PLAIN_DPO_LINK = "reverse_kl"  # the identity link: every loss works with it


@dataclass(frozen=True)
class LossPlan:
    """What the trainer optimises (built from the recipe by dpo/training/loss_plan.py, run by dpo/training/trainer.py).

    terms            weighted loss names from LOSSES, summed
    beta             beta0; `beta_schedule` (kwargs of BetaController) moves it during training
    hyperparameters  loss hyperparameters (label_smoothing, dpop_lambda, ...), passed to the losses that take them
    f_divergence     link applied to the log-ratios of losses that take "scores" (f-DPO)
    f_alpha          the link's f_alpha where it takes one (None: its default)
    neftune_alpha    NEFTune noise on the policy's input embeddings while training (never on the reference)
    """

    terms: tuple[tuple[str, float], ...] = (("sigmoid", 1.0),)
    beta: float = 0.1
    hyperparameters: dict[str, float] = field(default_factory=dict)
    beta_schedule: dict = field(default_factory=dict)
    f_divergence: str = PLAIN_DPO_LINK
    f_alpha: float | None = None
    neftune_alpha: float | None = None

    def __post_init__(self):
        unknown = [name for name, _ in self.terms if name not in LOSSES]
        if unknown:
            raise ValueError(f"unknown loss {unknown}; known: {sorted(LOSSES)}")
        if self.f_divergence not in F_DIVERGENCES:
            raise ValueError(f"unknown f-divergence {self.f_divergence}; known: {sorted(F_DIVERGENCES)}")

    @property
    def needs_reference(self) -> bool:
        """Some term needs reference log-probs. When none does, the trainer keeps no reference model and runs
        no reference forward or precompute (SimPO, ORPO, the NLL term alone)."""
        return any(LOSSES[name].needs_reference for name, _ in self.terms)

    @property
    def needs_score_gaps(self) -> bool:
        return any(LOSSES[name].needs_score_gaps for name, _ in self.terms)

    def link(self) -> Callable[[Tensor], Tensor]:
        """The f-divergence link, logratios -> scores, with its f_alpha when one is set."""
        fn = F_DIVERGENCES[self.f_divergence]
        return fn if self.f_alpha is None else functools.partial(fn, f_alpha=self.f_alpha)


def cdpo_optimal_margin(label_smoothing: float) -> float:
    """beta * Delta at the cDPO optimum: log((1 - eps) / eps)."""
    return math.log((1 - label_smoothing) / label_smoothing)
