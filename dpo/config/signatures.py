"""A component's signature is its schema: its keyword-only parameters are its recipe keys.

Losses, beta schedules, f-divergence links and augmentations declare their keys as keyword-only parameters,
with the constraints in the annotation (`label_smoothing: Annotated[float, Interval(ge=0, lt=0.5)] = 0.0`) and,
where the docs need one, a description (`annotated_types.doc("...")`). The layer that owns a component's table
checks a recipe's keys against it with these helpers, so a key needs writing down once, in the function.
Problems are one line, worded as the rest of the recipe's (dpo/config/loading.py).
"""

from __future__ import annotations

import enum
import inspect
import types
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
    annotation = parameter_annotations(fn).get(name)
    found = [m.documentation for m in getattr(annotation, "__metadata__", ()) if isinstance(m, DocInfo)]
    return found[0] if found else None


def checked_value(fn: Callable, name: str, value: Any, key: str, strict: bool = False) -> tuple[Any, str | None]:
    """`value` for parameter `name` of `fn` as its annotation validates it, and None; or (None, a one-line problem
    naming `key`). A parameter without a usable annotation takes any value. Lax (pydantic's default: '0.1' -> 0.1
    for a float, true -> 1) unless `strict`, as every recipe key is checked (numbers must be numbers, an int an int,
    a bool a bool; an int still passes for a float)."""
    annotation = parameter_annotations(fn).get(name, Any)
    try:
        return TypeAdapter(annotation).validate_python(value, strict=strict), None
    except ValidationError as exc:
        return None, values_problem(exc.errors(), key)


# pydantic's type errors, in words: what the key expected. Other errors (ranges, our validators) keep their message.
TYPE_ERRORS = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float", "int_parsing_size"), "a whole number"),
    **dict.fromkeys(("float_type", "float_parsing", "finite_number"), "a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"),
    **dict.fromkeys(("string_type", "string_unicode"), "text"),
    **dict.fromkeys(("list_type", "tuple_type", "set_type"), "a list"),
    "dict_type": "a mapping of keys to values",
    **dict.fromkeys(("model_type", "model_attributes_type", "dataclass_type"), "a section (a mapping of its keys)"),
    "none_required": "null",
}


def expected(err: dict) -> str | None:
    """What a pydantic type error's key expected, in words ('a number', 'one of auto, max or min'); None for other
    errors."""
    if err["type"] == "literal_error":
        return "one of " + err["ctx"]["expected"].replace("'", "")
    return TYPE_ERRORS.get(err["type"])


def show_value(value: Any) -> str:
    """A value as the user wrote it, in words: the text 'high', [1, 2] (a list), a mapping, null, true, 1.5."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {shorten(value)}"  # bounded: a 52 MB value shows its ends (dpo/errors.py)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        if len(value) > 10:
            return f"{shorten(list(value))} (a list)"
        return f"[{', '.join(show_value(v).removeprefix('the text ') for v in value)}] (a list)"
    return shorten(value)


def value_problem(err: dict, key: str) -> str:
    """One line for one pydantic error about the value of `key`."""
    return values_problem([err], key)


def values_problem(errors: list[dict], key: str) -> str:
    """One line for the pydantic errors about the value of `key`: one error, or one per member of a union type
    (`list[str] | Literal['all-linear']`), which read together as 'expected a list or one of all-linear'."""
    if all(expected(err) for err in errors):
        wanted = " or ".join(dict.fromkeys(expected(err) for err in errors))
        return f"{key}: expected {wanted}, got {show_value(errors[0].get('input'))}"
    err = next(err for err in errors if not expected(err))  # a range or a validator of ours: the most specific
    if err["type"] == "value_error":  # a validator of ours: the message is the whole story
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    return f"{key}: {err['msg'].rstrip('.')} (got {show_value(err.get('input')).removeprefix('the text ')})"


def enum_values(annotation: Any) -> list[Any] | None:
    """The values of a choice typed as `SomeEnum | str` (transformers' way: the text is read as the enum, so only
    its members' values are valid), or None for any other annotation."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(annotation)
    enums = [arg for arg in args if isinstance(arg, type) and issubclass(arg, enum.Enum)]
    return [member.value for e in enums for member in e] if enums and str in args else None


def annotation_words(annotation: Any) -> str:
    """A type annotation in words, for values checked against a dataclass field (`int | None` -> 'a whole number
    or null', `IntervalStrategy | str` -> 'one of no, steps, epoch')."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = enum_values(annotation)
        args = [arg for arg in typing.get_args(annotation) if members is None or arg is not str]
        return " or ".join(dict.fromkeys(annotation_words(arg) for arg in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
    base = origin or annotation
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list",
             tuple: "a list", dict: "a mapping of keys to values", type(None): "null"}  # fmt: skip
    if base in words:
        return words[base]
    if isinstance(base, type) and issubclass(base, enum.Enum):
        *others, last = (str(m.value) for m in base)
        return f"one of {', '.join(others)} or {last}" if others else f"{last}"
    return getattr(base, "__name__", str(base))


def unknown_key_problem(key: str, valid: Iterable[str]) -> str:
    """'unknown key 'loss.bta'; did you mean 'loss.beta'? (valid: ...)' for a dotted `key` whose section takes
    the keys `valid`."""
    parent, _, leaf = key.rpartition(".")
    valid = list(valid)
    hint = did_you_mean(leaf, valid, prefix=f"{parent}." if parent else "", cutoff=0.5)
    return f"unknown key '{key}'{hint} (valid: {', '.join(valid)})"


def parameter_annotations(fn: Callable) -> dict[str, Any]:
    """`fn`'s parameter annotations with their Annotated metadata; {} when they cannot be resolved (a plug-in
    whose annotations name things its module does not define): then its values are not checked here."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - NameError, TypeError, ...: any unresolvable annotation
        return {}
