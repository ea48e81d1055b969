"""Crash safety end to end: a real SIGKILL of `dpo train` at several points, then `dpo train --resume`.

The reference is the same recipe run once without interruption. Kill points are reached deterministically by
tests/kill_driver.py (a callback / a wrapper in the test driver freezes the process there; the test then sends
SIGKILL): mid-step (gradients computed, not applied), mid-checkpoint-save (a checkpoint folder half written) and
after the last step (before final/ and summary.json). After resuming, the run must equal the reference: the same
steps in metrics.jsonl, each once, the same summary, and the same final adapter. Tolerance: we assert equality
within 1e-6 (absolute) on every parameter and metric; on CPU we observe bit-identical results (difference 0.0),
since transformers restores the optimizer, scheduler and RNG states and skips the batches already seen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from dpo.rundir.resume import COMPLETE_MARK, checkpoints
from tests.conftest import REPO, read_jsonl

pytestmark = pytest.mark.slow  # each case runs the tiny model three times in fresh processes (~30 s)

STEPS = ["training.max_steps=6", "training.eval_steps=2"]
TIMING = ("runtime", "per_second", "preparation_time")
TOLERANCE = 1e-6


def dpo(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dpo", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def six_step_recipe_dict(model_dir) -> dict:
    """The tiny recipe with 6 steps, an evaluation (and so a checkpoint) every 2."""
    from tests.conftest import ARITHMETIC

    return {
        "name": "six",
        "seed": 0,
        "model": {"name_or_path": str(model_dir)},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(ARITHMETIC / "train.jsonl"), "eval": str(ARITHMETIC / "eval.jsonl"),
                 "max_train_pairs": 32, "max_eval_pairs": 8},
        "training": {"learning_rate": 1e-2, "max_steps": 6, "eval_steps": 2, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 8},
        "logging": {"progress_bar": False},
    }  # fmt: skip


@pytest.fixture(scope="module")
def six_step_recipe(tmp_path_factory, tiny_model_dir):
    import yaml

    path = tmp_path_factory.mktemp("resume") / "six.yaml"
    path.write_text(yaml.safe_dump(six_step_recipe_dict(tiny_model_dir)))
    return path


@pytest.fixture(scope="module")
def reference(six_step_recipe):
    run_dir = six_step_recipe.parent / "reference"
    proc = dpo("train", str(six_step_recipe), "--output-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def kill_at(recipe, run_dir, point: str, step: int) -> None:
    ready = run_dir.parent / f"{run_dir.name}.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kill_driver", str(recipe), str(run_dir), point, str(step), str(ready)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not ready.exists():
        assert proc.poll() is None, f"driver ended before {point}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"driver never reached {point}"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith(TIMING) and k != "epoch"}


def assert_close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=TOLERANCE), where
    else:
        assert a == b, where


@pytest.mark.parametrize(
    ("point", "step", "resumes_from", "left_behind"),
    [
        ("mid_step", 3, 2, None),  # step 3's gradients computed, never applied
        ("mid_checkpoint", 4, 2, "checkpoint-4"),  # checkpoint-4 half written: never picked, deleted on resume
        ("after_training", 6, 6, None),  # every step done, final/ and summary.json not written
    ],
)
def test_sigkill_then_resume_equals_an_uninterrupted_run(
    six_step_recipe, reference, tmp_path, point, step, resumes_from, left_behind
):
    run_dir = tmp_path / "run"
    kill_at(six_step_recipe, run_dir, point, step)
    assert (run_dir / ".lock").is_file() and not (run_dir / "summary.json").exists()
    if left_behind:
        half = run_dir / "checkpoints" / left_behind
        assert half.is_dir() and not (half / COMPLETE_MARK).exists()

    proc = dpo("train", "--resume", str(run_dir))  # the run directory alone: its recipe.yaml is used
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from checkpoint-{resumes_from} (step {resumes_from})" in proc.stdout
    assert not (run_dir / ".lock").exists()  # the killed process's lock file blocked nothing and is gone now

    assert_same_run(run_dir, reference, resumes_from)


def assert_same_run(run_dir, reference, resumes_from: int) -> None:
    """A run resumed from step `resumes_from` ended as the uninterrupted `reference`: each step logged once, the
    same metrics, summary and final adapter (within TOLERANCE), every checkpoint left complete."""
    metrics, expected = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    kinds = [(m["step"], "eval" if "eval_loss" in m else "end" if "train_runtime" in m else "train") for m in metrics]
    assert len(kinds) == len(set(kinds))  # no step twice
    assert [s for s, k in kinds if k == "train"] == [1, 2, 3, 4, 5, 6]  # none missing
    assert [s for s, k in kinds if k == "eval"] == [0, 2, 4, 6]
    assert len(metrics) == len(expected)
    for got, want in zip(metrics, expected, strict=True):
        assert_close(comparable(want), comparable(got), f"metrics step {want['step']}")

    summary = json.loads((run_dir / "summary.json").read_text())
    want = json.loads((reference / "summary.json").read_text())
    assert summary["resumed_from"] == [resumes_from] and want["resumed_from"] == []
    for key in ("stop_reason", "steps", "max_steps", "best_step", "best_metric", "final_weights", "reward_beta",
                "train_loss", "initial_metrics", "best_metrics", "final_metrics", "overfitting"):  # fmt: skip
        assert_close(want[key], summary[key], key)
    assert summary["steps"] == 6 and summary["stop_reason"] == "completed"

    final, final_ref = (load_file(d / "final" / "adapter_model.safetensors") for d in (run_dir, reference))
    assert final.keys() == final_ref.keys()
    worst = max((final[k] - final_ref[k]).abs().max().item() for k in final)
    assert worst <= TOLERANCE
    assert all(torch.isfinite(v).all() for v in final.values())
    assert all((p / COMPLETE_MARK).is_file() for _, p in checkpoints(run_dir / "checkpoints"))


def test_resume_refuses_a_different_recipe_and_a_finished_run(six_step_recipe, reference, tmp_path):
    import shutil

    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    proc = dpo("train", str(six_step_recipe), "--output-dir", str(reference), "--resume")
    assert proc.returncode == 2 and "the run already finished (stop_reason completed)" in proc.stderr
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before

    unfinished = tmp_path / "unfinished"  # as a kill before summary.json would leave it
    shutil.copytree(reference, unfinished)
    (unfinished / "summary.json").unlink()
    before = {p: p.read_bytes() for p in unfinished.rglob("*") if p.is_file()}
    proc = dpo("train", str(six_step_recipe), "--output-dir", str(unfinished), "--resume", "--set", "loss.beta=0.5")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {unfinished / 'recipe.yaml'}: loss.beta: the run was made with 0.1, ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in unfinished.rglob("*") if p.is_file()} == before


def test_resume_after_an_early_stop_does_not_train_on(tiny_recipe, tmp_path):
    """Killed after early stopping fired (its checkpoint saved, no summary yet): resume trains no further step and
    writes the same summary and final/ (the best checkpoint restored)."""
    import shutil

    from dpo.training.execute import execute
    from tests.training.test_early_stopping import ScriptedMetric

    values = [0, 1, 3, 2, 1, 0, 0]
    overrides = ["early_stopping.metric=eval_scripted", "early_stopping.mode=max", "early_stopping.patience=2",
                 "training.max_steps=6", "training.eval_steps=1"]  # fmt: skip
    run_dir = tmp_path / "run"
    kwargs = {"callbacks": [ScriptedMetric(values)], "extra_metrics": ("eval_scripted",)}
    first, _ = execute(tiny_recipe, overrides, output_dir=run_dir, **kwargs)
    assert first["stop_reason"] == "early_stopped" and first["steps"] == 4
    final_before = (run_dir / "final" / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()

    changes_before = (run_dir / "recipe_changes.json").read_bytes()
    # as `dpo train --resume RUN_DIR` does: the run's own recipe.yaml, no overrides
    second, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True, **kwargs)
    assert second["resumed_from"] == [4]
    assert (run_dir / "recipe_changes.json").read_bytes() == changes_before  # still what the first attempt changed
    for key in ("stop_reason", "steps", "best_step", "best_metric", "final_weights", "reward_beta", "train_loss",
                "best_metrics"):  # fmt: skip
        assert_close(first[key], second[key], key)
    assert (run_dir / "final" / "adapter_model.safetensors").read_bytes() == final_before
    steps = [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m and "eval_loss" not in m]
    assert steps == [1, 2, 3, 4]


def test_resume_with_nothing_there_starts_a_new_run_and_refuses_two_targets(tiny_recipe, tmp_path, capsys):
    from dpo.training.execute import execute

    summary, _ = execute(tiny_recipe, ["training.max_steps=1"], output_dir=tmp_path / "new", resume=True)
    assert summary["steps"] == 1 and summary["resumed_from"] == []
    assert "resume: nothing to resume in" in capsys.readouterr().out
    proc = dpo("train", "--resume", str(tmp_path / "new"), "--output-dir", str(tmp_path / "other"))
    assert proc.returncode == 2 and "give either a run directory or --output-dir, not both" in proc.stderr
