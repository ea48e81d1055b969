"""Every shipped recipe validates, and opens with a comment giving its launch command."""

from __future__ import annotations

import pytest

from dpo.training.gate import check
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
RECIPES = [p for p in RECIPES if "sweeps" not in p.parts and "accelerate" not in p.parts]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_validates(path):
    checked = check(path)
    assert checked.data.card["split"]["train_pairs"] > 0


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_opens_with_launch_command(path):
    first_lines = path.read_text().splitlines()[:4]
    assert first_lines[0].startswith("# ")
    assert any(f"dpo train recipes/{path.relative_to(REPO / 'recipes')}" in line for line in first_lines)


# The recipes that run the autopilot (the quickstart and what is the quickstart on other data or under another name);
# every other recipe is plain DPO plus its one control, as eval/bench_noise.py measures the single controls.
AUTOPILOT_RECIPES = {"quickstart.yaml", "sorting.yaml", "noisy-labels.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_quickstart_family_runs_the_autopilot_and_no_recipe_adds_a_hidden_nll_term(path):
    from dpo.config.loading import load_recipe

    recipe = load_recipe(path).recipe
    assert recipe.autopilot.enabled == (path.name in AUTOPILOT_RECIPES)
    assert recipe.regularizers.nll_weight == 0.0  # RPO and ORPO put the NLL term in their loss, not here
