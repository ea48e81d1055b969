"""Opening the files a run reads (recipes, sweep specs, data) without trusting them: the path must be a regular
file (a FIFO would block forever, a device would be read until memory runs out), no larger than a limit, and
readable; each refusal is a `UserError` naming the file.

The limits (docs/recipes.md "Limits" and docs/data.md "Limits" state them):
  MAX_YAML_BYTES   a recipe or sweep spec file
  MAX_DATA_BYTES   one local data file (JSONL, JSON, CSV, Parquet); a larger data set is split into several
                   files, listed as sources of data.train (they are mixed as one)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dpo.errors import UserError

MAX_YAML_BYTES = 1024 * 1024  # 1 MiB: recipes are a few KB
MAX_DATA_BYTES = 2 * 1024**3  # 2 GiB: rows are held in memory, several times their size on disk

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def _size_text(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def check_input_file(path: Path, max_bytes: int, what: str = "file", where: str | None = None) -> os.stat_result:
    """Stat `path` (following symlinks) and refuse anything but a readable regular file of at most `max_bytes`.
    `what` names the kind of file in the message ('recipe file', 'data file'); `where` defaults to the path."""
    where = where or str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        dangling = " (a dangling symlink)" if path.is_symlink() else ""
        raise UserError(f"{what} not found{dangling}", where=where) from None
    except OSError as exc:  # permission denied on a parent folder, a name too long, a symlink loop
        raise UserError(f"cannot open the {what}: {exc.strerror or exc}", where=where) from None
    for test, kind in _KINDS.items():
        if test(info.st_mode):
            raise UserError(f"is {kind}, not a regular {what}", where=where)
    if info.st_size > max_bytes:
        raise UserError(f"{what} is {_size_text(info.st_size)}, over the limit of {_size_text(max_bytes)}", where=where)
    return info


def read_input_bytes(path: Path, max_bytes: int, what: str = "file", where: str | None = None) -> bytes:
    """The bytes of a checked input file; never more than `max_bytes` are read (a file that grows while it is
    read, or reports size 0 as /proc files do, is still bounded)."""
    check_input_file(path, max_bytes, what, where)
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:  # permission denied, an I/O error
        raise UserError(f"cannot read the {what}: {exc.strerror or exc}", where=where or str(path)) from None
    if len(data) > max_bytes:
        raise UserError(f"{what} is over the limit of {_size_text(max_bytes)}", where=where or str(path))
    return data
