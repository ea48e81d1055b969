"""Recipes: YAML file -> `base:` inheritance -> `--set` overrides -> strictly validated `Recipe`.

A recipe is the single description of a run. Every error is a `UserError` naming the file that set the
offending key (a base recipe, the recipe itself, or `--set`) and the dotted key, with the closest valid key
suggested for typos. The schema itself is dpo/config/schema.py.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dpo.config.schema import HUB_PREFIX, PATH_KEYS, Recipe, _default_of, valid_keys
from dpo.config.shipped import resolve_recipe_path, shipped_name_hint
from dpo.config.signatures import unknown_key_problem, values_problem
from dpo.config.yaml_loader import read_yaml_mapping, safe_load
from dpo.errors import UserError, raise_all, shorten

SET_SOURCE = "--set"
# The source of the --set items a sweep passes for its spec's `fixed` keys (dpo/sweep/driver.py): a layer of their
# own, below the searched parameters' values, as a base recipe is below its child. So a searched
# training.eval_strategy: epoch overrides a fixed eval_steps (which the steps trials use) instead of being "written
# beside it" (dpo/config/checks.py), while a key fixed beside a fixed eval_strategy still is.
SWEEP_FIXED_SOURCE = "--set (sweep fixed)"
OVERRIDE_SOURCES = (SET_SOURCE, SWEEP_FIXED_SOURCE)

MAX_BASE_DEPTH = 64  # recipes in one `base:` chain, the recipe itself included; shipped ones use two
# Keys every sweep spec has (dpo/sweep/spec.py) and no recipe may: a file with both is a sweep given to a recipe command
SWEEP_SPEC_KEYS = {"recipe", "search"}


class Override(str):
    """A `key.path=value` item attributed to `source` (SWEEP_FIXED_SOURCE) instead of --set. A str, so it passes
    through every list of overrides, and is recorded, as the item it is."""

    source: str

    def __new__(cls, item: str, source: str):
        self = super().__new__(cls, item)
        self.source = source
        return self


class LoadedRecipe:
    """A validated Recipe plus where each key came from (for error messages in later checks)."""

    def __init__(self, recipe: Recipe, path: Path, provenance: dict[str, str]):
        self.recipe = recipe
        self.path = path
        self.provenance = provenance

    def source(self, key: str) -> str:
        """The file that set `key` (or its closest parent), or '--set'."""
        return source_of(self.provenance, key, str(self.path))

    def where(self, key: str) -> str:
        """'file: key', the prefix of an error about `key`."""
        return f"{self.source(key)}: {key}"


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), restore: Callable[[dict, str], dict] | None = None
) -> LoadedRecipe:
    """Read a recipe file with its bases, apply `key.path=value` overrides, validate strictly. `path` may also
    name a shipped recipe (`quickstart`; see dpo/config/shipped.py). `restore(data, file)`: applied to the file's
    own mapping as read, before anything else (a run directory's recipe.yaml on resume: its redacted secrets put
    back, dpo/rundir/secrets.py `restore_redacted`)."""
    given, path = path, resolve_recipe_path(path)
    if not path.exists():  # a FIFO, a folder, ...: read_yaml_mapping says what it is (dpo/config/input_files.py)
        bare = not Path(given).suffix and len(Path(given).parts) == 1  # a name, not a path: say how to find names
        hint = f"{shipped_name_hint(given)} (`dpo recipes` lists the shipped recipes, run by name)" if bare else ""
        raise UserError(f"recipe file not found{hint}", where=str(path))
    if SWEEP_SPEC_KEYS <= read_yaml_mapping(path).keys():
        raise UserError(f"is a sweep spec, not a recipe: run it with `dpo sweep {given}`", where=str(path))
    raw, provenance = _read_with_bases(path, chain=(), restore=restore)
    for item in overrides:
        key, value = parse_override(item)
        if key == "base" or key.startswith("base."):
            raise UserError(
                "base cannot be overridden: it is read before --set applies; edit the recipe", where=SET_SOURCE
            )
        source = getattr(item, "source", SET_SOURCE)
        _apply_override(raw, provenance, key, _command_line_paths_resolved(key, value), source)
    raw.setdefault("name", path.stem)
    absolute_local_model(raw)
    check_scalars(raw, provenance, default_source=str(path))
    return LoadedRecipe(validate(raw, provenance, default_source=str(path)), path, provenance)


def absolute_local_model(raw: dict) -> None:
    """A model.name_or_path that is a model folder here (config.json inside; read against the current directory, as
    from_pretrained always has) is recorded absolute: the run directory's recipe.yaml then still finds it when
    `dpo generate`, `dpo export --merge` or `dpo eval` run from elsewhere. An embedded alias or a hub id is no folder
    and stays as written, and so does anything else (dpo/models.py says what is wrong with it). Resume applies it to
    the recipe.yaml of a run made before paths were recorded absolute, so that such a run still resumes."""
    model = raw.get("model")
    name = model.get("name_or_path") if isinstance(model, dict) else None
    if isinstance(name, str) and name.strip():
        local = Path(name).expanduser()
        if (local / "config.json").is_file():
            model["name_or_path"] = os.path.abspath(local)


def parse_override(item: str) -> tuple[str, Any]:
    """'loss.beta=0.2' -> ('loss.beta', 0.2). Values are parsed as YAML, so types come out right."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{item}' must look like key.path=value", where=SET_SOURCE)
    if "" in key.split("."):  # `loss..beta`, `.loss`: was reported as the unknown key 'loss.' or ''
        raise UserError(f"override key {shorten(key)} has an empty part between dots; write it as key.path=value",
                        where=SET_SOURCE)  # fmt: skip
    try:
        value = safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        # a ReaderError (a control character) has no `problem`; repr (shortened): the value may hold terminal escapes
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{key}: value {shorten(text)} is not valid YAML ({problem})", where=SET_SOURCE) from None
    return key, value


