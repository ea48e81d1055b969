"""The one exception type for mistakes a user can fix (bad recipe, bad data, missing file).

The CLI turns it into a single `error: ...` line on stderr and exit code 2, with no traceback.
Everything else is a bug or an environment failure and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """ "; did you mean 'X'?" for the closest valid name (with `prefix` put before it), or ""."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=cutoff)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


class UserError(Exception):
    """A problem with the user's input. `where` is the file (and optionally key or row) it concerns."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class RunFailed(Exception):
    """A run that started but could not finish its training (exit code 3: neither a user error nor success).

    summary.json in the run directory is written first, with `stop_reason` and `error` saying why."""

    exit_code = 3

    def __init__(self, message: str, summary: dict | None = None):
        self.summary = summary or {}
        super().__init__(message)


class NonFiniteError(RunFailed):
    """A NaN or Inf `quantity` (loss or grad_norm) at optimizer step `step`; raised before that step is applied."""

    def __init__(self, quantity: str, step: int, value: float):
        self.quantity, self.step, self.value = quantity, step, value
        super().__init__(f"non-finite {quantity} ({value}) at step {step}")
