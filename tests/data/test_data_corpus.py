"""The malformed-data corpus (tests/data/data_corpus/): each problem is a one-line error naming the file and row
under `on_invalid: error` (exit 2, before any run directory), and counted by reason under `skip`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dpo.cli import app
from dpo.data.rows import REASONS
from tests.conftest import REPO, write_recipe

CORPUS = REPO / "tests" / "data" / "data_corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def corpus_recipe(tmp_path, tiny_model_dir, name, on_invalid):
    return write_recipe(
        tmp_path / f"{on_invalid}.yaml",
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": str(CORPUS / name), "heldout_fraction": 0.34, "on_invalid": on_invalid},
            "training": {"max_length": 128},
        },
    )


def test_the_corpus_covers_every_reason_and_every_file():
    files = {p.name for p in CORPUS.iterdir()} - {"expected.json", "README.md"}
    assert files == set(EXPECTED) and len(files) >= 15
    reasons = {r for entry in EXPECTED.values() for r in entry["skip_dropped"]}
    assert reasons == set(REASONS) | {"duplicate"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_policy_names_file_and_row(tmp_path, tiny_model_dir, name):
    recipe = corpus_recipe(tmp_path, tiny_model_dir, name, "error")
    out_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(recipe), "--output-dir", str(out_dir)])
    expected = EXPECTED[name]["error"]
    if expected is None:  # duplicates are not an error: validation passes (and training is not what we test)
        result = CliRunner().invoke(app, ["validate", str(recipe)])
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {CORPUS / name}: {expected}")
    assert not out_dir.exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_skip_policy_counts_by_reason(tmp_path, tiny_model_dir, name):
    from dpo.training.gate import check

    card = check(corpus_recipe(tmp_path, tiny_model_dir, name, "skip")).data.card
    (source,) = card["sources"]["train"]
    assert source["dropped"] == EXPECTED[name]["skip_dropped"]
    assert source["kept"] == EXPECTED[name]["kept"]
    assert card["on_invalid"] == "skip" and card["length_check"]["max_length"] == 128
    assert card["split"]["train_pairs"] + card["split"]["eval_pairs"] == 6
    bad = sum(n for reason, n in source["dropped"].items() if reason != "duplicate")
    assert len(source.get("first_invalid", [])) == bad
