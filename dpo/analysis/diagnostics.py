"""Overfitting diagnostics from a run's metric history: where overfitting starts, and what to do about it.

Pure functions over the list of log events (metrics.jsonl / trainer.state.log_history); no torch and no
trainer, so they work on any finished run directory.

Per evaluation the trainer also logs the train-minus-held-out gaps (dpo/metrics.py lists them, dpo/training/trainer.py
computes them):
    eval_gap/margins     = train rewards/margins    - held-out rewards/margins
    eval_gap/accuracies  = train rewards/accuracies - held-out rewards/accuracies
    eval_gap/loss        = held-out loss            - train loss
each with train values averaged over the steps since the previous evaluation. Positive = the model does
better on what it trained on than on held-out data.
"""

from __future__ import annotations

import math

from dpo.metrics import lookup, train_counterpart
from dpo.noise import NoiseRule, logged_error

DISPLACEMENT_WARN_NATS = 1.0  # held-out chosen log-prob this far below the reference triggers a warning
LOSS_RISE_WARN = 0.10  # held-out loss this much (relative) above its minimum counts as "rising"
ACCURACY_GAP_WARN = 0.15  # train minus held-out reward accuracy above this counts as memorisation


def evaluations(history: list[dict]) -> list[dict]:
    return [h for h in history if "eval_loss" in h]


def train_value_at(history: list[dict], step: int, name: str, since: int) -> float | None:
    """Mean of the train metric `name` over the log events in (since, step]."""
    values = [h[name] for h in history if "eval_loss" not in h and name in h and since < h.get("step", 0) <= step]
    return sum(values) / len(values) if values else None


ONSET_NOT_APPLICABLE = "not applicable (no train counterpart)"  # how the report and the model card say it


def onset_not_checked(metric: str) -> str | None:
    """Why the onset cannot be looked for on `metric`, or None when it can: it compares the held-out curve with the
    same metric on the training batches, which a metric logged only held-out (a gap, the KL) does not have."""
    if train_counterpart(metric) is None:
        known = lookup(metric) is not None
        why = "it is only logged held-out" if known else "not a dpo metric with a train counterpart"
        return f"{metric} has no train counterpart ({why}): no train curve to compare it with"
    return None


def onset_not_checked_in(block: dict) -> str | None:
    """The reason summary.json's `overfitting` block records for not looking for the onset, or None when it was
    looked for; a block written before the reason was recorded is told by its metric."""
    if "onset_not_checked" in block:
        return block["onset_not_checked"]
    metric = block.get("metric")
    return onset_not_checked(metric) if isinstance(metric, str) else None


def overfitting_onset(
    history: list[dict], metric: str, patience: int = 2, mode: str = "auto", noise_sigmas: float = 0.0
) -> int | None:
    """The first evaluation step after which the held-out `metric` got worse for `patience` evaluations in a
    row while the matching train metric improved. None when that never happened.

    With `noise_sigmas` k > 0 the held-out fall over those evaluations must also exceed k standard errors of the
    difference between the window's two ends, k corrected for the windows looked at so far (dpo/noise.py): a fall
    within the noise is no onset. On a flat 120-pair accuracy the plain rule finds an onset in nearly every run of
    20 evaluations, the noise rule in about 5% (tests/training/test_noise_stopping.py)."""
    train_name = train_counterpart(metric)
    if train_name is None:  # only logged held-out (a gap, the KL, a callback's metric): no train curve to compare
        return None
    rule = NoiseRule(metric, mode, noise_sigmas)
    mode = rule.mode
    points = []  # (step, held-out value, train value since previous evaluation, held-out standard error)
    previous = -1
    for h in evaluations(history):
        step = h["step"]
        train = train_value_at(history, step, train_name, previous)
        previous = step
        if metric in h and train is not None and math.isfinite(h[metric]):
            points.append((step, h[metric], train, logged_error(h, metric)))
    sign = 1 if mode == "max" else -1
    for i in range(len(points) - patience):
        window = points[i : i + patience + 1]
        held_worse = all(sign * (b[1] - a[1]) < 0 for a, b in zip(window, window[1:], strict=False))
        train_better = all(sign * (b[2] - a[2]) > 0 for a, b in zip(window, window[1:], strict=False))
        # both ends of the window are noisy, so the fall's standard error is that of a difference; and each window
        # is one more look at the curve, so the bar rises with their number (Bonferroni, as for "learned")
        error = math.hypot(window[0][3], window[-1][3])
        if held_worse and train_better and rule.fallen(window[-1][1], window[0][1], error, looks=i + 1):
            return window[0][0]
    return None


