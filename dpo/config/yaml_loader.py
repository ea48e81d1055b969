"""The recipe YAML dialect: PyYAML's safe loader with YAML 1.2 scalars, and reading one file into a mapping.

Shared by recipes, `--set` values, sweep specs and the resume check, so every YAML file the toolkit reads parses
the same way, within the same limits (docs/recipes.md "Limits"):
  * a file is at most MAX_YAML_BYTES (dpo/config/input_files.py), and a regular file;
  * collections nest at most MAX_DEPTH deep, counted after aliases are expanded (PyYAML's composer recurses:
    thousands of levels would end in a RecursionError);
  * a document holds at most MAX_NODES values after aliases are expanded: a 1 KB "billion laughs" alias bomb
    is refused while it is composed, before any Python object is built from it;
  * a key given twice in one mapping is an error naming its line (YAML 1.2 forbids it; PyYAML would keep the
    last one silently).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from dpo.config.input_files import MAX_YAML_BYTES, read_input_bytes
from dpo.errors import UserError

MAX_DEPTH = 64  # nested mappings / lists; recipes use fewer than 6
MAX_NODES = 100_000  # values in one document after alias expansion; recipes hold a few hundred
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) with YAML 1.2 scalars, as users expect: `1e-5` is a float,
    `no` / `off` / `yes` / `on` are strings (so `save_strategy: no` means "no", not False), `010` is ten, `1:30` and
    `1:30.0` are text (no base 60), and so is `2024-06-01` (no timestamps: a dated run name stays a name).
    Bounded and strict about duplicate keys (see the module docstring)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded(node)  # before construction, which is where an alias bomb would be expanded
        return node

    def construct_object(self, node, deep=False):
        """A value its explicit tag cannot read (`!!int abc`, `!!float x`, `!!bool maybe`, `!!timestamp 3`): PyYAML's
        constructors raise Python errors there, not YAML ones; one YAML error at the value's line instead."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            tag = node.tag.rsplit(":", 1)[-1]
            shown = f"{node.value!r} " if isinstance(node.value, str) else ""
            raise ConstructorError(None, None, f"{shown}is not a valid !!{tag}", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base`: keys written next to it override the merged ones
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: PyYAML's own error below says so
                    continue
                if seen is not None:
                    raise ConstructorError(
                        None, None, f"duplicate key {key!r} (first given at line {seen})", key_node.start_mark
                    )
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# YAML 1.1's implicit types that 1.2 changed or dropped: bool, int and float are replaced below by their YAML 1.2
# forms (the 1.1 float read `1:30.0` as base 60, 90.0), and a timestamp is text (`name: 2024-06-01` is a name, no date)
_YAML_1_1_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:timestamp")  # fmt: skip
_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 integers: decimal, 0o octal, 0x hex; digit separators between digits (`10_000`, as Python writes them)
# are kept, as PyYAML always read them (`1_` is text). YAML 1.1's leading-zero octal (`seed: 010` read as 8) and
# base 60 (`1:30` read as 90) are gone: `010` is ten and `1:30` is text.
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+(?:_[0-9]+)*|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)


def _construct_int(loader: yaml.SafeLoader, node: Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "010" is ten; "!!int 1_000" (an explicit tag) is a thousand, as Python reads it


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
# YAML 1.2 floats: `1e-5` without a dot too (1.1 needed one), `.inf` and `.nan` (which check_scalars refuses by name)
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _SafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string that our loader or a YAML 1.1 reader (PyYAML's own safe_load, on
    a recipe.yaml a user reads) would take for something else: a name `0o17` or `1e5` is written '0o17', and
    `no` is written 'no', so that both read them back as text."""


_OURS, _YAML_1_1 = _SafeLoader.yaml_implicit_resolvers, yaml.SafeDumper.yaml_implicit_resolvers
_SafeDumper.yaml_implicit_resolvers = {
    first: [*_OURS.get(first, []), *_YAML_1_1.get(first, [])] for first in {*_OURS, *_YAML_1_1}
}


def dump_yaml(data, **kwargs) -> str:
    """YAML text that `safe_load` reads back to `data` (for the files we write: recipe.yaml, sweep.yaml, ...)."""
    return yaml.dump(data, Dumper=_SafeDumper, **kwargs)


# A line width no value reaches, for the files of a run or sweep directory: a long value stays on one line. A redacted
# secret ("[redacted $NAME]") puts a space into a path, where YAML would otherwise fold a long one onto two lines.
UNFOLDED = 1 << 20


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, SequenceNode) else []


def _check_expanded(root: Node | None) -> None:
    """Refuse a node graph whose expansion (every alias replaced by a copy of its anchor) holds more than
    MAX_NODES values or nests deeper than MAX_DEPTH, or that refers to itself. Each distinct node is measured
    once (iteratively: the expanded depth is what is being bounded), so a bomb costs no more than its text."""
    if root is None:
        return
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    open_nodes: set[int] = set()  # the nodes on the current path, to see an alias that contains itself
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            kids = [measured[id(child)] for child in _children(node)]
            size, depth = 1 + sum(s for s, _ in kids), 1 + max((d for _, d in kids), default=0)
            if size > MAX_NODES:
                problem = f"more than {MAX_NODES} values once its aliases are expanded (an alias bomb?)"
                raise ComposerError(None, None, problem, node.start_mark)
            if depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded"
                raise ComposerError(None, None, problem, node.start_mark)
            measured[key] = (size, depth)
            continue
        if key in measured:
            continue
        if key in open_nodes:
            raise ComposerError(None, None, "an alias refers to a node that contains it", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)


def safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: Path, what: str = "recipe file") -> dict:
    """Load one YAML file with the safe loader; it must hold a mapping. `what` names the file in messages."""
    raw = read_input_bytes(path, MAX_YAML_BYTES, what=what)
    try:
        data = safe_load(raw.decode("utf-8"))
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
