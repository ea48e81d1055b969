"""One sweep trial, as its own process: `dpo train` of the base recipe with an optuna callback.

    python -m dpo.sweep.trial --study NAME --trial-id ID --metric METRIC --pruner JSON --parent-pid PID \
        BASE.yaml --fixed key=value ... --set key=value ... --output-dir SWEEP_DIR/trials/trial-NNNN

`--fixed`: the spec's fixed keys, applied before the `--set` items (the parameters' values) as a layer of their own
(dpo/config/loading.py SWEEP_FIXED_SOURCE), so that a searched key overrides a fixed one as a child recipe's key
overrides its base's.

`dpo sweep` (dpo/sweep/driver.py) starts it; the optuna storage URL comes in the environment (DPO_SWEEP_STORAGE),
because a database URL may hold a password that a command line would show to every user of the machine. The
callback reports the objective to optuna at each evaluation and stops training when the pruner says so; it is
handed to the training run through `execute(callbacks=...)`, so the run itself knows nothing of sweeps (its
summary.json says `stop_reason: pruned` because the callback says so). Exit codes are those of `dpo train`, and
130 when Ctrl-C stopped it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

from transformers import TrainerCallback

from dpo.sweep.storage import STORAGE_ENV, open_storage

INTERRUPTED_MESSAGE = "interrupted (Ctrl-C)"
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


class OptunaTrialCallback(TrainerCallback):
    """Reports `metric` after every evaluation during training; on a prune decision stops training (`pruned_at`
    records the step; `stop_reason` tells the run why it stopped). The evaluation at the last step is reported but
    never pruned: the trial has spent its steps, and pruned it would lose its value. Nor does a prune decision at
    the evaluation where early stopping or the autopilot ends the run anyway make it pruned: the run's own reason
    wins there (dpo/training/execute.py `_stop_reason`), and the trial completes with its value."""

    def __init__(self, trial, metric: str, parent_pid: int | None = None):
        self.trial = trial
        self.metric = metric
        self.parent_pid = parent_pid
        self.pruned_at: int | None = None

    @property
    def stop_reason(self) -> str | None:
        return "pruned" if self.pruned_at is not None else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # step 0 is the reference model, the same for every trial: nothing to compare yet
        if state.global_step == 0 or not state.is_world_process_zero or not metrics or self.metric not in metrics:
            return control
        value = float(metrics[self.metric])
        if math.isfinite(value):
            self.trial.report(value, state.global_step)
        if state.global_step >= state.max_steps:  # the last evaluation: nothing left to save, the trial completes
            return control
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            # The sweep was killed: nobody will record this trial; `--resume` runs its parameters again.
            with contextlib.suppress(OSError):  # the sweep read our output through a pipe, now broken
                print("error: the sweep process is gone; stopping this trial", file=sys.stderr, flush=True)
            os._exit(1)
        return control


def trial_callback(storage: str, study: str, trial_id: int, metric: str, pruner: dict, parent_pid: int | None):
    """The callback for trial `trial_id` of `study` (a loaded study does not store its pruner: given here)."""
    import optuna

    from dpo.sweep.spec import build_pruner

    pruner = dict(pruner)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(
        study_name=study, storage=open_storage(storage), pruner=build_pruner(pruner.pop("type"), pruner)
    )
    return OptunaTrialCallback(optuna.trial.Trial(loaded, trial_id), metric, parent_pid)


def main(argv: list[str] | None = None) -> int:
    from dpo.analysis.console import print_summary
    from dpo.config.loading import SWEEP_FIXED_SOURCE, Override
    from dpo.errors import RunFailed, UserError
    from dpo.rundir.secrets import redact, redact_standard_streams
    from dpo.training.execute import execute

    parser = argparse.ArgumentParser(prog="python -m dpo.sweep.trial", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--fixed", action="append", default=[])  # the spec's fixed keys: applied first, a layer
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trial-id", type=int, required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--pruner", type=json.loads, required=True)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    redact_standard_streams()
    try:
        # inside the try: a storage that cannot be opened is a one-line error (exit 2), as in `dpo train`
        callback = trial_callback(
            os.environ[STORAGE_ENV], args.study, args.trial_id, args.metric, args.pruner, args.parent_pid
        )
        fixed = [Override(item, SWEEP_FIXED_SOURCE) for item in args.fixed]
        summary, _ = execute(args.recipe, [*fixed, *args.overrides], args.output_dir, callbacks=[callback])
    except (UserError, RunFailed) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C reaches the trials too: one line in train.log, the exit code the driver knows
        print(f"error: {INTERRUPTED_MESSAGE}", file=sys.stderr)
        return INTERRUPTED_EXIT
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
