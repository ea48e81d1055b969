"""Resume and what a checkpoint holds besides the weights it continues from.

- `training.save_only_model: true` saves no optimizer, scheduler or RNG state, and transformers resumes without them
  in silence (fresh AdamW moments, the learning-rate schedule from step 0): `--resume` refuses to train on from such a
  checkpoint (exit 2, nothing changed), and still finishes a run killed after its last step (nothing left to train).
- The best checkpoint early stopping keeps (older than the newest) is restored into final/ at the end: when it is gone
  or damaged, the resume warns, the run finishes with the last weights, and summary.json says `final_weights: last`
  rather than claiming a best it never loaded (or failing with a traceback at the very end).

Each fixture trains the tiny model once (4 steps); each case works on a copy of it, as a kill after the last
checkpoint (no summary.json, no final/) would leave it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dpo.rundir.resume import checkpoints
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


# ---- the best checkpoint ---------------------------------------------------------------------------------------

SCRIPTED = [0, 1, 3, 2, 1]  # the held-out metric at steps 0..4: the best at step 2, then worse, no stop (patience 3)
EARLY_STOPPING = [
    "early_stopping.metric=eval_scripted",
    "early_stopping.mode=max",
    "early_stopping.patience=3",
    "training.eval_steps=1",
]


def scripted():
    from tests.training.test_early_stopping import ScriptedMetric

    return {"callbacks": [ScriptedMetric(SCRIPTED)], "extra_metrics": ("eval_scripted",)}


@pytest.fixture(scope="module")
def best_kept_run(tmp_path_factory, tiny_model_dir):
    """Checkpoints 2 (the best, kept by early stopping), 3 and 4; killed after the last step."""
    from dpo.training.execute import execute

    root = tmp_path_factory.mktemp("best-kept")
    recipe = tiny_recipe_dict(tiny_model_dir, 32, TINY_TRAINING)
    run_dir = root / "run"
    summary, _ = execute(write_recipe(root / "tiny.yaml", recipe), EARLY_STOPPING, output_dir=run_dir, **scripted())
    assert summary["best_step"] == 2 and summary["final_weights"] == "best" and summary["steps"] == 4
    assert [step for step, _ in checkpoints(run_dir / "checkpoints")] == [2, 3, 4]
    as_killed_after_the_last_step(run_dir)
    return run_dir


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BEST_DAMAGES = {
    # transformers' loader only logged a warning, and summary.json said final_weights: best
    "adapter_missing": (
        lambda best: (best / "adapter_model.safetensors").unlink(),
        "it has no weights file (adapter_model.safetensors or adapter_model.bin)",
    ),
    # transformers' loader raised at the very end: no final/, no summary.json, on every later resume too
    "adapter_truncated": (
        lambda best: truncate(best / "adapter_model.safetensors"),
        "adapter_model.safetensors: cannot be read",
    ),
    "gone": (shutil.rmtree, "it is gone"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(BEST_DAMAGES))
def test_a_damaged_best_checkpoint_is_a_warning_and_final_holds_the_last_weights(
    best_kept_run, tmp_path, damage, capsys
):
    run_dir = copy_run(best_kept_run, tmp_path)
    spoil, reason = BEST_DAMAGES[damage]
    best = run_dir / "checkpoints" / "checkpoint-2"
    spoil(best)
    summary = resume(run_dir, **scripted())
    assert summary["final_weights"] == "last" and summary["best_step"] == 2 and summary["steps"] == 4
    assert summary["stop_reason"] == "completed" and json.loads((run_dir / "summary.json").read_text()) == summary
    final = load_file(run_dir / "final" / "adapter_model.safetensors")
    last = load_file(run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    on_resuming, at_the_end = warnings  # (`reason` is where each says why: the start of it, for a damaged file)
    assert on_resuming.startswith(f"warning: {best}: the best checkpoint cannot be loaded ({reason}")
    assert on_resuming.endswith("); final/ will hold the last weights unless a later evaluation finds a new best")
    assert at_the_end.startswith(f"warning: the best checkpoint {best} cannot be loaded ({reason}")
    assert at_the_end.endswith("); final/ holds the last weights")


def test_an_intact_best_checkpoint_is_restored_on_resume_without_a_warning(best_kept_run, tmp_path, capsys):
    run_dir = copy_run(best_kept_run, tmp_path)
    summary = resume(run_dir, **scripted())
    assert summary["final_weights"] == "best" and summary["best_step"] == 2
    final = load_file(run_dir / "final" / "adapter_model.safetensors")
    best = load_file(run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert "warning: " not in capsys.readouterr().err


def test_damage_to_what_only_a_resume_reads_does_not_make_a_best_checkpoint_unrestorable(best_kept_run, tmp_path):
    from dpo.rundir.resume import ADAPTER_WEIGHTS, unrestorable

    best = tmp_path / "checkpoint-2"
    shutil.copytree(best_kept_run / "checkpoints" / "checkpoint-2", best)
    assert unrestorable(best, ADAPTER_WEIGHTS) is None
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        truncate(best / name)
    assert unrestorable(best, ADAPTER_WEIGHTS) is None  # the weights are what final/ gets
    # DeepSpeed's ZeRO optimizer state is read when the best checkpoint is loaded (its fp32 master weights)
    zero_state = best / "global_step2" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    zero_state.parent.mkdir()
    shutil.copy(best / "adapter_model.safetensors", zero_state)
    truncate(zero_state)
    assert "global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt" in unrestorable(best, ADAPTER_WEIGHTS)
    zero_state.unlink()
    (best / "checkpoint_complete.json").unlink()
    assert unrestorable(best, ADAPTER_WEIGHTS) == "it has no checkpoint_complete.json: its save was cut off"


def test_the_best_checkpoint_named_by_a_trainer_state(tmp_path):
    from dpo.rundir.resume import best_checkpoint_named

    folder = tmp_path / "checkpoints"
    # recorded as spelled then: relative to another working directory
    assert best_checkpoint_named(folder, {"best_model_checkpoint": "runs/x/checkpoints/checkpoint-2"}) == (
        folder / "checkpoint-2"
    )
    # transformers dropped the path on an earlier resume: early stopping's bookkeeping still has the step
    kept = {"args": {"keep_best": True}, "attributes": {"best_step": 3}}
    saved = {"best_model_checkpoint": None, "stateful_callbacks": {"BestCheckpointCallback": kept}}
    assert best_checkpoint_named(folder, saved) == folder / "checkpoint-3"
    not_kept = {"args": {"keep_best": False}, "attributes": {"best_step": 3}}  # no patience: no best checkpoint kept
    assert best_checkpoint_named(folder, {"stateful_callbacks": {"BestCheckpointCallback": not_kept}}) is None
    assert best_checkpoint_named(folder, {}) is None
