"""Best-checkpoint tracking and early stopping: exact trigger points, and the restored model is the best one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState

from dpo.metrics import direction
from dpo.training.callbacks import BestCheckpointCallback
from dpo.training.execute import execute


def feed(callback, values, start=10, every=10):
    """Feed evaluations at steps 10, 20, ...; return the step at which the callback said stop (or None)."""
    for i, value in enumerate(values):
        _, stop = callback.update(start + i * every, value)
        if stop:
            return start + i * every
    return None


@pytest.mark.parametrize(
    ("values", "patience", "min_delta", "stop_at", "best_step"),
    [
        ([1.0, 2.0, 3.0, 4.0], 2, 0.0, None, 40),  # always improving
        ([1.0, 2.0, 1.5, 1.9, 1.8], 3, 0.0, 50, 20),  # 3 evaluations without beating 2.0
        ([1.0, 2.0, 1.5, 1.9, 1.8], 2, 0.0, 40, 20),
        ([1.0, 1.05, 1.08, 1.09], 2, 0.1, 30, 10),  # +0.05 and +0.08 are below min_delta 0.1
        ([1.0, 1.2, 1.25, 1.5], 2, 0.1, None, 40),  # +0.2 resets, +0.05 counts 1, +0.3 (vs 1.2) resets
        ([1.0, float("nan"), float("nan")], 2, 0.0, 30, 10),  # non-finite evaluations never improve
    ],
)
def test_trigger_points_for_max_mode(values, patience, min_delta, stop_at, best_step):
    callback = BestCheckpointCallback("eval_rewards/margins", patience=patience, min_delta=min_delta)
    assert feed(callback, values) == stop_at
    assert callback.best_step == best_step


def test_min_mode_and_warmup():
    callback = BestCheckpointCallback("eval_loss", patience=1, warmup_steps=35)
    assert callback.mode == "min"
    # worse at 20 and 30, but not before step 35; worse again at 40 -> stop
    assert feed(callback, [0.5, 0.6, 0.7, 0.8]) == 40
    assert callback.best_step == 10 and callback.best_value == 0.5


def test_no_patience_never_stops():
    callback = BestCheckpointCallback("eval_loss")
    assert feed(callback, [0.1, 0.9, 0.9, 0.9, 0.9]) is None and callback.best_step == 10


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("eval_rewards/margins", "max"),
        ("eval_rewards/accuracies", "max"),
        ("eval_loss", "min"),
        ("eval_logps/accuracies", "max"),
        ("eval_gap/margins", "min"),
        ("eval_gap/accuracies", "min"),
        ("eval_logratios/chosen", "max"),
    ],
)
def test_mode_inference(metric, mode):
    assert direction(metric) == mode


class ScriptedMetric(TrainerCallback):
    """Sets eval_scripted to a fixed value per evaluation step, before the early-stopping callback reads it."""

    def __init__(self, values):
        self.values = values
        self.last_weights = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_scripted"] = self.values[state.global_step]

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # the adapter as training left it, before the best checkpoint is restored
        self.last_weights = {
            k.replace(".default", ""): v.clone() for k, v in model.state_dict().items() if "lora_" in k
        }


@pytest.mark.slow
@pytest.mark.parametrize(("values", "best_step", "stopped"), [([0, 1, 3, 2, 1, 0, 0], 2, 4), ([5, 1, 1, 1], 0, 2)])
def test_early_stop_restores_the_best_checkpoint(tiny_recipe, tmp_path, values, best_step, stopped):
    """The scripted held-out metric peaks at `best_step`; patience 2 stops two evaluations later, and final/
    holds the best checkpoint's adapter, parameter for parameter (not the last step's), and summary.json's
    reward_beta is the beta of that checkpoint's evaluation (a linear beta schedule: not the last step's)."""
    run_dir = tmp_path / "run"
    overrides = [
        "early_stopping.metric=eval_scripted",
        "early_stopping.mode=max",  # a callback's metric: dpo's metric table does not know its direction
        "early_stopping.patience=2",
        # the plain rule: with the noise rule, [5, 1, 1, 1] (best at step 0) would never stop (nothing learned)
        "early_stopping.noise_sigmas=0",
        f"training.max_steps={len(values) - 1}",
        "training.eval_steps=1",
        "loss.beta_schedule.type=linear",  # 0.1 at step 0 to 0.5 at the last step
        "loss.beta_schedule.end=0.5",
    ]
    scripted = ScriptedMetric(values)
    summary, _ = execute(
        tiny_recipe, overrides, output_dir=run_dir, callbacks=[scripted], extra_metrics=("eval_scripted",)
    )
    assert summary["stop_reason"] == "early_stopped" and summary["steps"] == stopped
    assert summary["best_step"] == best_step and summary["best_metric"]["value"] == values[best_step]
    assert summary["final_weights"] == "best"
    assert summary["reward_beta"] == pytest.approx(0.1 + 0.4 * best_step / (len(values) - 1))
    final = load_file(run_dir / "final" / "adapter_model.safetensors")
    best = load_file(run_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)
    # and it is not the last step's adapter: training moved the weights after the best step
    assert set(final) == set(scripted.last_weights)
    assert any(not torch.equal(final[k], scripted.last_weights[k]) for k in final)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if "eval_loss" in e] == list(range(stopped + 1))


def test_an_evaluation_without_the_watched_gap_is_skipped():
    """A gap (eval_gap/*) is logged only at an evaluation with train values logged since the previous one: not at
    step 0, nor after no train log (logging_steps not dividing eval_steps). Early stopping skips such an evaluation;
    any other watched metric that is missing is still an error that names it."""
    state, control = TrainerState(), TrainerControl()
    callback = BestCheckpointCallback("eval_gap/accuracies", patience=1)
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.69})  # step 0: no train values yet
    assert callback.history == [] and callback.best_step is None
    for step, gap in ((2, 0.1), (4, 0.3)):
        state.global_step = step
        callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.6, "eval_gap/accuracies": gap})
    state.global_step = 6
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.6})  # no train log since step 4
    assert callback.history == [(2, 0.1), (4, 0.3)] and callback.best_step == 2 and callback.stopped_at == 4
    with pytest.raises(KeyError, match=r"early_stopping.metric 'eval_kl' was not computed; available: \['eval_loss'\]"):
        BestCheckpointCallback("eval_kl").on_evaluate(None, state, control, metrics={"eval_loss": 0.6})


@pytest.mark.slow
def test_watching_a_gap_trains_through_evaluations_that_lack_it(tiny_recipe, tmp_path):
    """Logged every 3 steps, evaluated every 2: the gap exists only at step 4 (train values logged at step 3); the
    evaluations at steps 0 and 2 have none, and the run goes on past them."""
    overrides = ["early_stopping.metric=eval_gap/accuracies", "early_stopping.patience=1", "training.logging_steps=3"]
    summary, _ = execute(tiny_recipe, overrides, output_dir=tmp_path / "run")
    assert summary["steps"] == 4 and summary["stop_reason"] == "completed"
    assert summary["best_step"] == 4 and summary["best_metric"]["name"] == "eval_gap/accuracies"
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if "eval_gap/accuracies" in e] == [4]


@pytest.mark.slow
def test_reduce_on_plateau_watching_a_gap_skips_evaluations_that_lack_it(tiny_recipe, tmp_path):
    """Reduce-on-plateau on a gap, logged every 3 steps and evaluated every 2: the evaluation at step 2 has no gap;
    our plateau and transformers' best-metric bookkeeping (which raised KeyError) skip it, and the run completes."""
    overrides = ["early_stopping.metric=eval_gap/accuracies", "training.logging_steps=3",
                 "training.lr_scheduler_type=reduce_lr_on_plateau"]  # fmt: skip
    summary, _ = execute(tiny_recipe, overrides, output_dir=tmp_path / "run")
    assert summary["steps"] == 4 and summary["stop_reason"] == "completed"
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if "eval_gap/accuracies" in e] == [4]


@pytest.mark.slow
def test_samples_are_answered_by_the_restored_best_weights_and_say_so(tiny_recipe, tmp_path):
    """The scripted metric peaks at step 1 of 4 and patience 3 never runs out: the best checkpoint (step 1) is
    restored after step 4, and samples.json, generated after that, names step 1, not the trainer's step 4."""
    overrides = [
        "early_stopping.metric=eval_scripted",
        "early_stopping.mode=max",
        "early_stopping.patience=3",
        "early_stopping.noise_sigmas=0",
        "training.eval_steps=1",
        "logging.samples=1",
    ]
    scripted = ScriptedMetric([0, 3, 1, 1, 1])
    summary, _ = execute(
        tiny_recipe, overrides, output_dir=tmp_path / "run", callbacks=[scripted], extra_metrics=("eval_scripted",)
    )
    assert summary["steps"] == 4 and summary["best_step"] == 1 and summary["final_weights"] == "best"
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert samples["step"] == 1 and "(its weights of step 1)" in samples["what"]
    assert samples["reference"] == "the base model (the trained model with its adapter disabled)"


def test_a_stop_at_the_last_step_is_no_early_stop():
    """Patience runs out at step 20: with 30 steps that stops the run early; with 20 the budget is spent anyway, so
    nothing is stopped early (stop_reason stays completed). The best is tracked either way."""
    for max_steps, stopped_at in ((30, 20), (20, None)):
        callback = BestCheckpointCallback("eval_loss", patience=1)
        state, control = TrainerState(max_steps=max_steps), TrainerControl()
        for step, loss in ((0, 0.5), (10, 0.4), (20, 0.6)):
            state.global_step = step
            callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        assert callback.best_step == 10 and callback.bad_evaluations == 1
        assert callback.stopped_at == stopped_at and control.should_training_stop is (stopped_at is not None)


@pytest.mark.slow
def test_patience_running_out_at_the_last_step_completes_the_run(tiny_recipe, tmp_path):
    """The scripted metric peaks at step 1; patience 3 runs out at step 4, the last of 4: a completed run."""
    overrides = [
        "early_stopping.metric=eval_scripted",
        "early_stopping.mode=max",
        "early_stopping.patience=3",
        "early_stopping.noise_sigmas=0",
        "training.eval_steps=1",
        "logging.samples=0",
    ]
    summary, _ = execute(
        tiny_recipe,
        overrides,
        output_dir=tmp_path / "run",
        callbacks=[ScriptedMetric([0, 3, 2, 2, 1])],
        extra_metrics=("eval_scripted",),
    )
    assert summary["stop_reason"] == "completed" and summary["steps"] == summary["max_steps"] == 4
    assert summary["best_step"] == 1 and summary["final_weights"] == "best"