MAX_INT = 2**63 - 1  # the largest integer torch, numpy and the JSON of a run directory all keep exactly


def check_scalars(raw: Any, provenance: dict[str, str], default_source: str) -> None:
    """Every number in the recipe is finite and fits 64 bits: `1e400` (YAML reads inf), `.nan` or a 400-digit
    integer would pass the schema's range checks (NaN compares false) and fail only once the run has started.
    Every text is one UTF-8 can hold (YAML's "\\ud800" escape makes a lone surrogate, which no file name or
    file can), keys included. Checked on the raw mapping, so `training:` keys (passed through to DPOConfig) are
    covered too. Every such value is reported, not only the first."""
    raise_all(list(_scalar_problems(raw, provenance, default_source, ())))


def _scalar_problems(raw: Any, provenance: dict[str, str], default_source: str, path: tuple) -> Iterator[UserError]:
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(key, str) and not _utf8(key):  # the run's recipe.yaml could not be written
                section = ".".join(str(p) for p in path if isinstance(p, str))
                where = source_of(provenance, section, default_source)
                problem = f"key {shorten(key)} must be text without lone surrogate escapes (\\ud800 to \\udfff)"
                yield UserError(f"{_shown(path)}: {problem}" if path else problem, where=where)
                continue  # its value is named by a key no message can show
            yield from _scalar_problems(value, provenance, default_source, (*path, key))
        return
    if isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from _scalar_problems(value, provenance, default_source, (*path, i))
        return
    if isinstance(raw, str):
        if _utf8(raw):
            return
        what = "text without lone surrogate escapes (\\ud800 to \\udfff)"
    elif isinstance(raw, float | int) and not isinstance(raw, bool):
        if isinstance(raw, float) and math.isfinite(raw) or isinstance(raw, int) and abs(raw) <= MAX_INT:
            return
        what = "a finite number" if isinstance(raw, float) else f"an integer from -{MAX_INT} to {MAX_INT} (2^63 - 1)"
    else:
        return
    names = [str(p) for p in path if isinstance(p, str)]
    where = source_of(provenance, ".".join(names), default_source)
    yield UserError(f"{_shown(path)}: must be {what} (got {shorten(raw)})", where=where)


def _shown(path: tuple) -> str:
    """A path into the recipe as written: `data.augment[0].fraction`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def validate(raw: dict, provenance: dict[str, str], default_source: str) -> Recipe:
    raw = {k: v for k, v in raw.items() if k != "base"}
    try:
        return Recipe.model_validate(raw, strict=True)  # `patience: true` is no 1, `beta: '0.1'` no number
    except ValidationError as exc:
        by_key: dict[str, list[dict]] = {}  # every problem, each key once (a union type errs once per member)
        for err in exc.errors():
            by_key.setdefault(_error_key(err), []).append(err)
        raise_all(
            [
                UserError(_describe(errors, key), where=source_of(provenance, key, default_source))
                for key, errors in by_key.items()
            ]
        )
        raise  # not reached: raise_all raised


# pydantic names the member of a union type an error is about after the key (loss.type.str, peft.target_modules.
# list[str]); recipe keys are lowercase names and list positions
_RECIPE_KEY_PART = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _key_of(loc: tuple) -> str:
    """The dotted recipe key of a pydantic error location, without a union member's tag."""
    parts = []
    for part in loc:
        if isinstance(part, str) and (not _RECIPE_KEY_PART.fullmatch(part) or part in _TYPE_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts)


