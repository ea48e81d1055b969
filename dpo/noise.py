"""How much a held-out metric moves by chance, and the one rule every stopping decision applies to it.

A held-out metric is a mean over n pairs, so it carries a standard error: sqrt(p(1 - p) / n) for an accuracy
(about 0.045 on 120 pairs at p = 0.5), s / sqrt(n) with s the spread of the per-pair values for a margin, a
log-prob or the loss. The trainer logs it next to the metric, as `eval_se/<name>` (metrics.STANDARD_ERROR_PREFIX).
The rule (docs/overfitting.md, "Stopping that knows its own noise"), with k = `early_stopping.noise_sigmas`:
a change smaller than k standard errors is no signal. Concretely:

* a run has *learned* only when its best value is beyond where it started by more than max(min_delta, z_T * SE),
  SE the standard error of the best value, "where it started" the first (step-0) evaluation or, for an
  accuracy, chance (0.5), whichever is better, and z_T the k-sigma level corrected for the T evaluations looked
  at so far (Bonferroni: the best of T noisy values is biased upward, so it must clear a higher bar); nothing
  stops and no learning rate is cut before that;
* early stopping stops (after `patience` evaluations without a new best) only at an evaluation that has *fallen*
  below the best by more than max(min_delta, k * SE), SE the standard error of that evaluation: a value within
  the noise of the best may still be on a slow rise or a plateau, which the step budget ends anyway;
* reduce-on-plateau counts an evaluation as an *improvement* only when it beats the best by more than
  max(threshold, k * SE): a gain within the noise is still a plateau;
* the overfitting onset needs the held-out fall over its window to exceed z_W standard errors of the difference
  between the window's ends (both are noisy), z_W the k-sigma level corrected for the W windows looked at so far.

Without a logged standard error (a callback's own metric, a gap, runs of earlier versions) SE is 0: the rule is
then the plain min_delta comparison, and "learned" means strictly better than the start. k = 0 turns the noise
rule off entirely (the behaviour of earlier versions).

Pure Python (no torch), so the trainer's callbacks, the learning-rate scheduler and the diagnostics of a finished
run all use this one rule.
"""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

from dpo.metrics import chance_level, direction, standard_error_key

DEFAULT_SIGMAS = 2.0  # one-sided 97.7%: a rise this large on a flat curve happens about once in 44 evaluations


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of `values`: population standard deviation / sqrt(n).

    For 0/1 values (an accuracy p) this is exactly sqrt(p(1 - p) / n). 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / n / n)


def look_corrected_sigmas(sigmas: float, looks: int) -> float:
    """The k-sigma one-sided level corrected for `looks` evaluations (Bonferroni): z at 1 - (1 - Phi(k)) / looks.

    1 look: k itself; with k = 2, 10 looks: 2.84, 20 looks: 3.05, 50 looks: 3.32. Any k >= 0 works, infinity
    included: the tail 1 - Phi(k) is computed as erfc(k / sqrt 2) / 2, not as 1 - Phi(k) (which rounds to 0 from
    k ~ 8.3), and where even that underflows (k beyond ~37) the level is the large-k limit sqrt(k^2 + 2 ln looks)."""
    if sigmas <= 0 or looks <= 1:
        return sigmas
    tail = 0.5 * math.erfc(sigmas / math.sqrt(2.0)) / looks
    if tail < sys.float_info.min:  # underflow: Phi-bar(z) ~ exp(-z^2 / 2) / z there, so z^2 ~ k^2 + 2 ln looks
        return math.hypot(sigmas, math.sqrt(2.0 * math.log(looks)))
    return -NormalDist().inv_cdf(tail)


def logged_error(metrics: dict, metric: str) -> float:
    """The standard error logged for `metric` in one evaluation's `metrics`, or 0.0 when there is none."""
    value = metrics.get(standard_error_key(metric))
    return float(value) if value is not None and math.isfinite(value) else 0.0


class NoiseRule:
    """The rule for one held-out metric watched in one direction: `improves` and `learned`, both pure.

    `sigmas` is k; `min_delta` the smallest change that counts whatever the noise."""

    def __init__(self, metric: str, mode: str = "auto", sigmas: float = DEFAULT_SIGMAS, min_delta: float = 0.0):
        self.metric = metric
        self.mode = direction(metric, mode)
        self.sigmas = sigmas
        self.min_delta = min_delta
        self.chance = chance_level(metric)

    def _better_by(self, value: float, than: float) -> float:
        """How much better `value` is than `than` in the watched direction (negative: worse)."""
        return value - than if self.mode == "max" else than - value

    def improves(self, value: float, best: float | None, error: float = 0.0) -> bool:
        """Does `value` (standard error `error`) beat `best` by more than the noise? Always, when there is no best."""
        if best is None:
            return math.isfinite(value)
        return math.isfinite(value) and self._better_by(value, best) > max(self.min_delta, self.sigmas * error)

    def start(self, first: float) -> float:
        """Where the run started: its first evaluation or chance, whichever is better."""
        if self.sigmas <= 0 or self.chance is None or not math.isfinite(first):
            return first
        return first if self._better_by(first, self.chance) > 0 else self.chance

    def learned(self, first: float, best: float | None, best_error: float = 0.0, looks: int = 1) -> bool:
        """Is `best` (standard error `best_error`, after `looks` evaluations) clearly beyond where the run started
        (`first`, or chance)? Always True with sigmas 0 (the rule off)."""
        if self.sigmas <= 0:
            return True
        if best is None or not math.isfinite(best):
            return False
        z = look_corrected_sigmas(self.sigmas, looks)
        return self._better_by(best, self.start(first)) > max(self.min_delta, z * best_error)

    def fallen(self, value: float, reference: float, error: float = 0.0, looks: int = 1) -> bool:
        """Is `value` worse than `reference` by more than the noise: k standard errors `error` (of `value`, or of
        the difference where `reference` is noisy too), k corrected for `looks` comparisons as in `learned`?"""
        z = look_corrected_sigmas(self.sigmas, looks)
        return math.isfinite(value) and self._better_by(reference, value) > max(self.min_delta, z * error)