def warnings_for(history: list[dict], noise_sigmas: float = 0.0, loss_since: int = -1) -> list[str]:
    """Plain-language warnings about a finished run, each naming the numbers and a control to try.

    The held-out loss is compared only across evaluations after step `loss_since`, the autopilot's last change to the
    loss (Autopilot.loss_changed_at): a loss with an NLL term or more smoothing added is another number, and its
    rise over the old minimum is that control, not overconfidence. Nor across evaluations whose logged beta differs
    (a beta schedule): held-out loss and margin scale with beta.

    With `noise_sigmas` k > 0 the displacement and gap thresholds are raised by k standard errors of the number they
    read (the eval_se/ logged beside it; the held-out reward accuracy's for the gap), and the loss must rise by more
    than max(10% of its minimum, k standard errors of the last value), as in the autopilot's rules
    (dpo/training/autopilot.py): a value within the noise of its threshold is no warning. (A loss of either sign:
    the 10% is of its size.)"""
    evals = evaluations(history)
    if len(evals) < 2:
        return []
    found = []
    last = evals[-1]

    def noise(metric: str) -> float:
        return noise_sigmas * logged_error(last, metric)

    displacement = last.get("eval_logratios/chosen")
    if displacement is not None and displacement < -(DISPLACEMENT_WARN_NATS + noise("eval_logratios/chosen")):
        found.append(
            f"held-out chosen log-prob fell by {-displacement:.1f} nats vs the reference (step {last['step']}): "
            "likelihood displacement; consider loss.type: dpop or regularizers.nll_weight"
        )
    losses = [(e["step"], e["eval_loss"]) for e in evals
              if e["step"] > loss_since and math.isfinite(e.get("eval_loss", math.nan))]  # fmt: skip
    # under a beta that moved between them (a beta schedule) loss and margin scale with beta: not comparable
    betas = {e.get("eval_beta") for e in evals if e["step"] > loss_since} - {None}
    if losses and len(betas) <= 1:
        best_step, best_loss = min(losses, key=lambda p: p[1])
        at_best = next(e for e in evals if e["step"] == best_step)
        margin_now, margin_then = last.get("eval_rewards/margins"), at_best.get("eval_rewards/margins")
        rise_bar = max(LOSS_RISE_WARN * abs(best_loss), noise("eval_loss"))
        rose = last["eval_loss"] - best_loss > rise_bar and best_step < last["step"]
        if rose and margin_now is not None and margin_then is not None and margin_now > margin_then:
            found.append(
                f"held-out margin kept rising ({margin_then:.3f} -> {margin_now:.3f}) while held-out loss rose from "
                f"its minimum {best_loss:.3f} at step {best_step} to {last['eval_loss']:.3f}: margins grow with "
                "confidence, not correctness; early-stop on eval_loss or eval_rewards/accuracies instead"
            )
    gap = last.get("eval_gap/accuracies")
    if gap is not None and gap > ACCURACY_GAP_WARN + noise("eval_rewards/accuracies"):
        found.append(
            f"train reward accuracy exceeds held-out by {gap:.2f} at step {last['step']}: the model memorises "
            "training pairs; consider loss.label_smoothing (cDPO), fewer steps, or early stopping"
        )
    return found


def overfitting_block(
    history: list[dict],
    metric: str,
    patience: int | None,
    mode: str = "auto",
    noise_sigmas: float = 0.0,
    loss_since: int = -1,
) -> dict:
    """The `overfitting` block of summary.json (`loss_since`: see warnings_for)."""
    patience = patience or 2
    return {
        "metric": metric,
        "patience": patience,
        "noise_sigmas": noise_sigmas,  # the onset and the warnings depend on it
        "onset_step": overfitting_onset(history, metric, patience, mode, noise_sigmas),
        "onset_not_checked": onset_not_checked(metric),  # None: looked for (onset_step None then: not found)
        "warnings": warnings_for(history, noise_sigmas, loss_since),
    }
