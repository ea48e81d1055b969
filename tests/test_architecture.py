"""The package's folders are its layers: import-linter's contracts (pyproject.toml) hold, and they say what we mean.

docs/architecture.md draws the layers; this test is what keeps the code matching the picture.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO

CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_layer_contracts_hold():
    lint = shutil.which("lint-imports") or pytest.fail("lint-imports (import-linter) is not installed")
    proc = subprocess.run([lint], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(CONTRACTS)} kept, 0 broken" in proc.stdout


def test_contracts_cover_the_rules_of_the_design():
    """DESIGN: no import cycles; train never imports sweep; analysis never imports the trainer; losses import torch
    only; config imports no torch; plan needs no trainer. A contract that is dropped or loosened fails here."""
    forbidden = {c["source_modules"][0]: set(c["forbidden_modules"]) for c in CONTRACTS if c["type"] == "forbidden"}
    assert {"dpo.sweep", "optuna"} <= forbidden["dpo.training"]
    assert {"dpo.training", "trl"} <= forbidden["dpo.analysis"]
    assert {"dpo.*", "dpo.training.*", "transformers", "trl"} <= forbidden["dpo.training.losses"]
    assert {"torch", "transformers", "trl", "dpo.training"} <= forbidden["dpo.config"]
    assert {"dpo.training", "trl"} <= forbidden["dpo.plan"]
    assert [c["ancestors"] for c in CONTRACTS if c["type"] == "acyclic_siblings"] == [["dpo"]]  # no cycles anywhere
    (layers,) = [c["layers"] for c in CONTRACTS if c["type"] == "layers"]
    order = [name for layer in layers for name in layer.replace(" ", "").split("|")]
    assert order.index("dpo.api") < order.index("dpo.sweep") < order.index("dpo.training") < order.index("dpo.analysis")
    assert order.index("dpo.training") < order.index("dpo.rundir") and order.index("dpo.data") < order.index(
        "dpo.config"
    )


def test_a_forbidden_import_is_caught(tmp_path):
    """The contracts bite: a copy of the package in which the losses import the trainer breaks one."""
    copy = tmp_path / "src"
    shutil.copytree(REPO / "dpo", copy / "dpo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    losses = copy / "dpo" / "training" / "losses.py"
    losses.write_text(losses.read_text() + "\nfrom dpo.training import trainer  # noqa: E402, F401\n")
    lint = shutil.which("lint-imports") or pytest.fail("lint-imports (import-linter) is not installed")
    env = {"PYTHONPATH": str(copy), "PATH": str(REPO), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, lint, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode != 0 and "Losses are pure functions of tensors" in proc.stdout
    assert "BROKEN" in proc.stdout
