"""Inside a sweep trial: report the objective to optuna at each evaluation, and stop when the pruner says so.

`dpo sweep` starts each trial as `python -m dpo train ...` with these environment variables; `dpo train`
run by hand sees none of them and adds no callback:
    DPO_SWEEP_STORAGE     optuna storage URL of the sweep
    DPO_SWEEP_STUDY       study name
    DPO_SWEEP_TRIAL_ID    the optuna trial id this run is
    DPO_SWEEP_METRIC      the objective's held-out metric (reported as the trial's intermediate value)
    DPO_SWEEP_PRUNER      the pruner as JSON {"type": "median", ...} (a loaded study does not store its pruner)
    DPO_SWEEP_PARENT_PID  the sweep process: when it dies (SIGKILL), the trial stops at the next step
"""

from __future__ import annotations

import json
import math
import os
import sys

from transformers import TrainerCallback

ENV_KEYS = (
    "DPO_SWEEP_STORAGE",
    "DPO_SWEEP_STUDY",
    "DPO_SWEEP_TRIAL_ID",
    "DPO_SWEEP_METRIC",
    "DPO_SWEEP_PRUNER",
    "DPO_SWEEP_PARENT_PID",
)


class OptunaTrialCallback(TrainerCallback):
    """Reports `metric` after every evaluation during training; on a prune decision stops training
    (`pruned_at` records the step, and the run's summary says stop_reason "pruned")."""

    def __init__(self, trial, metric: str, parent_pid: int | None = None):
        self.trial = trial
        self.metric = metric
        self.parent_pid = parent_pid
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # step 0 is the reference model, the same for every trial: nothing to compare yet
        if state.global_step == 0 or not state.is_world_process_zero or not metrics or self.metric not in metrics:
            return control
        value = float(metrics[self.metric])
        if math.isfinite(value):
            self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            # The sweep was killed: nobody will record this trial; `--resume` runs its parameters again.
            print("error: the sweep process is gone; stopping this trial", file=sys.stderr, flush=True)
            os._exit(1)
        return control


def callback_from_env() -> OptunaTrialCallback | None:
    """The callback for a sweep trial, or None outside a sweep."""
    if not os.environ.get("DPO_SWEEP_STORAGE"):
        return None
    import optuna

    from dpo.sweep import open_storage
    from dpo.sweep_spec import build_pruner

    pruner = json.loads(os.environ["DPO_SWEEP_PRUNER"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=os.environ["DPO_SWEEP_STUDY"],
        storage=open_storage(os.environ["DPO_SWEEP_STORAGE"]),
        pruner=build_pruner(pruner.pop("type"), pruner),
    )
    trial = optuna.trial.Trial(study, int(os.environ["DPO_SWEEP_TRIAL_ID"]))
    parent = os.environ.get("DPO_SWEEP_PARENT_PID")
    return OptunaTrialCallback(trial, os.environ["DPO_SWEEP_METRIC"], int(parent) if parent else None)
