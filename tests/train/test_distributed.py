"""`dpo train` under torchrun and accelerate launch: two CPU processes (gloo) train one run, and the loss curve
is the single-process curve with the same global batch. The shipped accelerate configs parse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, read_jsonl

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
    assert _train_rows(single)[-1]["loss"] < _train_rows(single)[0]["loss"]  # the curve moved: a real comparison


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
