"""Whether an output directory (a run's, a sweep's, an audit's, an export's) can be made and written, asked before
anything is written (the gate, dpo/training/gate.py; `dpo sweep`, `dpo data audit`, `dpo export`): an output
directory under a regular file, behind a dangling symlink or in a folder this user cannot write to is a `UserError`
naming it, never a traceback from a half-made run. So is one whose path holds a secret (dpo/rundir/secrets.py): the
files libraries write name their folder (TRL's model card, the checkpoints' training_args.bin), so the secret would
reach them."""

from __future__ import annotations

import os
from pathlib import Path

from dpo.errors import UserError
from dpo.rundir.secrets import redact, secret_in


def check_output_dir(run_dir: Path) -> None:
    """Raise a UserError when `run_dir`'s absolute path holds a secret (shown redacted), or when it exists but is
    not a writable directory, or cannot be created: its nearest existing parent must be a directory this process
    may write into."""
    path = Path(os.path.abspath(run_dir))
    name = secret_in(str(path))  # the absolute path: a secret may run from the working directory into it
    if name is not None:
        raise UserError(
            f"holds a secret from ${name}, which files written there would record: choose another folder",
            where=redact(str(path)),
        )
    if path.is_symlink() and not path.exists():
        raise UserError(f"is a dangling symlink (to {os.readlink(path)})", where=str(run_dir))
    if path.exists():
        if not path.is_dir():
            raise UserError("is a file, not a directory", where=str(run_dir))
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError("is not writable by this user", where=str(run_dir))
        return
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise UserError(f"cannot be created: {parent} is a dangling symlink", where=str(run_dir))
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot be created: {parent} is a file, not a directory", where=str(run_dir))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot be created: {parent} is not writable by this user", where=str(run_dir))
