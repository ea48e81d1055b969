"""`dpo train` under torchrun and accelerate launch: two CPU processes (gloo) train one run, and the loss curve
is the single-process curve with the same global batch; a two-process run killed by SIGKILL resumes (with two
processes) to the uninterrupted two-process run; the non-finite guard stops both processes, rank 0 alone
writing. The shipped accelerate configs parse."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpo.rundir.resume import COMPLETE_MARK
from tests.conftest import REPO, read_jsonl
from tests.rundir.test_resume import assert_same_run, six_step_recipe_dict

ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
# Same global batch (4 pairs per optimizer step), same data order: the two curves agree to float rounding
# (gradients are averaged over the processes in a different order). Unsynchronised processes, the failure this
# guards against, differ by ~4e-4 in the train loss by step 2 here.
LOSS_TOLERANCE = 1e-5


def _train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r and "eval_loss" not in r]


def _eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r]


def _assert_same_curve(single: Path, multi: Path) -> None:
    one, two = _train_rows(single), _train_rows(multi)
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one metrics file, one line per step (not one per process)
    assert [r["num_tokens"] for r in two] == [r["num_tokens"] for r in one]  # the same pairs in each step
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=LOSS_TOLERANCE), a["step"]
    for a, b in zip(_eval_rows(single), _eval_rows(multi), strict=True):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=LOSS_TOLERANCE), a["step"]
    held_out = [r["eval_loss"] for r in _eval_rows(single)]  # the same pairs at every evaluation, unlike the batches
    assert abs(held_out[-1] - held_out[0]) > 10 * LOSS_TOLERANCE  # training moved the model: a real comparison


@pytest.mark.slow
def test_two_process_training_matches_single_process(tiny_recipe, tmp_path):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["training"]["per_device_train_batch_size"] = 2  # x 2 processes = the single run's 4
    multi_recipe = tmp_path / "multi.yaml"
    multi_recipe.write_text(yaml.safe_dump(recipe))

    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "dpo", "train", str(tiny_recipe), "--output-dir", str(single)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dpo", "train",
           str(multi_recipe), "--output-dir", str(torchrun)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out metrics") == 1  # rank 0 prints the summary
    summary = json.loads((torchrun / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stop_reason"] == "completed"
    assert (torchrun / "final" / "adapter_model.safetensors").is_file()
    _assert_same_curve(single, torchrun)

    # accelerate launch with the shipped DDP config: without GPUs it runs the processes on CPU over gloo
    accel = tmp_path / "accelerate"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes" / "accelerate" / "multi-gpu.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "-m", "dpo", "train", str(multi_recipe), "--output-dir", str(accel)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curve(single, accel)


@pytest.mark.slow
def test_adaptive_beta_under_two_processes_is_the_single_process_beta(tiny_recipe, tmp_path):
    """beta-DPO's statistics are of the whole batch: two processes with 2 pairs each log, step by step, the beta of
    one process with the 4 pairs (each process computing it from its own 2 pairs gives another beta on each)."""
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["loss"]["beta_schedule"] = {"type": "adaptive", "alpha": 5.0}  # a large alpha: a beta that moves
    recipe["training"]["learning_rate"] = 5e-2  # and gaps that spread from step 2 on
    runs = _one_and_two_processes(recipe, tmp_path)
    single, multi = (_train_rows(runs[p]) for p in (1, 2))
    assert [r["beta"] for r in single][0] == 0.1 and abs(single[-1]["beta"] - 0.1) > 1e-3  # it moved
    for a, b in zip(single, multi, strict=True):
        assert b["beta"] == pytest.approx(a["beta"], abs=1e-4), a["step"]  # per process: 5e-3 apart
        assert b["loss"] == pytest.approx(a["loss"], abs=LOSS_TOLERANCE), a["step"]


@pytest.mark.slow
def test_autopilot_under_two_processes_decides_and_acts_as_one_process(tiny_recipe, tmp_path):
    """The quickstart runs the autopilot, and docs/distributed.md launches the quickstart on several processes: every
    rank runs the autopilot's rules and changes its own loss, so two processes log the single process's decisions
    and loss curve (a change made on rank 0 alone would average a smoothed gradient with an unsmoothed one, and move
    the curve). The rule here reads the recipe's flip rate, not a metric (the next test has the rules that do)."""
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["autopilot"] = {"enabled": True, "flip_rate": 0.2}  # label_audit: the smoothing to 0.2 when it first looks
    runs = _one_and_two_processes(recipe, tmp_path)
    decisions = {processes: _decisions(run_dir) for processes, run_dir in runs.items()}
    assert decisions[1], "the single-process run made no autopilot decision"
    assert decisions[1][0][1:] == ("label_audit", {"loss.label_smoothing": [0.0, 0.2]})
    assert decisions[2] == decisions[1]
    _assert_same_curve(runs[1], runs[2])