def _error_key(err: dict) -> str:
    """The recipe key an error is about. An unknown key is named as written (`early-stopping`, `model.Dtype`): it
    is no recipe key, so `_key_of` would stop at its parent and report the parent, in the parent's file."""
    if err["type"] == "extra_forbidden":
        parent = _key_of(err["loc"][:-1])
        return f"{parent}.{err['loc'][-1]}" if parent else str(err["loc"][-1])
    return _key_of(err["loc"])


def _describe(errors: list[dict], key: str) -> str:
    kind = errors[0]["type"]
    if kind == "extra_forbidden":
        return unknown_key_problem(key, valid_keys(key.rpartition(".")[0]))
    if kind == "missing":
        return f"required key '{key}' is missing"
    return values_problem(errors, key)


def source_of(provenance: dict[str, str], key: str, default: str) -> str:
    """The file that set `key`, falling back to its parents (a section set as a whole).

    For an error about a whole section (a cross-key check), a key under it set by --set is the
    likeliest culprit, so --set wins there (then a sweep's fixed keys).
    """
    for override in OVERRIDE_SOURCES:
        if any(k.startswith(f"{key}.") and src == override for k, src in provenance.items()):
            return override
    parts = key.split(".")
    while parts:
        found = provenance.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return default


def base_recipe_path(recipe: Path, base_ref: str) -> Path:
    """The file a recipe's `base:` names: `~` expanded, a relative path read against the folder of the recipe as it
    was named (a recipe that is a symlink: the link's folder), as its relative data paths are, `..` included: the
    file the system opens, so that `..` through a linked folder goes to the target's parent, as it does for the data
    paths beside it (it went up the link's own path). Shown as written, `..` folded, where that names the same file."""
    joined = recipe.parent / os.path.expanduser(base_ref)  # an absolute base wins in the join
    folded, opened = Path(os.path.normpath(joined)), Path(os.path.realpath(joined))  # realpath: no error on a loop
    return folded if Path(os.path.realpath(folded)) == opened else opened


def _read_with_bases(path: Path, chain: tuple[Path, ...], restore=None) -> tuple[dict, dict[str, str]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError(f"base: inheritance cycle {cycle}", where=str(path))
    data = read_yaml_mapping(path)
    if restore is not None:  # before the paths are resolved: a secret may be a path's start
        data = restore(data, str(path))
    _resolve_paths(data, path.parent)
    base_ref = data.get("base")
    if base_ref is None:
        merged, provenance = {}, {}
    else:
        if not isinstance(base_ref, str) or not base_ref.strip():
            raise UserError(f"base: must be a path to another recipe (got {base_ref!r})", where=str(path))
        base_path = base_recipe_path(path, base_ref)
        if not base_path.exists():
            raise UserError(f"base: file '{base_ref}' not found (looked for {base_path})", where=str(path))
        if base_path.is_dir():  # '..' or '.': the folder's name alone would say neither which recipe nor which key
            raise UserError(f"base: {base_ref!r}: is a directory, not a regular recipe file", where=str(path))
        # anything else that is there but no regular file (a FIFO) is named by its own file name when it is read
        if len(chain) + 1 >= MAX_BASE_DEPTH:  # each base is a recursion: thousands would be a RecursionError
            raise UserError(
                f"base: a chain of more than {MAX_BASE_DEPTH} recipes (from {chain[0] if chain else resolved})",
                where=str(path),
            )
        merged, provenance = _read_with_bases(base_path, (*chain, resolved))
        merged.pop("name", None)  # a child recipe is its own run; it never inherits the base's name
    _deep_merge(merged, data, provenance, str(path), prefix="")
    return merged, provenance


def _command_line_paths_resolved(key: str, value: Any) -> Any:
    """Paths given on the command line are CWD-relative, set one by one (`data.train=x.jsonl`, or the path of a
    source given as a mapping: `data.train.path=x.jsonl`) or within their section (`data={train: x.jsonl}`):
    recorded absolute, so the run's recipe.yaml finds them from anywhere."""
    if key in PATH_KEYS or key in {f"{path_key}.path" for path_key in PATH_KEYS}:
        return resolve_source_paths(value, Path.cwd())
    if isinstance(value, dict) and any(path_key.partition(".")[0] == key for path_key in PATH_KEYS):
        section = {key: copy.deepcopy(value)}
        _resolve_paths(section, Path.cwd())
        return section[key]
    return value


def _resolve_paths(data: dict, folder: Path) -> None:
    for key in PATH_KEYS:
        section, _, leaf = key.partition(".")
        block = data.get(section)
        if isinstance(block, dict) and leaf in block:
            block[leaf] = resolve_source_paths(block[leaf], folder)


def resolve_source_paths(value: Any, folder: Path) -> Any:
    """Data source paths made absolute against `folder`: a path, a {path: ...} source, or a list of them.
    Hub ids (hub:owner/name) are not paths and stay as written."""
    if isinstance(value, list):
        return [resolve_source_paths(item, folder) for item in value]
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": resolve_source_paths(value["path"], folder)}
    if isinstance(value, str) and not value.startswith(HUB_PREFIX):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (folder / p).resolve())
    return value


