"""Test helper, not part of the package: `dpo train` (the CLI, with its exit codes) with a NaN loss from step STEP
on, made by the test-only PoisonAt callback, and every rename into the run directory (each atomic write ends in
one) recorded with the rank of the process that made it (tests/training/test_distributed.py).

    python -m tests.poison_driver RECIPE RUN_DIR STEP RENAMES_LOG
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    recipe, run_dir, step, log = sys.argv[1], Path(sys.argv[2]).resolve(), int(sys.argv[3]), Path(sys.argv[4])
    import dpo.api
    from dpo.cli import main as cli
    from tests.training.test_non_finite import PoisonAt

    train, replace = dpo.api.train, os.replace

    def poisoned_train(*args, **kwargs):
        return train(*args, **{**kwargs, "callbacks": [PoisonAt(step, "loss")]})

    def recorded_replace(src, dst, **kwargs):
        replace(src, dst, **kwargs)
        target = Path(dst).resolve()
        if target.is_relative_to(run_dir):
            with log.open("a", encoding="utf-8") as handle:  # one short append per line: lines never interleave
                handle.write(f"{os.environ.get('RANK', '0')} {target.relative_to(run_dir)}\n")

    dpo.api.train, os.replace = poisoned_train, recorded_replace
    sys.argv = ["dpo", "train", recipe, "--output-dir", str(run_dir)]
    cli()


if __name__ == "__main__":
    main()
