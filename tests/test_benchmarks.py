"""The benchmark scripts run end to end (tiny model, smallest settings) and write their result files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_overfitting_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_overfitting.py", "--smoke", "--noise", "0.3", "--controls", "plain", "cdpo",
         "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "overfitting_smoke.json").read_text())["rows"]
    controls = ["plain", "cdpo", "early_stop_margins", "early_stop_loss", "early_stop_accuracies"]
    assert [r["control"] for r in rows] == controls
    assert all(r["noise"] == 0.3 and 0 <= r["eval_rewards/accuracies"] <= 1 for r in rows)
    assert "| 30% | cdpo |" in (tmp_path / "overfitting_smoke.md").read_text()


def test_overhead_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_overhead.py", "--cases", "tiny", "--repeats", "1", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "overhead.json").read_text())["summary"]["tiny"]
    assert summary["step_time_ratio"] > 0 and summary["peak_memory_ratio"] > 0
    assert "| tiny |" in (tmp_path / "overhead.md").read_text()


def test_speed_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_speed.py", "--quick", "--datasets", "arithmetic", "--settings", "fp32",
         "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads((tmp_path / "speed_quick.json").read_text())["rows"]
    assert row["dataset"] == "arithmetic" and row["setting"] == "fp32" and row["prompt_shared"]
    assert row["max_loss_difference"] < 1e-4  # plain TRL and ours train the same model
    assert row["speedup"] > 0 and row["eval_over_policy_forward"] > 0 and row["layouts"]["shared"] > 0
    assert "| arithmetic | fp32 |" in (tmp_path / "speed_quick.md").read_text()


@pytest.mark.slow
def test_sweep_pruning_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_sweep_pruning.py", "--smoke", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep_pruning_smoke.json").read_text())
    full, pruned = result["full"], result["pruned"]
    assert [t["params"] for t in full["trials"]] == [t["params"] for t in pruned["trials"]]  # the same trials
    assert full["steps_total"] == 8 and all(t["state"] == "complete" for t in full["trials"])
    assert pruned["steps_total"] == sum(t["steps"] for t in pruned["trials"]) <= full["steps_total"]
    assert result["steps_ratio"] == round(pruned["steps_total"] / full["steps_total"], 3)
    assert "| median pruning + early stopping |" in (tmp_path / "sweep_pruning_smoke.md").read_text()
