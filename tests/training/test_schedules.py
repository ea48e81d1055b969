"""Learning-rate schedules: every transformers scheduler passes through; reduce-on-plateau follows the
early-stopping metric."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from dpo.errors import UserError
from dpo.training.execute import execute
from dpo.training.gate import check
from tests.conftest import read_jsonl


class ConstantMetric(TrainerCallback):
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_flat"] = 1.0


@pytest.mark.slow
def test_reduce_on_plateau_halves_lr_after_patience_plus_one_flat_evaluations(tiny_recipe, tmp_path):
    """torch's ReduceLROnPlateau (mode max, patience 1, factor 0.5) on a flat metric, one evaluation per step:
    eval@1 sets the best; eval@2 is bad #1; eval@3 is bad #2 > patience -> lr x 0.5; eval@4 bad #1; eval@5 -> x 0.5.
    The learning rate logged at step k is the one step k trained with, so: 1, 1, 1, 0.5, 0.5, 0.25 (x 0.01)."""
    overrides = [
        "early_stopping.metric=eval_flat",
        "early_stopping.mode=max",
        "training.lr_scheduler_type=reduce_lr_on_plateau",
        "training.lr_scheduler_kwargs={factor: 0.5, patience: 1}",
        "early_stopping.noise_sigmas=0",  # torch's own rule (with the noise rule a flat metric never plateaus)
        "training.max_steps=6",
        "training.eval_steps=1",
        "training.learning_rate=0.01",
    ]
    execute(
        tiny_recipe, overrides, output_dir=tmp_path / "run", callbacks=[ConstantMetric()], extra_metrics=("eval_flat",)
    )
    lrs = [r["learning_rate"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "grad_norm" in r]
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025])


def test_plateau_mode_must_agree_with_early_stopping(tiny_recipe, tmp_path):
    from dpo.training.arguments import build_dpo_config

    ok = check(tiny_recipe, ["training.lr_scheduler_type=reduce_lr_on_plateau"])
    config = build_dpo_config(ok.loaded, tmp_path)
    assert config.metric_for_best_model == "eval_rewards/margins" and config.greater_is_better is True
    assert config.lr_scheduler_kwargs["mode"] == "max"
    with pytest.raises(UserError, match="contradicts early_stopping"):
        check(
            tiny_recipe, ["training.lr_scheduler_type=reduce_lr_on_plateau", "training.lr_scheduler_kwargs={mode: min}"]
        )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["training.eval_steps=4"], "training.eval_steps 4 >= training.max_steps 4"),  # the one evaluation is the last
        (  # found once the data are read: one epoch of the 32 training pairs, 8 steps, evaluated at its end
            ["training.max_steps=-1", "training.num_train_epochs=1", "training.eval_strategy=epoch"],
            "training.eval_strategy 'epoch': an epoch is 8 steps (32 training pairs at 4 a step), not fewer than "
            "the run's 8 steps (training.num_train_epochs 1)",
        ),
    ],
)
def test_plateau_needs_evaluations_during_training(tiny_recipe, overrides, reason):
    """Without an evaluation before the last step the scheduler is never stepped: a setting that does nothing."""
    plateau = "training.lr_scheduler_type=reduce_lr_on_plateau"
    with pytest.raises(UserError) as raised:
        check(tiny_recipe, [plateau, *overrides])
    assert str(raised.value) == (
        f"--set: training.lr_scheduler_type: needs evaluations during training ({reason}): reduce_lr_on_plateau "
        "would never cut the learning rate"
    )
    assert check(tiny_recipe, [plateau, "training.eval_steps=2"])  # an evaluation at step 2 of 4


@pytest.mark.parametrize(
    ("scheduler", "kwargs"),
    [
        ("linear", None),
        ("cosine", None),
        ("cosine_with_min_lr", "{min_lr: 1.0e-4}"),
        ("constant_with_warmup", None),
        ("polynomial", "{power: 2.0}"),
        ("inverse_sqrt", None),
        ("warmup_stable_decay", "{num_decay_steps: 2}"),
    ],
)
@pytest.mark.slow
def test_transformers_schedulers_shape_the_logged_lr(tiny_recipe, tmp_path, scheduler, kwargs):
    overrides = [
        f"training.lr_scheduler_type={scheduler}",
        "training.warmup_steps=2",
        "training.max_steps=6",
        "training.eval_steps=6",
        "training.learning_rate=0.01",
    ] + ([f"training.lr_scheduler_kwargs={kwargs}"] if kwargs else [])
    execute(tiny_recipe, overrides, output_dir=tmp_path / "run")
    lrs = [r["learning_rate"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "grad_norm" in r]
    assert len(lrs) == 6
    assert lrs[0] < lrs[1] <= 0.01 + 1e-12  # linear warmup over the first 2 steps
    if scheduler in ("linear", "cosine", "cosine_with_min_lr", "polynomial", "warmup_stable_decay"):
        assert lrs[-1] < lrs[2]  # decays after warmup
    if scheduler == "constant_with_warmup":
        assert lrs[2:] == pytest.approx([0.01] * 4)


def test_a_metric_beta_scales_is_not_watched_under_a_moving_beta(tiny_recipe):
    """Under a linear beta schedule a rising beta makes each evaluation's margin larger though the model did not
    change: early stopping on it would never stop, reduce-on-plateau never cut. The check is on the metric beta
    scales (the table's scales_with_beta), only where something compares it and only where beta moves."""
    moving = ["loss.beta_schedule={type: linear, end: 0.5}"]
    for watcher in (["early_stopping.patience=2"], ["training.lr_scheduler_type=reduce_lr_on_plateau"]):
        with pytest.raises(UserError, match="eval_loss is scaled by beta, which loss.beta_schedule \\(linear\\)"):
            check(tiny_recipe, [*moving, *watcher, "early_stopping.metric=eval_loss"])
    with pytest.raises(UserError, match="autopilot compares them"):
        check(tiny_recipe, ["loss.beta_schedule={type: adaptive}", "autopilot.enabled=true",
                            "early_stopping.metric=eval_rewards/margins"])  # fmt: skip
    assert check(tiny_recipe, [*moving, "early_stopping.patience=2", "early_stopping.metric=eval_rewards/accuracies"])
    assert check(tiny_recipe, [*moving, "early_stopping.metric=eval_rewards/margins"])  # tracked, compared by nothing
    assert check(tiny_recipe, ["early_stopping.patience=2", "early_stopping.metric=eval_rewards/margins"])  # constant
