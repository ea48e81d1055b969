"""Test helper, not part of the package: run a training in-process and freeze at a chosen point, so that the
test can SIGKILL the process exactly there (tests/rundir/test_resume.py). Nothing here is in the library's code path:
the pauses are a callback and a wrapper installed by this script only.

    python -m tests.kill_driver RECIPE RUN_DIR POINT STEP READY_FILE

POINT:
  mid_step        step STEP computed its loss and gradients, the optimizer has not applied them
  mid_checkpoint  checkpoint-STEP is half written: weights and optimizer saved, no trainer state, no completeness mark
  after_training  all steps done, final/ and summary.json not written yet
When the point is reached the script writes its pid into READY_FILE and sleeps until killed. Under torchrun every
process freezes there and writes READY_FILE.RANK (torchrun starts each in its own session: the test kills each
by its pid).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


def freeze(ready: Path) -> None:
    if "RANK" in os.environ:
        ready = ready.with_name(f"{ready.name}.{os.environ['RANK']}")
    ready.write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(60)


class FreezeAt(TrainerCallback):
    def __init__(self, point: str, step: int, ready: Path):
        self.point, self.step, self.ready = point, step, ready

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.point == "mid_step" and state.global_step + 1 == self.step:
            freeze(self.ready)

    def on_train_end(self, args, state, control, **kwargs):
        if self.point == "after_training":
            freeze(self.ready)


def main() -> None:
    recipe, run_dir, point, step, ready = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    if point == "mid_checkpoint":
        from dpo.training.trainer import Trainer

        original = Trainer._save_optimizer_and_scheduler

        def save_then_freeze(self, output_dir):
            original(self, output_dir)
            if self.state.global_step == step:
                freeze(ready)

        Trainer._save_optimizer_and_scheduler = save_then_freeze
    from dpo.training.execute import execute

    execute(recipe, output_dir=run_dir, callbacks=[FreezeAt(point, step, ready)])


if __name__ == "__main__":
    main()
