"""Stopping that knows its own noise (dpo/noise.py): early stopping, reduce-on-plateau and the overfitting onset on
simulated held-out accuracy curves with binomial noise, and the standard errors a real run logs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dpo.analysis.diagnostics import overfitting_onset
from dpo.noise import NoiseRule, look_corrected_sigmas, standard_error
from dpo.training.callbacks import BestCheckpointCallback
from dpo.training.execute import execute
from dpo.training.plateau import NoiseAwarePlateau
from tests.conftest import read_jsonl

PAIRS = 120  # the held-out set: SE of an accuracy near 0.5 is about 0.045
METRIC = "eval_rewards/accuracies"


def simulate(true_accuracies: list[float], rng: random.Random, pairs: int = PAIRS) -> list[tuple[float, float]]:
    """(observed accuracy, its standard error) per evaluation: each pair right with the true probability."""
    curve = []
    for p in true_accuracies:
        hits = sum(rng.random() < p for _ in range(pairs))
        observed = hits / pairs
        curve.append((observed, math.sqrt(observed * (1 - observed) / pairs)))
    return curve


def first_stop(callback: BestCheckpointCallback, curve, every: int = 10) -> int | None:
    """Feed the curve as evaluations at steps 0, 10, 20, ... (step 0: all rewards tie, accuracy 0, SE 0)."""
    callback.update(0, 0.0, 0.0)
    for i, (value, error) in enumerate(curve, start=1):
        _, stop = callback.update(i * every, value, error)
        if stop:
            return i * every
    return None


FLAT = [0.5] * 20  # 20 evaluations at chance: nothing is learned
RISE_FALL = [0.5 + 0.025 * i for i in range(1, 11)] + [0.75 - 0.02 * i for i in range(1, 11)]  # peak 0.75 at step 100


def test_standard_error_of_an_accuracy_is_the_binomial_one():
    values = [1.0] * 30 + [0.0] * 90
    assert standard_error(values) == pytest.approx(math.sqrt(0.25 * 0.75 / 120))
    assert standard_error([0.3]) == 0.0
    assert look_corrected_sigmas(2.0, 1) == 2.0 and 2.8 < look_corrected_sigmas(2.0, 10) < 2.9


def test_any_allowed_noise_sigmas_gives_a_level_even_where_the_normal_tail_underflows():
    """early_stopping.noise_sigmas accepts any k >= 0; 1 - Phi(k) rounds to 0 from k ~ 8.3, and inv_cdf(1.0) raised
    StatisticsError mid-training and while summary.json's overfitting onset was computed."""
    assert look_corrected_sigmas(2.0, 10) == pytest.approx(2.8373, abs=1e-4)  # unchanged where it always worked
    assert look_corrected_sigmas(10.0, 10) == pytest.approx(10.2255, abs=1e-4)
    levels = [look_corrected_sigmas(10.0, looks) for looks in (1, 2, 10, 100, 10_000, 10**9)]
    assert levels[0] == 10.0 and levels == sorted(levels) and levels[-1] < 12.0
    assert look_corrected_sigmas(40.0, 10**6) == pytest.approx(math.hypot(40.0, math.sqrt(2 * math.log(10**6))))
    assert look_corrected_sigmas(math.inf, 1000) == math.inf
    for sigmas in (10.0, math.inf):  # the rule and the onset work at these k: nothing learned, nothing fallen
        rule = NoiseRule(METRIC, sigmas=sigmas)
        assert not rule.learned(0.0, 0.7, 0.04, looks=50) and not rule.fallen(0.3, 0.7, 0.04, looks=50)
        evals = [{"step": 10 * i + 5, "rewards/accuracies": 0.5 + 0.02 * i} for i in range(30)]
        evals += [{"step": 10 * i + 10, "eval_loss": 0.5, METRIC: 0.9 - 0.02 * i, "eval_se/rewards/accuracies": 0.04}
                  for i in range(30)]  # fmt: skip
        evals.sort(key=lambda e: e["step"])
        assert overfitting_onset(evals, METRIC, 2, noise_sigmas=sigmas) is None
        assert overfitting_onset(evals, METRIC, 2) == 10  # the plain rule sees the fall


