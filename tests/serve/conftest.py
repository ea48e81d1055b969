"""A finished tiny run (LoRA on the tiny random Llama, 4 steps) shared by the export and generate tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo.training.execute import execute
from tests.conftest import TINY_TRAINING, tiny_recipe_dict, write_recipe


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe_dict(tiny_model_dir, 16, TINY_TRAINING))
    execute(recipe, ["logging.samples=2"], output_dir=root / "run")
    return root / "run"
