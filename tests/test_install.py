"""Installed without a clone: the wheel (`pip install .`, not editable) carries the shipped recipes and data sets,
so `dpo recipes`, `dpo --version` and `dpo validate quickstart` work from any folder; an editable install finds
the repository's own recipes/ and data/.

Slow: builds the wheel and a virtualenv. The venv sees this machine's site-packages (torch, TRL, ...) so nothing
is downloaded; dpo itself is installed into the venv with --no-deps, and the venv's copy is the one that runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpo import __version__
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# What a build reads: copied, so building writes no build/ or *.egg-info into the checkout
SOURCES = ("pyproject.toml", "setup.py", "README.md", "dpo", "recipes", "data")


def run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    return src


def venv_with(tmp_path: Path, *install_args) -> tuple[Path, dict]:
    venv = tmp_path / "venv"
    # without pip: the venv then has no setuptools of its own (ensurepip's is older than this build needs), and this
    # interpreter's pip installs into it (--python)
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path)
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python")
    run(*pip, "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall", *install_args, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's dpo, not this checkout's
    return venv, env


def check_installed(venv: Path, env: dict, elsewhere: Path, recipes: Path) -> None:
    dpo = venv / "bin" / "dpo"
    assert run(dpo, "--version", cwd=elsewhere, env=env).stdout.strip() == f"dpo-toolkit {__version__}"
    listed = run(dpo, "recipes", cwd=elsewhere, env=env).stdout
    assert "quickstart  " in listed and "Quickstart: LoRA DPO of the embedded SmolLM2-135M-Instruct" in listed
    assert f"files: {recipes}" in listed
    validated = run(dpo, "validate", "quickstart", cwd=elsewhere, env=env).stdout
    assert "ok: quickstart: model smollm2-135m-instruct" in validated and "320 train / 100 held-out" in validated


def test_wheel_install_ships_recipes_and_data(source, tmp_path):
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        dist,
        source,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("dpo_toolkit-*.whl")
    shutil.rmtree(source)  # nothing of the source tree is left to find: only the wheel's files
    venv, env = venv_with(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(venv / "bin" / "python", "-c", "import dpo; print(dpo.__file__)", cwd=elsewhere, env=env).stdout
    package = Path(where.strip()).parent
    assert package.is_relative_to(venv)
    assert (package / "_shipped" / "data" / "arithmetic" / "train.jsonl").is_file()
    check_installed(venv, env, elsewhere, package / "_shipped" / "recipes")
    assert not any(elsewhere.iterdir())  # validate writes nothing


def test_editable_install_finds_the_checkouts_recipes(source, tmp_path):
    venv, env = venv_with(tmp_path, "-e", source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_installed(venv, env, elsewhere, source / "recipes")