def test_flat_curve_at_chance_never_stops_with_the_noise_rule_and_often_without():
    """The issue's failure: patience 3 on a 120-pair accuracy that stays at chance. The plain rule stops on noise
    in most simulated runs; the noise rule stops in at most 5% of them (its one-sided level, look-corrected)."""
    plain_stops = noisy_stops = 0
    for seed in range(200):
        curve = simulate(FLAT, random.Random(seed))
        plain_stops += first_stop(BestCheckpointCallback(METRIC, patience=3), curve) is not None
        noisy_stops += first_stop(BestCheckpointCallback(METRIC, patience=3, noise_sigmas=2.0), curve) is not None
    assert plain_stops >= 150
    assert noisy_stops <= 10


SLOW_RISE = [0.5 + 0.012 * i for i in range(1, 21)]  # +0.012 per evaluation, a quarter of the noise


def test_genuine_rise_then_fall_stops_after_the_peak_and_keeps_weights_near_it():
    stops, best_steps = [], []
    for seed in range(50):
        callback = BestCheckpointCallback(METRIC, patience=3, noise_sigmas=2.0)
        stops.append(first_stop(callback, simulate(RISE_FALL, random.Random(seed))))
        best_steps.append(callback.best_step)
    assert all(stop is not None for stop in stops)  # it stops every time,
    assert sum(stop > 100 for stop in stops) >= 47  # nearly always after the peak (a noise spike can fool it)
    assert all(60 <= best <= 140 for best in best_steps)  # the kept weights are near the peak (0.65-0.75 true)


def test_slow_rise_is_stopped_less_often_than_by_the_plain_rule():
    plain = noisy = 0
    for seed in range(100):
        curve = simulate(SLOW_RISE, random.Random(seed))
        plain += first_stop(BestCheckpointCallback(METRIC, patience=3), curve) is not None
        noisy += first_stop(BestCheckpointCallback(METRIC, patience=3, noise_sigmas=2.0), curve) is not None
    assert noisy <= plain / 2


def test_rule_on_hand_numbers():
    rule = NoiseRule(METRIC, sigmas=2.0)
    assert rule.start(0.0) == 0.5  # step 0 ties every reward: chance is where the run starts
    assert not rule.improves(0.58, 0.5, 0.045)  # +0.08 < 2 SE
    assert rule.improves(0.60, 0.5, 0.045)
    assert not rule.fallen(0.62, 0.70, 0.044) and rule.fallen(0.60, 0.70, 0.045)
    assert not rule.learned(0.0, 0.58, 0.045, looks=1) and rule.learned(0.0, 0.65, 0.045, looks=1)
    assert not rule.learned(0.0, 0.62, 0.045, looks=10)  # the best of 10 looks must clear 2.84 SE
    loss = NoiseRule("eval_loss", sigmas=2.0)
    assert loss.start(0.693) == 0.693 and loss.learned(0.693, 0.55, 0.02) and not loss.learned(0.693, 0.68, 0.02)
    assert NoiseRule(METRIC, sigmas=0.0).learned(0.9, 0.1)  # k = 0: the rule is off


def test_onset_needs_a_fall_beyond_the_noise():
    def history(held_out, errors, train):
        events = []
        for i, (value, error, t) in enumerate(zip(held_out, errors, train, strict=True)):
            events.append({"step": 10 * i + 5, "rewards/margins": t})
            events.append({"step": 10 * i + 10, "eval_loss": 0.5, "eval_rewards/margins": value,
                           "eval_se/rewards/margins": error})  # fmt: skip
        return events

    train = [0.1, 0.2, 0.3, 0.4, 0.5]
    small = history([0.30, 0.31, 0.30, 0.29, 0.28], [0.05] * 5, train)  # falls by 0.02, SE 0.05
    assert overfitting_onset(small, "eval_rewards/margins", 2) == 20  # the plain rule calls it
    assert overfitting_onset(small, "eval_rewards/margins", 2, noise_sigmas=2.0) is None
    large = history([0.30, 0.40, 0.30, 0.20, 0.10], [0.03] * 5, train)
    assert overfitting_onset(large, "eval_rewards/margins", 2, noise_sigmas=2.0) == 20


