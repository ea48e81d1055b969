"""summary.json: what a finished (or stopped) run reports, built from the trainer's log history.

Two shapes: a run that ended (completed, early-stopped, or stopped by a callback such as a sweep's pruner) and a
run the non-finite guard stopped (no final weights; the last good checkpoint named instead).
"""

from __future__ import annotations

import time
from pathlib import Path

from dpo.analysis.diagnostics import overfitting_block
from dpo.errors import NonFiniteError
from dpo.metrics import implicit_reward_of
from dpo.rundir import resume as resuming
from dpo.rundir.files import CHECKPOINTS


def _best_metric(best) -> dict:
    return {"name": best.metric, "mode": best.mode, "value": best.best_value}


def finished_summary(trainer, best, stopping, stop_reason: str, restored: bool, initial: dict, train_output,
                     run_dir: Path, started: float, loss_since: int = -1) -> dict:  # fmt: skip
    """summary.json of a finished run (`loss_since`: the step of the autopilot's last change to the loss, -1 for
    none; the end-of-run warnings compare held-out losses only after it)."""
    history = trainer.state.log_history
    best_metrics = _eval_at(history, best.best_step) or eval_only(initial)
    return {
        "stop_reason": stop_reason,
        "best_step": best.best_step,
        "best_metric": _best_metric(best),
        "final_weights": "best" if restored else "last",
        "implicit_reward": implicit_reward_of(trainer.loss_plan.needs_reference),  # which rewards/* dpo eval recomputes
        "reward_beta": _reward_beta(trainer, best, restored, best_metrics),  # what dpo eval scales that reward by
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "initial_metrics": eval_only(initial),
        "best_metrics": best_metrics,
        "final_metrics": _last_metrics(history),
        "train_loss": train_output.metrics.get("train_loss", train_output.training_loss),  # all steps, resumed too
        "overfitting": overfitting_block(
            with_step_0(history, initial),
            stopping.metric,
            stopping.patience,
            stopping.mode,
            stopping.noise_sigmas,
            loss_since=loss_since,
        ),
        "runtime_s": round(trainer.runtime_before + time.time() - started, 2),  # all attempts, up to their checkpoints
        "resumed_from": trainer.resumed_from,
        "run_dir": str(run_dir),
    }


def with_step_0(log_history: list[dict], initial: dict) -> list[dict]:
    """The log history with the step-0 evaluation first, as metrics.jsonl and the autopilot have it: train() starts a
    new history, so the untrained model's evaluation before it (`initial`, Trainer.evaluate_untrained) is not in it."""
    if not initial or any(h.get("step") == 0 and "eval_loss" in h for h in log_history):
        return log_history
    return [{**initial, "step": 0}, *log_history]


def non_finite_summary(exc: NonFiniteError, trainer, best, run_dir: Path, initial: dict, started: float) -> dict:
    """For a run stopped by the non-finite guard: no final/, the step that went non-finite was not applied and
    nothing past it is trusted; the last good checkpoint is where `--resume` continues (with the same recipe: a fix
    that changes it, a lower learning rate say, is a new run, from step 0 or from these weights)."""
    last_good = resuming.last_resumable(run_dir / CHECKPOINTS, trainer.args.save_only_model)
    return {
        "stop_reason": "non_finite",
        "error": str(exc),
        "non_finite": {"quantity": exc.quantity, "step": exc.step, "value": str(exc.value)},
        "last_good_checkpoint": str(last_good[1]) if last_good else None,
        "best_step": best.best_step,
        "best_metric": _best_metric(best),
        "final_weights": None,
        "implicit_reward": implicit_reward_of(trainer.loss_plan.needs_reference),
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "initial_metrics": eval_only(initial),
        "final_metrics": _last_metrics(trainer.state.log_history),
        "runtime_s": round(trainer.runtime_before + time.time() - started, 2),
        "resumed_from": trainer.resumed_from,
        "run_dir": str(run_dir),
    }


def _reward_beta(trainer, best, restored: bool, best_metrics: dict) -> float:
    """The beta of the final weights' implicit reward, as an evaluation of them runs it (with a scheduled or adaptive
    beta not loss.beta). The last weights: the beta now (a schedule's beta where training ended, the adaptive beta of
    the last training batch). A restored best checkpoint: the schedule's beta at its step; the adaptive beta has moved
    on since, so the one its evaluation logged."""
    controller = trainer.beta_controller
    if not restored:
        return trainer.beta_now()
    if controller.adaptive:
        return best_metrics["eval_beta"]
    return controller.scheduled(best.best_step, trainer.state.max_steps)


def eval_only(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith("eval_") and not k.endswith(("runtime", "per_second", "preparation_time"))
    }


def _eval_at(log_history: list[dict], step: int | None) -> dict:
    return next((eval_only(h) for h in log_history if "eval_loss" in h and h.get("step") == step), {})


def _last_metrics(log_history: list[dict]) -> dict:
    """The last evaluation's metrics and the last training step's metrics, merged."""
    last_eval = next((h for h in reversed(log_history) if "eval_loss" in h), {})
    last_train = next((h for h in reversed(log_history) if "loss" in h and "eval_loss" not in h), {})
    merged = {k: v for k, v in last_train.items() if k not in ("epoch", "step")}
    merged.update(eval_only(last_eval))
    merged["eval_step"] = last_eval.get("step")
    return merged
