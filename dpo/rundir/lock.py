"""One process per run (or sweep) directory: an exclusive `flock` on DIR/.lock, held while the process works there.

The kernel releases a flock when its process ends, however it ends (SIGKILL, the OOM killer): a lock file left
behind by a dead process blocks nobody, and nothing has to guess whether its holder is still alive. The file
holds the holder's pid, host and start time only to say who is using the directory.

A released lock's file is removed while it is still locked. A process that opened the file just before that
can then lock a file no longer in the directory; it notices (the path now names another file, or none) and
tries again, so two processes never both believe they hold the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from dpo.errors import UserError
from dpo.rundir.files import LOCK


class DirectoryLock:
    """`with DirectoryLock(folder, in_use): ...` holds `folder`; while another process holds it, acquiring raises
    UserError(in_use), where "{holder}" in `in_use` becomes "pid N on HOST, since T"."""

    def __init__(self, folder: Path, in_use: str):
        self.path = Path(folder) / LOCK
        self.in_use = in_use
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(self.in_use.format(holder=holder), where=str(self.path.parent)) from None
            if _names(self.path, fd):
                break
            os.close(fd)  # the holder released it and removed the file after we opened it: lock the new one
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # still locked: nobody can take the lock on this file any more
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(DirectoryLock):
    """The run directory's lock, held by `dpo train` (rank 0 of a multi-process run, for all of its processes)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir, "run directory is in use by another dpo train ({holder})")


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> str:
    """Who holds the lock, from its file ("?" for what it has not written yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, since {record.get('started', '?')}"