def test_onset_on_simulated_curves_fires_on_a_real_fall_and_rarely_on_noise():
    """Train accuracy rising throughout; the held-out 120-pair accuracy flat at 0.6 (noise alone) or rising to 0.8 at
    step 100 and falling 0.04 per evaluation after it. Without the rule two falls in a row on a flat curve are an
    onset in nearly every run; with it (the ends' difference, look-corrected) in about 5%, while the real fall is
    found in about half the runs, after the peak."""
    train = [0.5 + 0.02 * i for i in range(1, 21)]

    def history(curve):
        events = []
        for i, ((value, error), t) in enumerate(zip(curve, train, strict=True), start=1):
            events.append({"step": 10 * i - 5, "rewards/accuracies": t})
            events.append({"step": 10 * i, "eval_loss": 0.5, METRIC: value, "eval_se/rewards/accuracies": error})
        return events

    plain = noisy = 0
    for seed in range(200):
        flat = history(simulate([0.6] * 20, random.Random(seed)))
        plain += overfitting_onset(flat, METRIC, 2) is not None
        noisy += overfitting_onset(flat, METRIC, 2, noise_sigmas=2.0) is not None
    assert plain >= 180 and noisy <= 16
    sharp = [0.5 + 0.03 * i for i in range(1, 11)] + [0.8 - 0.04 * i for i in range(1, 11)]
    onsets = [overfitting_onset(history(simulate(sharp, random.Random(s))), METRIC, 2, noise_sigmas=2.0)
              for s in range(200)]  # fmt: skip
    found = [step for step in onsets if step is not None]
    assert len(found) >= 70 and sum(step >= 90 for step in found) >= len(found) - 3


def _plateau(noise_sigmas: float) -> NoiseAwarePlateau:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return NoiseAwarePlateau(optimizer, METRIC, noise_sigmas, mode="max", factor=0.5, patience=2)


def test_plateau_never_cuts_the_learning_rate_at_chance():
    cut = 0
    for seed in range(100):
        scheduler = _plateau(2.0)
        for value, error in simulate(FLAT, random.Random(seed)):
            scheduler.step(value, error=error)
        cut += scheduler.optimizer.param_groups[0]["lr"] < 1.0
    assert cut <= 5
    scheduler = _plateau(0.0)  # torch's rule cuts on the noise of a flat curve
    for value, error in simulate(FLAT, random.Random(0)):
        scheduler.step(value, error=error)
    assert scheduler.optimizer.param_groups[0]["lr"] < 1.0


def test_plateau_counts_from_the_step_0_evaluation_when_it_has_one():
    """A held-out loss that fell from 0.693 (step 0) to 0.45 before the first evaluation during training, then stays
    flat: from step 0 the run has learned and the flat stretch is a plateau; counted from its first value (0.45),
    nothing was learned and nothing is cut."""
    flat = [(0.45, 0.02)] * 6
    lrs = {}
    for start in (0.693, None):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = NoiseAwarePlateau(optimizer, "eval_loss", 2.0, start=start, mode="min", factor=0.5, patience=2)
        for value, error in flat:
            scheduler.step(value, error=error)
        lrs[start] = optimizer.param_groups[0]["lr"]
    assert lrs == {0.693: 0.5, None: 1.0}


def test_plateau_cuts_after_a_genuine_rise():
    scheduler = _plateau(2.0)
    curve = [(0.5, 0.045), (0.6, 0.045), (0.7, 0.042), (0.8, 0.037), (0.8, 0.037), (0.79, 0.037), (0.8, 0.037)]
    lrs = []
    for value, error in curve:
        scheduler.step(value, error=error)
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]  # three evaluations without a 2-SE gain after 0.8
    assert set(scheduler.state_dict()) >= {"first", "best_error", "looks", "noise_sigmas"}


def test_a_run_logs_the_standard_error_of_each_per_pair_metric(tiny_recipe, tmp_path):
    execute(tiny_recipe, ["training.max_steps=2", "training.eval_steps=1"], output_dir=tmp_path / "run")
    evaluations = [e for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in e]
    for event in evaluations:
        p = event["eval_rewards/accuracies"]
        assert event["eval_se/rewards/accuracies"] == pytest.approx(math.sqrt(p * (1 - p) / 8), abs=1e-6)
        assert event["eval_se/loss"] >= 0 and "eval_se/rewards/margins" in event and "eval_se/logps/chosen" in event
    assert evaluations[0]["eval_se/rewards/margins"] == 0.0  # step 0 under LoRA: every margin is exactly 0
    assert evaluations[-1]["eval_se/rewards/margins"] > 0


