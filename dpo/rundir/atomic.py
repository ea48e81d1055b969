"""Crash-safe file writes: write a temporary file next to the target, flush it to disk, rename it over the target.

A rename within one folder is atomic, so a reader (a resumed run, `dpo report`) sees either the old file or the
new one, never half of one, however the writing process dies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dpo.rundir.secrets import redact_data


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())  # the rename must not reach the disk before the data does
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data) -> None:
    """JSON with secrets redacted (dpo/rundir/secrets.py): every JSON file of a run or sweep directory but
    metrics.jsonl (appended line by line, dpo/rundir/files.py) is written here."""
    atomic_write_text(path, json.dumps(redact_data(data), indent=2, default=str) + "\n")


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written folder `staging` to `target` (replacing an older `target`)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