@pytest.mark.slow
def test_autopilot_rules_that_read_evaluations_decide_alike_under_two_processes(tiny_recipe, tmp_path):
    """The rules that read held-out metrics and the train/held-out gaps: each rank computes them from its trainer's
    log history, which must hold the same gathered numbers on every rank, or the ranks would change different
    controls (or one would stop alone and the other wait for it forever). Thresholds near zero and no noise margin
    make them fire on the tiny model; two processes must log the same decisions, for the same numbers."""
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["training"]["learning_rate"] = 5e-2  # metrics that move by step 2
    recipe["early_stopping"] = {"noise_sigmas": 0}  # the rules' thresholds alone, no standard-error margin
    recipe["autopilot"] = {"enabled": True, "displacement_nats": 1e-6, "accuracy_gap": 1e-6, "loss_rise": 1e-6,
                           "patience": 1, "cooldown": 0}  # fmt: skip
    runs = _one_and_two_processes(recipe, tmp_path)
    decisions = {processes: _decisions(run_dir) for processes, run_dir in runs.items()}
    assert any(rule != "label_audit" for _, rule, _ in decisions[1]), decisions[1]  # a metric rule fired
    assert decisions[2] == decisions[1]
    because = {p: [r["autopilot"]["because"] for r in read_jsonl(run / "metrics.jsonl") if "autopilot" in r]
               for p, run in runs.items()}  # fmt: skip
    for one, two in zip(because[1], because[2], strict=True):
        assert one.keys() == two.keys()
        for key, value in one.items():
            assert two[key] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), key
    _assert_same_curve(runs[1], runs[2])


