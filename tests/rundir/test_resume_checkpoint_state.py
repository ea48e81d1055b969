"""Resume and what a checkpoint holds besides the weights it continues from.

- `training.save_only_model: true` saves no optimizer, scheduler or RNG state, and transformers resumes without them
  in silence (fresh AdamW moments, the learning-rate schedule from step 0): `--resume` refuses to train on from such a
  checkpoint (exit 2, nothing changed), and still finishes a run killed after its last step (nothing left to train).

The fixture trains the tiny model once (4 steps); each case works on a copy of it, as a kill after the last
checkpoint (no summary.json, no final/) would leave it."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import TINY_TRAINING, run_dpo, tiny_recipe_dict, write_recipe


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def as_killed_after_the_last_step(run_dir) -> None:
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()
    (run_dir / "report.html").unlink(missing_ok=True)


def copy_run(run_dir, tmp_path):
    """A copy that writes its checkpoints into itself (the recipe names its output folder)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    text = (copy / "recipe.yaml").read_text()
    (copy / "recipe.yaml").write_text(text.replace(str(run_dir), str(copy)))
    return copy


def resume(run_dir, **kwargs):
    from dpo.training.execute import execute

    summary, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True, **kwargs)
    return summary


# ---- training.save_only_model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def save_only_model_run(tmp_path_factory, tiny_model_dir):
    from dpo.training.execute import execute

    root = tmp_path_factory.mktemp("save-only-model")
    recipe = tiny_recipe_dict(tiny_model_dir, 32, {**TINY_TRAINING, "save_only_model": True})
    run_dir = root / "run"
    execute(write_recipe(root / "tiny.yaml", recipe), [], output_dir=run_dir)
    as_killed_after_the_last_step(run_dir)
    return run_dir


@pytest.mark.slow
def test_resume_refuses_to_train_on_from_a_checkpoint_without_optimizer_state(save_only_model_run, tmp_path):
    """The regression: this resume trained steps 3 and 4 with a fresh optimizer and the schedule back at step 0."""
    run_dir = copy_run(save_only_model_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")  # as a kill between the two checkpoints leaves it
    saved = {p.name for p in (run_dir / "checkpoints" / "checkpoint-2").iterdir()}
    assert "adapter_model.safetensors" in saved and not {"optimizer.pt", "scheduler.pt", "rng_state.pth"} & saved
    before = snapshot(run_dir)
    proc = run_dpo("train", "--resume", run_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir / 'recipe.yaml'}: checkpoint-2 was saved with training.save_only_model: true and has no "
        "optimizer, scheduler or RNG state: training on from it would restart the optimizer and the learning-rate "
        "schedule at step 2, not continue the run; start a new run in another --output-dir "
        "(training.save_only_model: false to resume one)"
    ]
    assert snapshot(run_dir) == before


def test_a_save_only_model_run_killed_after_its_last_step_still_finishes(save_only_model_run, tmp_path):
    """At the last step there is nothing left to train, so no optimizer state is needed: final/ and summary.json."""
    run_dir = copy_run(save_only_model_run, tmp_path)
    summary = resume(run_dir)
    assert summary["stop_reason"] == "completed" and summary["steps"] == 4 and summary["resumed_from"] == [4]
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()


def test_training_ended_reads_the_last_step_and_the_stops_callbacks_recorded():
    from dpo.rundir.resume import training_ended

    assert training_ended({"global_step": 4, "max_steps": 4})
    assert not training_ended({"global_step": 2, "max_steps": 4})
    early_stopped = {"BestCheckpointCallback": {"args": {}, "attributes": {"stopped_at": 2}}}
    assert training_ended({"global_step": 2, "max_steps": 4, "stateful_callbacks": early_stopped})
    running = {"BestCheckpointCallback": {"args": {}, "attributes": {"stopped_at": None}}, "TrainerControl": [1]}
    assert not training_ended({"global_step": 2, "max_steps": 4, "stateful_callbacks": running})
    assert not training_ended({"global_step": "2", "max_steps": 4, "stateful_callbacks": "edited"})
