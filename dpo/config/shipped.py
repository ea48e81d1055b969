"""The recipes and data sets that ship with the toolkit, found wherever dpo is installed.

In a clone they are the repository's recipes/ and data/ folders; an installed wheel carries the same folders as
package data, dpo/_shipped/recipes and dpo/_shipped/data (setup.py maps them), so a recipe's relative data paths
(`../data/arithmetic/train.jsonl`) resolve the same in both. A bare recipe name on the command line
(`dpo train quickstart`, `dpo sweep sweeps/controls`) is one of these files; a path that exists always wins.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from dpo.errors import UserError, did_you_mean

RECIPE_SUFFIXES = (".yaml", ".yml")
# Folders of recipes/ that hold other things than recipes: `accelerate launch --config_file` files.
NOT_RECIPES = ("accelerate",)
SWEEPS = "sweeps"  # sweep specs, run with `dpo sweep`


def shipped_dir(kind: str) -> Path:
    """The folder of the shipped `kind` ('recipes' or 'data'): the installed package data, or in a source
    checkout (an editable install, or PYTHONPATH pointing at a clone) the repository's own folder."""
    installed = Path(str(importlib.resources.files("dpo").joinpath("_shipped", kind)))
    if installed.is_dir():
        return installed
    root = Path(str(importlib.resources.files("dpo"))).parent
    if (root / "pyproject.toml").is_file() and (root / kind).is_dir():
        return root / kind
    raise UserError(f"the shipped {kind} are missing from this installation of dpo (looked in {installed})")


@dataclass(frozen=True)
class ShippedRecipe:
    name: str  # what `dpo train NAME` takes: the path under recipes/ without its suffix
    path: Path
    summary: str  # the file's first comment line
    is_sweep: bool


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe and sweep spec, recipes first, each sorted by name."""
    folder = shipped_dir("recipes")
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.suffix not in RECIPE_SUFFIXES or rel.parts[0] in NOT_RECIPES:
            continue
        name = rel.with_suffix("").as_posix()
        found.append(ShippedRecipe(name, path, first_comment(path), rel.parts[0] == SWEEPS))
    return sorted(found, key=lambda r: (r.is_sweep, r.name))


def first_comment(path: Path) -> str:
    """The text of the file's first `# ...` line ('' without one)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def resolve_recipe_path(given: str | Path) -> Path:
    """`given` as a file: the path itself when it exists (or looks like a path to a file), else the shipped recipe
    of that name (`quickstart`, `quickstart.yaml`, `sweeps/controls`). A name that is neither is returned as given,
    so the caller's 'not found' error names what the user wrote."""
    path = Path(given)
    if path.exists() or path.is_absolute() or str(given).startswith(("~", ".")):
        return path
    try:
        folder = shipped_dir("recipes")
    except UserError:
        return path
    candidates = [folder / path] if path.suffix in RECIPE_SUFFIXES else []
    candidates += [folder / f"{path}{suffix}" for suffix in RECIPE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), path)


def shipped_name_hint(given: str | Path) -> str:
    """ "; did you mean 'quickstart'?" for a misspelt shipped recipe name, or ""."""
    try:
        names = [r.name for r in shipped_recipes()]
    except UserError:
        return ""
    return did_you_mean(Path(given).with_suffix("").as_posix(), names)
