"""The non-finite guard: a NaN loss or an Inf/NaN gradient norm at step k stops the run before step k is applied,
with stop_reason non_finite in summary.json, a message naming the step and the quantity, and the last good
checkpoint kept. The NaN is injected by a test-only callback (a forward hook / a gradient hook it installs at
step k), not by any code path of the library."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from dpo.errors import RunFailed
from dpo.rundir.resume import COMPLETE_MARK, checkpoints
from dpo.training.execute import execute
from tests.conftest import read_jsonl


class PoisonAt(TrainerCallback):
    """From optimizer step `step` on, make the loss NaN (embeddings times NaN) or the gradients infinite."""

    def __init__(self, step: int, quantity: str):
        self.step, self.quantity = step, quantity

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.step:
            return
        if self.quantity == "loss":
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * float("nan"))
        else:
            weight = next(p for n, p in model.named_parameters() if "lora_B" in n)
            weight.register_hook(lambda grad: grad + float("inf"))


@pytest.mark.parametrize("quantity", ["loss", "grad_norm"])
def test_non_finite_stops_at_step_k_and_keeps_the_last_good_checkpoint(tiny_recipe, tmp_path, quantity):
    run_dir, k = tmp_path / "run", 3
    with pytest.raises(RunFailed) as failed:
        execute(tiny_recipe, ["training.eval_steps=2"], output_dir=run_dir, callbacks=[PoisonAt(k, quantity)])
    last_good = run_dir / "checkpoints" / "checkpoint-2"
    assert str(failed.value) == (
        f"{run_dir}: training stopped: non-finite {quantity} ({'nan' if quantity == 'loss' else 'inf'}) at step {k}; "
        f"the last good checkpoint is {last_good}"
    )
    assert failed.value.exit_code == 3

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["stop_reason"] == "non_finite"
        and summary["error"]
        == f"non-finite {quantity} " + ("(nan)" if quantity == "loss" else "(inf)") + f" at step {k}"
    )
    assert summary["non_finite"]["step"] == k and summary["non_finite"]["quantity"] == quantity
    assert summary["steps"] == k - 1 and summary["last_good_checkpoint"] == str(last_good)
    assert summary["implicit_reward"] == "log_ratio"  # what dpo eval would recompute
    assert not (run_dir / "final").exists()  # nothing past the last good step is presented as a result
    assert not (run_dir / ".lock").exists()
    assert "non_finite" in (run_dir / "report.html").read_text()  # the dashboard of what happened before it

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m and "eval_loss" not in m] == [1, 2]  # step 3 never logged
    assert all(str(v) not in ("nan", "inf") for m in metrics for v in m.values())
    assert [s for s, _ in checkpoints(run_dir / "checkpoints")] == [2] and (last_good / COMPLETE_MARK).is_file()
    weights = load_file(last_good / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_cli_exit_code_3_for_a_failed_run(monkeypatch, tmp_path):
    import dpo.api
    from dpo.cli import app

    def diverge(*args, **kwargs):
        raise RunFailed("runs/x: training stopped: non-finite loss (nan) at step 3; the last good checkpoint is c")

    monkeypatch.setattr(dpo.api, "train", diverge)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {train: x.jsonl}\n")
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code == 3
    assert (
        result.stderr
        == "error: runs/x: training stopped: non-finite loss (nan) at step 3; the last good checkpoint is c\n"
    )