def _deep_merge(into: dict, new: dict, provenance: dict[str, str], source: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, provenance, source, dotted + ".")
        else:
            into[key] = copy.deepcopy(value)
            _attribute(provenance, dotted, value, source)


def _attribute(provenance: dict[str, str], dotted: str, value: Any, source: str) -> None:
    """`dotted` and every key under it now come from `source`; keys the value it replaced had under it are gone (a
    section replaced by null or a scalar keeps none of its old keys' sources)."""
    for stale in [k for k in provenance if k.startswith(f"{dotted}.")]:
        del provenance[stale]
    provenance[dotted] = source
    if isinstance(value, dict):
        for sub in _flatten_keys(value, dotted):
            provenance[sub] = source


def _flatten_keys(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(f"{prefix}.{k}")
        if isinstance(v, dict):
            out.extend(_flatten_keys(v, f"{prefix}.{k}"))
    return out


def _apply_override(raw: dict, provenance: dict[str, str], key: str, value: Any, source: str = SET_SOURCE) -> None:
    """`--set key=value`. A mapping given for a section merges into it, as a child recipe's section does into its
    base's (`--set peft={r: 8}` keeps the recipe's dropout and target modules); anything else replaces the value.
    Every key it sets is attributed to `source` (--set), so an error about one names the command line, not the file."""
    existing = _dotted_value(raw, key)
    if isinstance(value, dict) and isinstance(existing, dict):
        _deep_merge(existing, value, provenance, source, prefix=f"{key}.")
        return
    _set_dotted(raw, key, value)
    _attribute(provenance, key, value, source)


def _dotted_value(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(parts[: i + 1])} is not a section, cannot set {key}", where=SET_SOURCE)
        node = child
    node[parts[-1]] = value


def changes_from_base(loaded: LoadedRecipe) -> list[dict[str, Any]]:
    """What the recipe file itself and its --set overrides changed relative to its `base:` chain (or to the
    defaults when it has no base): one {key, value, base_value, source} per key they set, for the run report.

    `base_value` is what the key would be without that layer: for a key the recipe file sets, the value from
    its base chain; for a --set key, the value from the recipe file and its bases; the schema default when
    neither sets it (None for required keys and `training` keys left to DPOConfig)."""
    own = {str(loaded.path), *OVERRIDE_SOURCES}
    keys = [k for k, src in loaded.provenance.items() if src in own and k != "base"]
    leaves = [k for k in keys if not any(other.startswith(f"{k}.") for other in keys)]
    resolved = loaded.recipe.model_dump(mode="json")
    file_raw, _ = _read_with_bases(loaded.path, chain=())
    base_ref = read_yaml_mapping(loaded.path).get("base")
    base_raw: dict = {}
    if isinstance(base_ref, str):
        base_raw, _ = _read_with_bases(base_recipe_path(loaded.path, base_ref), chain=())
    out = []
    for key in sorted(leaves, key=lambda k: (k != "name", k)):
        below = file_raw if loaded.provenance[key] in OVERRIDE_SOURCES else base_raw
        value, base_value = _lookup(resolved, key), _lookup(below, key)
        if base_value is _MISSING:
            base_value = _default_of(key)
        out.append(
            {
                "key": key,
                "value": None if value is _MISSING else value,
                "base_value": base_value,
                "source": loaded.provenance[key],
            }
        )
    return out


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree
