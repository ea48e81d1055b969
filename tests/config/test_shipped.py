"""The shipped recipes: a bare name runs one from any folder, `dpo recipes` lists them, a sweep spec given to a recipe
command says to use `dpo sweep`, and `dpo --version` prints the package's version."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dpo import __version__
from dpo.cli import app
from dpo.config.loading import load_recipe
from dpo.config.shipped import first_comment, resolve_recipe_path, shipped_dir, shipped_recipes
from tests.conftest import REPO


def test_in_a_checkout_the_shipped_folders_are_the_repositorys():
    assert shipped_dir("recipes") == REPO / "recipes"
    assert shipped_dir("data") == REPO / "data"


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml", "sweeps/controls"])
def test_a_bare_name_is_a_shipped_recipe_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe_path(name) == REPO / "recipes" / f"{name.removesuffix('.yaml')}.yaml"


def test_a_file_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("data: {train: mine.jsonl}\n")
    assert resolve_recipe_path("quickstart.yaml") == tmp_path.joinpath("quickstart.yaml").relative_to(tmp_path)
    assert resolve_recipe_path("./quickstart") == tmp_path.joinpath("quickstart").relative_to(tmp_path)  # a path


def test_a_shipped_recipes_data_paths_resolve_against_its_own_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = load_recipe("plain")  # plain.yaml inherits quickstart.yaml, whose data paths are ../data/...
    assert loaded.recipe.data.train == str(REPO / "data" / "arithmetic" / "train.jsonl")
    assert loaded.path == REPO / "recipes" / "plain.yaml"


def test_dpo_recipes_lists_every_shipped_recipe_with_its_first_comment_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = {r.name for r in shipped_recipes()}
    assert {"quickstart", "plain", "sweeps/controls"} <= names
    assert not any(n.startswith("accelerate/") for n in names)  # accelerate launch configs are not recipes
    for recipe in shipped_recipes():
        assert any(line.split()[0] == recipe.name and line.endswith(recipe.summary) for line in lines[1:]), recipe
    quick = next(line for line in lines if line.split()[0] == "quickstart")
    assert "Quickstart: LoRA DPO of the embedded SmolLM2-135M-Instruct" in quick
    assert lines.index("sweeps (dpo sweep NAME):") > lines.index(quick)  # sweeps are listed after the recipes


def test_first_comment_is_the_first_comment_line(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\n#   Second: not this\n# ignored\n")
    assert first_comment(tmp_path / "r.yaml") == "Second: not this"


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"dpo-toolkit {__version__}"


@pytest.mark.parametrize("given", ["sweeps/controls", str(REPO / "recipes" / "sweeps" / "controls.yaml")])
def test_validate_on_a_sweep_spec_says_to_use_dpo_sweep(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", given])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {REPO / 'recipes' / 'sweeps' / 'controls.yaml'}: is a sweep spec, not a recipe: run it with "
        f"`dpo sweep {given}`"
    ]


def test_an_unknown_bare_name_points_at_dpo_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "quickstrat"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: quickstrat: recipe file not found; did you mean 'quickstart'? (`dpo recipes` lists"
    )
