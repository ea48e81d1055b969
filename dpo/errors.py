"""The one exception type for mistakes a user can fix (bad recipe, bad data, missing file).

The CLI turns it into a single `error: ...` line on stderr and exit code 2, with no traceback.
Everything else is a bug or an environment failure and keeps its traceback.
"""

import contextlib
import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

MAX_ERROR_CHARS = 1000  # an error message is one line of at most this many characters
MAX_VALUE_CHARS = 120  # a value quoted in a message

_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = MAX_VALUE_CHARS
_REPR.maxlong = 40  # a 400-digit number shows its ends


def shorten(value: Any) -> str:
    """repr() of a value for an error message, bounded: a long string keeps its ends, a deep or long list its
    first levels and items (reprlib never recurses through 100,000 levels), a lone surrogate stays escaped."""
    return _REPR.repr(value)


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as a single printable line of at most about `limit` characters: line breaks become spaces, the
    middle of an over-long text is cut (its start names the file and key, its end often the hint), and
    characters that cannot be written as UTF-8 (lone surrogates) are escaped."""
    text = " ".join(text.splitlines())
    if len(text) > limit:
        head, tail = text[: limit * 3 // 4], text[-(limit // 4) :]
        text = f"{head} [... {len(text) - len(head) - len(tail)} characters cut ...] {tail}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """ "; did you mean 'X'?" for the closest valid name (with `prefix` put before it), or ""."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=cutoff)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


class UserError(Exception):
    """A problem with the user's input. `where` is the file (and optionally key or row) it concerns. The message
    is kept to one line of bounded length (`one_line`), whatever values it quotes."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(one_line(f"{where}: {message}" if where else message))


class UserErrors(UserError):
    """Several user errors found together: every mistake a check found, not only the first (a recipe's wrong keys,
    types and values). The CLI prints one `error:` line per problem, in `errors`."""

    def __init__(self, errors: list[UserError]):
        self.errors = [e for error in errors for e in (error.errors if isinstance(error, UserErrors) else [error])]
        super().__init__("; ".join(str(e) for e in self.errors))
        self.where = self.errors[0].where


def raise_all(errors: list[UserError]) -> None:
    """Raise the errors found, if any: one as itself, several together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)


class Problems:
    """Collects the user errors of several independent checks, so all of them are reported at once:

    problems = Problems()
    with problems.collect():
        check_one()
    with problems.collect():
        check_two()
    problems.raise_all()
    """

    def __init__(self):
        self.found: list[UserError] = []

    @contextlib.contextmanager
    def collect(self):
        try:
            yield
        except UserError as exc:
            self.found.append(exc)

    def raise_all(self) -> None:
        raise_all(self.found)


class RunFailed(Exception):
    """A run that started but could not finish its training (exit code 3: neither a user error nor success).

    summary.json in the run directory is written first, with `stop_reason` and `error` saying why. `dpo sweep` exits
    with it too when no trial completed (sweep_summary.json says why each trial failed; there is no best.yaml)."""

    exit_code = 3

    def __init__(self, message: str, summary: dict | None = None):
        self.summary = summary or {}
        super().__init__(message)


class NonFiniteError(RunFailed):
    """A NaN or Inf `quantity` (loss or grad_norm) at optimizer step `step`; raised before that step is applied."""

    def __init__(self, quantity: str, step: int, value: float):
        self.quantity, self.step, self.value = quantity, step, value
        super().__init__(f"non-finite {quantity} ({value}) at step {step}")
