"""The YAML loader's limits (dpo/config/yaml_loader.py): hostile documents are refused while they are composed,
and ordinary uses of the same features (anchors, merge keys, nesting) still load. The refusals as `dpo` commands
are cases of the bad-input corpus (tests/bad_inputs/cases.yaml)."""

from __future__ import annotations

import pytest

from dpo.config.yaml_loader import MAX_DEPTH, MAX_NODES, read_yaml_mapping, safe_load
from dpo.errors import UserError


def test_anchors_and_merge_keys_still_load():
    text = "base: &b {lr: 1.0e-5, steps: 3}\ntraining:\n  <<: *b\n  steps: 5\nlists: [&l [1, 2], *l]\n"
    assert safe_load(text) == {
        "base": {"lr": 1e-5, "steps": 3},
        "training": {"lr": 1e-5, "steps": 5},
        "lists": [[1, 2], [1, 2]],
    }


def test_nesting_up_to_the_limit_loads_and_one_level_more_is_refused():
    assert safe_load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(Exception, match=f"nested deeper than {MAX_DEPTH} levels"):
        safe_load("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_depth_reached_through_aliases_is_refused():
    """Each anchor nests 40 deep; the third alias chain reaches 120 levels once expanded."""
    deep = "[" * 40 + "{}" + "]" * 40
    text = f"a: &a {deep}\nb: &b {deep.replace('{}', '*a')}\nc: {deep.replace('{}', '*b')}\n"
    with pytest.raises(Exception, match="nested deeper than 64 levels once its aliases are expanded"):
        safe_load(text)


def test_expansion_is_measured_not_performed():
    """Ten levels of ten aliases: 10^10 values if expanded. Refused while composing, in well under a second of
    work (the limit is on the count, so this test would run out of memory, not time out, if it expanded)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    with pytest.raises(Exception, match=f"more than {MAX_NODES} values once its aliases are expanded"):
        safe_load("\n".join(lines))


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("training:\n  max_steps: 3\nloss: {beta: 0.1}\ntraining:\n  max_steps: 5\n")
    with pytest.raises(
        UserError, match=r"r.yaml: invalid YAML at line 4: duplicate key 'training' \(first given at line 1\)"
    ):
        read_yaml_mapping(path)


def test_duplicate_key_in_a_flow_mapping():
    with pytest.raises(Exception, match="duplicate key 'beta'"):
        safe_load("{beta: 0.1, beta: 0.2}")
