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


def test_overfitting_benchmark_lists_the_new_losses_and_tabulates_reference_free_rows():
    """The losses of issue 16 are single controls (ODPO aside: the arithmetic pairs have no scores), and a row
    without a chosen log-ratio (a reference-free loss logs none) shows n/a instead of failing the table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_overfitting", REPO / "eval" / "bench_overfitting.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {"cal_dpo", "dpo_shift", "chi_po", "dr_dpo", "simpo", "orpo"} <= set(bench.CONTROLS)
    row = {
        "noise": 0.0, "steps": 30, "eval_rewards/accuracies": 0.7, "eval_rewards/margins": 1.0,
        "eval_logps/accuracies": 0.8,
    }  # fmt: skip
    text = bench.table([{**row, "control": "plain", "eval_logratios/chosen": -1.0}, {**row, "control": "simpo"}])
    assert "| 0% | simpo | 0.700 | +0.000 | 1.000 | n/a | 0.800 | 30 |" in text
