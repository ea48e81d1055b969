"""The recipe YAML dialect: PyYAML's safe loader with YAML 1.2 scalars, and reading one file into a mapping.

Shared by recipes, sweep specs and the resume check, so every YAML file the toolkit reads parses the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dpo.errors import UserError


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) with YAML 1.2 scalars, as users expect: `1e-5` is a float, and
    `no` / `off` / `yes` / `on` are strings (so `save_strategy: no` means "no", not False)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+)$"),
    list("-+0123456789."),
)


def safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: Path) -> dict:
    """Load one YAML file with the safe loader; it must hold a mapping."""
    if not path.is_file():
        raise UserError("recipe file not found", where=str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"invalid YAML{line}: {problem}", where=str(path)) from None
    if data is None:
        raise UserError("recipe is empty", where=str(path))
    if not isinstance(data, dict):
        raise UserError(f"a recipe must be a mapping of sections, got {type(data).__name__}", where=str(path))
    return data
