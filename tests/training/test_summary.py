"""summary.json (dpo/training/summary.py) from a trainer's state and log history, without training."""

from __future__ import annotations

import time
from types import SimpleNamespace

from dpo.training.beta import BetaController
from dpo.training.losses import LossPlan
from dpo.training.summary import finished_summary, with_step_0

HISTORY = [  # trainer.state.log_history of a 4-step run evaluated every 2 steps: train() started it, no step 0
    {"step": 1, "loss": 0.60},
    {"step": 2, "eval_loss": 0.66, "eval_rewards/margins": 0.5},
    {"step": 3, "loss": 0.50},
    {"step": 4, "eval_loss": 0.67, "eval_rewards/margins": 0.9},
]
INITIAL = {"eval_loss": 0.60, "eval_rewards/margins": 0.0, "eval_runtime": 1.0}  # Trainer.evaluate_untrained()


def test_the_overfitting_warnings_read_the_step_0_evaluation(tmp_path):
    """Held-out loss 0.60 at step 0, then 0.66 and 0.67 while the margin rose from 0 to 0.9: 12% above its minimum,
    the confident-but-wrong warning (the autopilot's rule reads step 0 too). From the log history alone the minimum
    is step 2's 0.66 and the rise of 0.01 no warning."""
    state = SimpleNamespace(log_history=HISTORY, global_step=4, max_steps=4)
    trainer = SimpleNamespace(state=state, loss_plan=LossPlan(), beta_controller=BetaController(beta0=0.1),
                              beta_now=lambda: 0.1, runtime_before=0.0, resumed_from=None)  # fmt: skip
    best = SimpleNamespace(metric="eval_loss", mode="min", best_value=0.60, best_step=0)
    stopping = SimpleNamespace(metric="eval_loss", patience=None, mode="auto", noise_sigmas=0.0)
    output = SimpleNamespace(metrics={"train_loss": 0.55}, training_loss=0.55)
    summary = finished_summary(trainer, best, stopping, "completed", False, INITIAL, output, tmp_path, time.time())
    assert summary["overfitting"]["warnings"] == [
        "held-out margin kept rising (0.000 -> 0.900) while held-out loss rose from its minimum 0.600 at step 0 to "
        "0.670: margins grow with confidence, not correctness; early-stop on eval_loss or eval_rewards/accuracies "
        "instead"
    ]
    assert state.log_history == HISTORY  # the trainer's own history is left as it is


def test_step_0_joins_the_history_once():
    assert with_step_0(HISTORY, INITIAL) == [{**INITIAL, "step": 0}, *HISTORY]
    # a resumed run reads its step-0 evaluation back from metrics.jsonl (with its step); none: nothing to add
    resumed = with_step_0(HISTORY, {**INITIAL, "step": 0})
    assert with_step_0(resumed, INITIAL) == resumed and with_step_0(HISTORY, {}) == HISTORY
