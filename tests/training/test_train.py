"""End to end on a tiny random model: `dpo train` writes a complete run directory and trains the right weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from dpo.config.loading import load_recipe
from dpo.training.execute import execute
from tests.conftest import REPO, read_jsonl

TRL_TRAIN_METRICS = {
    "loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
    "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
    "mean_token_accuracy", "num_tokens",
}  # fmt: skip
OUR_METRICS = {"beta", "logps/accuracies", "logratios/chosen", "logratios/rejected"}


@pytest.mark.slow
def test_cli_train_writes_run_directory(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "train", str(tiny_recipe), "--output-dir", str(run_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out metrics" in proc.stdout and "stop reason: completed" in proc.stdout

    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["training"]["max_steps"] == 4 and resolved["loss"]["type"] == "sigmoid"
    assert load_recipe(run_dir / "recipe.yaml").recipe.name == "tiny"  # the resolved recipe is a valid recipe

    card = json.loads((run_dir / "data_card.json").read_text())
    assert card["split"] == {
        "method": "file", "train_pairs": 32, "eval_pairs": 8, "train_prompts": 32, "eval_prompts": 8,
        "prompts_in_both": 0,
    }  # fmt: skip

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    train_rows = [m for m in metrics if "loss" in m and "train_runtime" not in m]
    eval_rows = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3, 4]
    assert [m["step"] for m in eval_rows] == [0, 2, 4]
    assert TRL_TRAIN_METRICS | OUR_METRICS <= set(train_rows[0])
    assert {f"eval_{name}" for name in TRL_TRAIN_METRICS - {"loss", "grad_norm", "learning_rate"}} <= set(eval_rows[0])
    assert eval_rows[0]["eval_rewards/margins"] == 0.0  # step 0: the policy is the reference

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "completed" and summary["steps"] == 4
    assert summary["best_metric"]["name"] == "eval_rewards/margins" and summary["best_metric"]["mode"] == "max"
    best_value = max(m["eval_rewards/margins"] for m in eval_rows)
    assert summary["best_metric"]["value"] == pytest.approx(best_value)
    assert summary["best_step"] == next(m["step"] for m in eval_rows if m["eval_rewards/margins"] == best_value)
    assert summary["runtime_s"] > 0
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {
        p.name for p in (run_dir / "final").iterdir()
    }


@pytest.mark.slow
def test_lora_trains_adapter_and_leaves_reference_untouched(tiny_recipe, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    _, trainer = execute(tiny_recipe, output_dir=tmp_path / "run")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    model = trainer.model
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it moved
    base = model.get_base_model()
    for name, tensor in original.items():
        key = name.replace("q_proj.weight", "q_proj.base_layer.weight").replace(
            "v_proj.weight", "v_proj.base_layer.weight"
        )
        assert torch.equal(base.state_dict()[key], tensor), name  # the reference (adapter off) is the original
    assert trainer.ref_model is None  # no second copy in memory


def test_full_finetuning_changes_policy_not_reference(tiny_recipe, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    _, trainer = execute(tiny_recipe, overrides=["peft=null", "training.learning_rate=1e-3"], output_dir=tmp_path / "r")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    policy, reference = trainer.model.state_dict(), trainer.ref_model.state_dict()
    assert any(not torch.equal(policy[k], original[k]) for k in original)
    assert all(torch.equal(reference[k], original[k]) for k in original)
    assert (tmp_path / "r" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ("[qproj]", "qproj: no module of"),  # PEFT fails too, but after the run directory is made
        ("[q_proj, vproj]", "vproj: no module of"),  # PEFT would adapt q_proj alone, silently
        ("[all-linear]", "all-linear is a value of its own"),  # PEFT reads a list entry as a module's name
        ("[q_proj, mlp]", "mlp: not a layer LoRA adapts"),  # a block: PEFT raises after the run directory is made
    ],
)
def test_lora_targets_that_match_no_module_are_refused_before_the_run_directory(tiny_recipe, tmp_path, targets,
                                                                                 message):  # fmt: skip
    from dpo.errors import UserError
    from dpo.training.gate import check

    with pytest.raises(UserError, match=rf"^--set: peft.target_modules: {message}"):
        execute(tiny_recipe, [f"peft.target_modules={targets}"], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert check(tiny_recipe, ["peft.target_modules=[self_attn.q_proj, v_proj]"]).recipe.peft.target_modules == [
        "self_attn.q_proj", "v_proj"]  # a dotted end of a module's name is one, as PEFT matches it  # fmt: skip


def test_existing_run_directory_is_not_overwritten(tiny_recipe, tmp_path):
    from dpo.errors import UserError

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="run directory is not empty"):
        execute(tiny_recipe, output_dir=run_dir)
    assert (run_dir / "summary.json").read_text() == "{}"


@pytest.mark.slow
def test_python_api_matches_cli_contract(tiny_recipe, tmp_path):
    import dpo

    summary = dpo.train(
        tiny_recipe, overrides=["training.max_steps=2", "training.eval_steps=1"], output_dir=tmp_path / "a"
    )
    assert summary["steps"] == 2 and json.loads((tmp_path / "a" / "summary.json").read_text()) == json.loads(
        json.dumps(summary)
    )


@pytest.mark.slow
def test_precomputed_reference_logps_give_the_same_run(tiny_recipe, tmp_path):
    """TRL's precompute_ref_log_probs (used by the quickstart to halve evaluation cost) changes no number."""
    online, _ = execute(tiny_recipe, ["training.max_steps=2"], output_dir=tmp_path / "online")
    pre, _ = execute(
        tiny_recipe, ["training.max_steps=2", "training.precompute_ref_log_probs=true"], output_dir=tmp_path / "pre"
    )
    for key in ("eval_loss", "eval_rewards/margins", "eval_logps/chosen", "eval_logratios/rejected"):
        assert pre["final_metrics"][key] == pytest.approx(online["final_metrics"][key], rel=1e-4, abs=1e-6), key