def test_held_out_metrics_are_means_over_pairs_however_the_pairs_are_batched(tiny_recipe, tmp_path):
    """8 held-out pairs in batches of 3, 3 and 2 log the same means as in one batch of 8: a mean of batch means would
    weigh the last batch's 2 pairs as much as 3 (the standard error is that of the pair mean, so the mean must be);
    a per-token metric is a mean over every held-out token, whichever batch it is in."""
    logged = {}
    for size in (8, 3):
        run = tmp_path / f"eval-batch-{size}"
        execute(tiny_recipe, ["training.max_steps=2", "training.eval_steps=1",
                              f"training.per_device_eval_batch_size={size}"], output_dir=run)  # fmt: skip
        logged[size] = [e for e in read_jsonl(run / "metrics.jsonl") if "eval_loss" in e]
    per_pair = ["eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected"]
    # over held-out tokens: the logits (the tiny model's entropy is near uniform and its token accuracy 0 in any
    # batch, so they would pass either way)
    names = [*per_pair, "eval_logits/chosen", "eval_logits/rejected"]
    assert len(logged[8]) == len(logged[3]) == 3
    for whole, batched in zip(logged[8], logged[3], strict=True):
        for name in names:
            assert batched[name] == pytest.approx(whole[name], rel=1e-4, abs=1e-7), (whole["step"], name)
    assert logged[3][-1]["eval_rewards/margins"] != 0  # trained: the batches' means differ, so the weighting shows


def test_a_run_hands_each_evaluation_with_its_logged_standard_error_to_early_stopping_and_the_plateau(
    tiny_recipe, tmp_path, monkeypatch
):
    """The rule is only as good as the standard errors it gets: in a real run, early stopping and reduce-on-plateau
    each see every evaluation's value of the watched metric with the eval_se/ that metrics.jsonl logs next to it."""
    seen = {"early stopping": [], "plateau": []}
    update, step = BestCheckpointCallback.update, NoiseAwarePlateau.step

    def spy_update(self, at, value, error=0.0, last=False):
        seen["early stopping"].append((value, error))
        return update(self, at, value, error, last)

    def spy_step(self, metrics, epoch=None, error=0.0):
        seen["plateau"].append((float(metrics), error))
        return step(self, metrics, epoch, error=error)

    monkeypatch.setattr(BestCheckpointCallback, "update", spy_update)
    monkeypatch.setattr(NoiseAwarePlateau, "step", spy_step)
    overrides = [
        "early_stopping.metric=eval_rewards/accuracies",
        "early_stopping.patience=5",
        "training.lr_scheduler_type=reduce_lr_on_plateau",
        "training.max_steps=3",
        "training.eval_steps=1",
    ]
    _, trainer = execute(tiny_recipe, overrides, output_dir=tmp_path / "run")
    logged = [(e[METRIC], e["eval_se/rewards/accuracies"]) for e in read_jsonl(tmp_path / "run" / "metrics.jsonl")
              if "eval_loss" in e]  # fmt: skip
    assert trainer.lr_scheduler.first == logged[0][0]  # the plateau's start: the step-0 evaluation
    assert seen["early stopping"] == pytest.approx(logged)  # step 0 and every evaluation after it
    assert seen["plateau"] == pytest.approx(logged[1:])  # stepped at the evaluations during training
    assert any(error > 0 for _, error in logged[1:])


def test_the_progress_line_shows_each_headline_number_with_its_noise(capsys):
    from types import SimpleNamespace

    from dpo.training.callbacks import CompactProgressCallback

    logs = {
        "eval_loss": 0.65,
        "eval_se/loss": 0.02,
        "eval_rewards/accuracies": 0.6,
        "eval_se/rewards/accuracies": 0.0447,
    }
    CompactProgressCallback().on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=10), None, logs)
    assert capsys.readouterr().out == "held-out @ step 10: loss 0.650 ± 0.020, rewards/accuracies 0.600 ± 0.045\n"
