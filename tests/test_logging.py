"""wandb (offline unless a key is configured) and TensorBoard: files appear where the run directory says."""

from __future__ import annotations

import pytest

from dpo.recipe import load_recipe
from dpo.run import _configure_wandb, execute


@pytest.mark.parametrize(
    ("env", "mode_key", "expected"),
    [
        ({}, "auto", "offline"),
        ({"WANDB_API_KEY": "x" * 40}, "auto", "online"),
        ({"WANDB_API_KEY": "x" * 40}, "offline", "offline"),
        ({}, "online", "online"),
    ],
)
def test_wandb_mode_follows_the_api_key(tiny_recipe, tmp_path, monkeypatch, env, mode_key, expected):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    recipe = load_recipe(tiny_recipe, ["logging.wandb=true", f"logging.wandb_mode={mode_key}"]).recipe
    assert _configure_wandb(recipe, tmp_path) == expected
    import os

    assert os.environ["WANDB_MODE"] == expected and os.environ["WANDB_DIR"] == str(tmp_path)


def test_wandb_off_by_default_touches_nothing(tiny_recipe, tmp_path):
    assert _configure_wandb(load_recipe(tiny_recipe).recipe, tmp_path) is None


def test_offline_wandb_and_tensorboard_write_into_the_run_directory(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    summary, _ = execute(
        tiny_recipe,
        ["logging.wandb=true", "logging.tensorboard=true", "training.max_steps=2", "training.eval_steps=2"],
        output_dir=run_dir,
    )
    assert summary["steps"] == 2
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].glob("*.wandb"))
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
