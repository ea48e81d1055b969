"""One writer per run directory: `RUN_DIR/.lock` holds the pid, host and start time of the `dpo train` using it.

The lock file is created with its content in one step (written to a temporary name, then hard-linked into
place, which fails if the lock exists), so a lock is never seen half-written. A lock whose process is gone is
stale and is cleared: on this host, when that pid is not running, or runs a different process (pids are
reused, e.g. after a container restart; the process start time in the lock tells them apart). A lock from
another host cannot be checked from here and is never cleared automatically.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from dpo.errors import UserError

LOCK_NAME = ".lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name in (...) may contain spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None and _process_start(pid) not in (None, start):
        return False  # the pid now belongs to another process
    return True


class RunLock:
    """`with RunLock(run_dir): ...` holds the run directory; raises UserError when another live run holds it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.cleared: dict | None = None  # the stale lock this one replaced, if any (for a notice)
        self._held = False

    def acquire(self) -> RunLock:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "process_start": _process_start(os.getpid()),
        }
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self._held = True
                    return self
                except FileExistsError:
                    holder = self._read()
                    if not self._stale(holder):
                        raise UserError(
                            f"run directory is in use by another dpo train (pid {holder.get('pid')} on "
                            f"{holder.get('host')}, since {holder.get('started')}); if that process is gone "
                            f"for good, delete {self.path}",
                            where=str(self.path.parent),
                        ) from None
                    self.cleared = holder
                    self.path.unlink(missing_ok=True)
            raise UserError("could not take the run directory's lock (it keeps reappearing)", where=str(self.path))
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # another machine (or an unreadable lock): we cannot tell, so we do not guess
        return not _alive(holder["pid"], holder.get("process_start"))

    def release(self) -> None:
        if self._held and self._read().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