def _one_and_two_processes(recipe: dict, tmp_path: Path) -> dict[int, Path]:
    """`dpo train` of `recipe` as one process with 4 pairs a step and under torchrun as two with 2 each: the run
    directories by number of processes."""
    runs = {}
    for processes, launcher in ((1, [sys.executable]), (2, _torchrun())):
        recipe["training"]["per_device_train_batch_size"] = 4 // processes
        path = tmp_path / f"recipe-{processes}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        runs[processes] = tmp_path / f"run-{processes}"
        proc = subprocess.run([*launcher, "-m", "dpo", "train", str(path), "--output-dir", str(runs[processes])],
                              capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    return runs


def _decisions(run_dir: Path) -> list[tuple]:
    events = [r["autopilot"] for r in read_jsonl(run_dir / "metrics.jsonl") if "autopilot" in r]
    return [(e["step"], e["rule"], e["changed"]) for e in events]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def two_process_recipe(tmp_path_factory, tiny_model_dir) -> Path:
    """The six-step resume recipe with 2 pairs per process: 2 processes make its 4-pair batches."""
    recipe = six_step_recipe_dict(tiny_model_dir)
    recipe["training"]["per_device_train_batch_size"] = 2
    path = tmp_path_factory.mktemp("two") / "two.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_two_process_run_killed_then_resumed_with_two_processes_equals_an_uninterrupted_one(two_process_recipe,
                                                                                            tmp_path):  # fmt: skip
    """SIGKILL of every process while checkpoint-4 is half written (checkpoint-2 complete); `--resume` under
    torchrun: rank 0 alone deletes the half checkpoint and cuts metrics.jsonl back, every rank continues from
    checkpoint-2, and the run ends as the uninterrupted two-process run (same tolerance as tests/rundir)."""
    reference = tmp_path / "reference"
    proc = subprocess.run(_torchrun("-m", "dpo", "train", str(two_process_recipe), "--output-dir", str(reference)),
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    driver = subprocess.Popen(
        _torchrun("-m", "tests.kill_driver", str(two_process_recipe), str(run_dir), "mid_checkpoint", "4", str(ready)),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    frozen = [ready.with_name(f"ready.{rank}") for rank in (0, 1)]
    deadline = time.time() + 300
    while not all(f.is_file() and f.read_text().endswith("\n") for f in frozen):
        assert driver.poll() is None, f"driver ended before the kill point: {driver.stderr.read()[-3000:]}"
        assert time.time() < deadline, "driver never reached the kill point"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)  # the launcher first, so that it does not react to its workers' deaths
    driver.wait()
    driver.stderr.close()
    for pid in (int(f.read_text()) for f in frozen):  # torchrun starts each worker in a session of its own
        os.kill(pid, signal.SIGKILL)
    half = run_dir / "checkpoints" / "checkpoint-4"
    assert half.is_dir() and not (half / COMPLETE_MARK).exists() and not (run_dir / "summary.json").exists()
    assert (run_dir / ".lock").is_file()

    proc = subprocess.run(_torchrun("-m", "dpo", "train", "--resume", str(run_dir)),
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resuming from checkpoint-2 (step 2)") == 1  # rank 0 says it, once
    assert proc.stdout.count("deleted checkpoint-4: its save was cut off") == 1
    assert not (run_dir / ".lock").exists()
    assert_same_run(run_dir, reference, resumes_from=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_non_finite_guard_under_two_processes_stops_both_and_rank_0_alone_writes(tiny_recipe, tmp_path):
    """Two processes started with the environment torchrun gives its workers (torchrun itself would report its own
    exit code 1, not theirs). A NaN loss at step 3 on both: each exits 3 with the one-line error; summary.json
    (non_finite) is written once, by rank 0, as is every other file renamed into place; no final/."""
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["training"].update(per_device_train_batch_size=2, eval_steps=2)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir, renames = tmp_path / "run", tmp_path / "renames.log"
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.poison_driver", str(path), str(run_dir), "3", str(renames)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **launch, "RANK": str(rank), "LOCAL_RANK": str(rank)})
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=600) for proc in procs]
    error = f"error: {run_dir}: training stopped: non-finite loss (nan) at step 3; the last good checkpoint is "
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 3, stderr[-3000:]
        assert error in stderr

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "non_finite" and summary["non_finite"]["step"] == 3 and summary["steps"] == 2
    assert summary["last_good_checkpoint"] == str(run_dir / "checkpoints" / "checkpoint-2")
    assert not (run_dir / "final").exists() and not (run_dir / ".lock").exists()
    written = [line.split(" ", 1) for line in renames.read_text().splitlines()]
    assert [name for rank, name in written if name == "summary.json"] == ["summary.json"]
    assert {rank for rank, _ in written} == {"0"}  # rank 1 renamed nothing into the run directory
    assert {"recipe.yaml", "data_card.json", "report.html", "checkpoints/checkpoint-2/checkpoint_complete.json"} <= {
        name for _, name in written
    }
    train_steps = [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m and "eval_loss" not in m]
    assert train_steps == [1, 2]  # one line per step, not one per process; step 3 never logged


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses_and_opens_with_launch_command(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"deepspeed": "DEEPSPEED", "fsdp": "FSDP", "multi": "MULTI_GPU"}[path.stem.split("-")[0]]
    assert config.distributed_type.name == expected
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    head = path.read_text().splitlines()[:4]
    assert head[0].startswith("# ")
    assert any(f"accelerate launch --config_file recipes/accelerate/{path.name} -m dpo train" in ln for ln in head)


def test_accelerate_configs_cover_zero2_zero3_fsdp():
    assert {"deepspeed-zero2.yaml", "deepspeed-zero3.yaml", "fsdp.yaml"} <= {p.name for p in ACCELERATE_CONFIGS}
