"""The losses of issue 16 train end to end on the tiny model (2 steps through `execute`, the function behind
`dpo train`): a run directory with a summary, the metrics each loss logs, no reference model for the
reference-free losses even under full fine-tuning, and ODPO on scored multi-response data, whose score gaps reach
the loss.

Run: python -m pytest tests/training/test_new_losses_train.py
"""

from __future__ import annotations

import json

import pytest

from dpo.training.execute import execute
from tests.conftest import ARITHMETIC, read_jsonl, tiny_recipe_dict, write_recipe

TWO_STEPS = {
    "learning_rate": 1e-2,
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "eval_steps": 2,
}
LOSSES_OF_ISSUE_16 = {
    "cal_dpo": {"beta": 0.1},
    "dpo_shift": {"beta": 0.1, "shift_lambda": 0.75, "shift_lambda_end": 0.95},
    "chi_po": {"beta": 0.1, "chi_clip": 10.0},
    "dr_dpo": {"beta": 0.1, "dr_dpo_beta_prime": 1.0},
    "simpo": {"beta": 2.0, "simpo_gamma": 1.0},
    "orpo": {"beta": 0.1},
}


def scored_rows(pairs: list[dict]) -> list[dict]:
    """Multi-response rows from arithmetic pairs: the right answer scored 10, the wrong one 2, a third answer 0."""
    return [
        {
            "prompt": p["prompt"],
            "responses": [p["chosen"], p["rejected"], [{"role": "assistant", "content": "I do not know."}]],
            "scores": [10.0, 2.0, 0.0],
        }
        for p in pairs
    ]


@pytest.mark.parametrize("name", sorted(LOSSES_OF_ISSUE_16))
def test_new_loss_trains_two_steps(tiny_model_dir, tmp_path, name):
    recipe = tiny_recipe_dict(tiny_model_dir, 8, TWO_STEPS)
    recipe["loss"] = {"type": name, **LOSSES_OF_ISSUE_16[name]}
    if name in ("simpo", "orpo"):
        recipe["peft"] = None  # full fine-tuning: TRL would load a reference copy for any loss that needs one
    path = write_recipe(tmp_path / f"{name}.yaml", recipe)
    summary, trainer = execute(path, output_dir=tmp_path / "run")
    assert summary["stop_reason"] == "completed" and summary["steps"] == 2
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train_rows = [m for m in metrics if "loss" in m and "train_runtime" not in m]
    assert [m["step"] for m in train_rows] == [1, 2]
    assert all(m["loss"] == m["loss"] for m in train_rows)  # finite (the non-finite guard would have stopped)
    if name in ("simpo", "orpo"):
        assert trainer.ref_model is None
        assert "logratios/chosen" not in train_rows[0] and "eval_kl" not in summary["final_metrics"]
    else:
        assert "logratios/chosen" in train_rows[0]


def test_odpo_trains_on_scored_multi_response_rows(tiny_model_dir, tmp_path):
    """The score gaps of the expanded pairs (10 - 2, 10 - 0, 2 - 0) reach the batches and ODPO trains on them."""
    pairs = read_jsonl(ARITHMETIC / "train.jsonl")
    for split, rows in (("train", pairs[:4]), ("eval", read_jsonl(ARITHMETIC / "eval.jsonl")[:3])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored_rows(rows)))
    recipe = tiny_recipe_dict(tiny_model_dir, 12, TWO_STEPS)
    recipe["data"] = {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")}
    recipe["loss"] = {"type": "odpo", "beta": 0.1, "odpo_alpha": 0.5}
    summary, trainer = execute(write_recipe(tmp_path / "odpo.yaml", recipe), output_dir=tmp_path / "run")
    assert summary["stop_reason"] == "completed" and summary["steps"] == 2
    assert sorted(trainer.train_dataset["score_gap"]) == [2.0] * 4 + [8.0] * 4 + [10.0] * 4
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())
    assert card["expanded"]["train"]["pairs_made"] == 12
