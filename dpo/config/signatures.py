"""A component's signature is its schema: its keyword-only parameters are its recipe keys.

Losses, beta schedules, f-divergence links and augmentations declare their keys as keyword-only parameters,
with the constraints in the annotation (`label_smoothing: Annotated[float, Interval(ge=0, lt=0.5)] = 0.0`) and,
where the docs need one, a description (`annotated_types.doc("...")`). The layer that owns a component's table
checks a recipe's keys against it with these helpers, so a key needs writing down once, in the function.
Problems are one line, worded as the rest of the recipe's (dpo/config/loading.py).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

from annotated_types import DocInfo
from pydantic import TypeAdapter, ValidationError

from dpo.errors import did_you_mean, shorten

REQUIRED = inspect.Parameter.empty  # the default of a key that has none


def keyword_parameters(fn: Callable, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The keys `fn` takes (its keyword-only parameters, less `skip`) with their defaults (REQUIRED: none)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip}


def description(fn: Callable, name: str) -> str | None:
    """The `annotated_types.doc(...)` text of parameter `name` of `fn`, if it has one."""
    annotation = _annotations(fn).get(name)
    found = [m.documentation for m in getattr(annotation, "__metadata__", ()) if isinstance(m, DocInfo)]
    return found[0] if found else None


def checked_value(fn: Callable, name: str, value: Any, key: str, strict: bool = False) -> tuple[Any, str | None]:
    """`value` for parameter `name` of `fn` as its annotation validates it, and None; or (None, a one-line problem
    naming `key`). A parameter without a usable annotation takes any value. Lax (pydantic's default, as for the
    recipe's own sections: '0.1' -> 0.1 for a float) unless `strict` (numbers must be numbers, an int an int,
    a bool a bool; an int still passes for a float)."""
    annotation = _annotations(fn).get(name, Any)
    try:
        return TypeAdapter(annotation).validate_python(value, strict=strict), None
    except ValidationError as exc:
        return None, value_problem(exc.errors()[0], key)


def value_problem(err: dict, key: str) -> str:
    """One line for one pydantic error about the value of `key`."""
    if err["type"] == "value_error":  # a validator of ours: the message is the whole story
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    got = err.get("input")
    shown = shorten(got) if not isinstance(got, dict) else "a mapping"
    return f"{key}: {err['msg'].rstrip('.')} (got {shown})"


def unknown_key_problem(key: str, valid: Iterable[str]) -> str:
    """'unknown key 'loss.bta'; did you mean 'loss.beta'? (valid: ...)' for a dotted `key` whose section takes
    the keys `valid`."""
    parent, _, leaf = key.rpartition(".")
    valid = list(valid)
    hint = did_you_mean(leaf, valid, prefix=f"{parent}." if parent else "", cutoff=0.5)
    return f"unknown key '{key}'{hint} (valid: {', '.join(valid)})"


def _annotations(fn: Callable) -> dict[str, Any]:
    """`fn`'s parameter annotations with their Annotated metadata; {} when they cannot be resolved (a plug-in
    whose annotations name things its module does not define): then its values are not checked here."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - NameError, TypeError, ...: any unresolvable annotation
        return {}
