"""Trainer callbacks: the metrics file, and best-checkpoint tracking with early stopping."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from dpo.analysis.model_card import write_model_card
from dpo.metrics import HEADLINE, lookup, standard_error_key
from dpo.noise import NoiseRule, logged_error
from dpo.rundir.files import append_metrics


class MetricsFileCallback(TrainerCallback):
    """Appends every log event to metrics.jsonl as one JSON object with its global `step`."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_metrics(self.path, {"step": state.global_step, **logs})


class BestCheckpointCallback(TrainerCallback, ExportableState):
    """Tracks the best held-out `metric`; with `patience`, stops after that many evaluations without
    an improvement of at least `min_delta` (never before `warmup_steps`).

    With `noise_sigmas` k > 0 it knows the metric's noise (dpo/noise.py): it never stops while the best value is not
    clearly beyond where the run started (step 0, or chance for an accuracy), and stops only at an evaluation that
    fell below the best by more than k standard errors. k = 0 (the default here; a recipe's early_stopping.noise_sigmas
    defaults to 2): the plain patience rule.

    With `keep_best`, a checkpoint is saved whenever the metric improves and recorded as the trainer's
    best checkpoint, so checkpoint rotation never deletes it and it can be restored at the end.
    Its bookkeeping is saved in every checkpoint (`state()`, transformers' ExportableState) and put back on resume.
    """

    RESTORED = ("best_value", "best_step", "best_error", "bad_evaluations", "stopped_at", "history")

    def __init__(
        self,
        metric: str,
        mode: str = "auto",
        patience: int | None = None,
        min_delta: float = 0.0,
        warmup_steps: int = 0,
        keep_best: bool = False,
        noise_sigmas: float = 0.0,
    ):
        self.metric = metric
        self.rule = NoiseRule(metric, mode, noise_sigmas, min_delta)
        self.mode = self.rule.mode
        self.noise_sigmas = noise_sigmas
        self.patience = patience
        self.min_delta = min_delta
        self.warmup_steps = warmup_steps
        self.keep_best = keep_best
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_error = 0.0  # the standard error of the best value
        self.bad_evaluations = 0
        self.stopped_at: int | None = None
        self.history: list[tuple[int, float]] = []

    def improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def learned(self) -> bool:
        """Is the best value clearly beyond where the run started (dpo/noise.py)? No stop until it is."""
        if not self.history:
            return False
        return self.rule.learned(self.history[0][1], self.best_value, self.best_error, looks=len(self.history))

    def signal(self, value: float, error: float) -> bool:
        """May the run stop at this evaluation (`value`, standard error `error`)? With the noise rule on: only when
        it has learned and this evaluation fell below the best beyond the noise; always with the rule off."""
        if self.noise_sigmas <= 0:
            return True
        return self.learned() and self.best_value is not None and self.rule.fallen(value, self.best_value, error)

    def update(self, step: int, value: float, error: float = 0.0, last: bool = False) -> tuple[bool, bool]:
        """Feed one evaluation (`error`: its standard error; `last`: at the run's last step, where a stop would end
        nothing early, so none is made). Returns (is_new_best, should_stop). Pure bookkeeping, easy to test."""
        self.history.append((step, value))
        if not math.isfinite(value):
            self.bad_evaluations += 1
            new_best = False
        elif self.improved(value):
            self.best_value, self.best_step, self.best_error = value, step, error
            self.bad_evaluations = 0
            new_best = True
        else:
            self.bad_evaluations += 1
            new_best = False
        stop = (
            not last
            and self.patience is not None
            and self.bad_evaluations >= self.patience
            and step >= self.warmup_steps
            and self.signal(value, error)
        )
        if stop and self.stopped_at is None:
            self.stopped_at = step
        return new_best, stop

    def state(self) -> dict:
        args = ("metric", "mode", "patience", "min_delta", "warmup_steps", "keep_best", "noise_sigmas")
        return {
            "args": {name: getattr(self, name) for name in args},
            "attributes": {name: getattr(self, name) for name in self.RESTORED},
        }

    def load_state(self, saved: dict) -> None:
        """Put back the bookkeeping of `state()` (read from a checkpoint's trainer_state.json), in place."""
        for name in self.RESTORED:
            if name in saved.get("attributes", {}):
                setattr(self, name, saved["attributes"][name])
        self.history = [tuple(item) for item in self.history]

    def best_checkpoint(self, folder: Path) -> Path | None:
        """The checkpoint under `folder` that holds the best weights, when they are kept. Rotation protects this
        one, not transformers' `best_model_checkpoint`: that path, read back on a resume, may be spelled otherwise
        (relative, then absolute) or dropped (relative to another working directory), and the best would go."""
        if not self.keep_best or self.best_step is None:
            return None
        return folder / f"checkpoint-{self.best_step}"

    def on_train_begin(self, args, state, control, **kwargs):
        # the untrained model as the best (checkpoint-0, saved before training) must survive checkpoint rotation too
        if self.keep_best and self.best_step == 0 and state.best_model_checkpoint is None:
            state.best_model_checkpoint = str(Path(args.output_dir) / "checkpoint-0")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.metric not in metrics:
            watched = lookup(self.metric)
            if metrics and watched is not None and watched.gap_of:
                # a gap needs train values logged since the previous evaluation (none at step 0, nor when
                # logging_steps does not divide eval_steps): this evaluation has nothing to compare
                return control
            available = sorted(k for k in (metrics or {}) if k.startswith("eval_"))
            raise KeyError(f"early_stopping.metric '{self.metric}' was not computed; available: {available}")
        value, error = float(metrics[self.metric]), logged_error(metrics, self.metric)
        new_best, stop = self.update(state.global_step, value, error, last=0 < state.max_steps <= state.global_step)
        if new_best and self.keep_best and state.global_step > 0:
            control.should_save = True
            state.best_model_checkpoint = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            state.best_metric = self.best_value
        if stop:
            control.should_training_stop = True
        return control


class CompactProgressCallback(ProgressCallback):
    """transformers' progress bar, but one short line per evaluation instead of a dict per step.

    Every metric still goes to metrics.jsonl; the terminal shows the bar (with the latest train loss
    and margin) and the held-out numbers a person watches for overfitting, each ± its standard error.
    """

    SHOWN = HEADLINE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.training_bar is not None and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", margin=f"{logs.get('rewards/margins', 0):.3f}")
        if "eval_loss" in logs:
            shown = ", ".join(
                f"{k.removeprefix('eval_')} {logs[k]:.3f}{_plus_minus(logs, k)}" for k in self.SHOWN if k in logs
            )
            line = f"held-out @ step {state.global_step}: {shown}"
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                print(line, flush=True)


def _plus_minus(logs: dict, metric: str) -> str:
    """' ± SE' when the evaluation logged the metric's standard error (dpo/noise.py), else ''."""
    error = logs.get(standard_error_key(metric))
    return f" ± {error:.3f}" if isinstance(error, int | float) and error > 0 else ""


class ModelCardCallback(TrainerCallback):
    """Our model card in each checkpoint (dpo/analysis/model_card.py), over the empty template peft writes there."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_model_card(folder, self.run_dir, checkpoint_step=state.global_step)
