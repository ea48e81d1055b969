"""Crash-safe file writes: write a temporary file next to the target, flush it to disk, rename it over the target.

A rename within one folder is atomic, so a reader (a resumed run, `dpo report`) sees either the old file or the
new one, never half of one, however the writing process dies.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from dpo.rundir.secrets import redact_data


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    # a temporary name of its own (two processes writing one file at once, `dpo report` while the run writes
    # report.html, must not truncate each other's temporary file or rename it away under the other), created with
    # mode 0666 so that the kernel applies the umask: the file gets the usual permissions, and nothing here reads
    # or changes the process-wide umask under the sweep's worker threads
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a power loss (POSIX; elsewhere, and on
    file systems that refuse it, a no-op)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    sync_folder(target.parent)
