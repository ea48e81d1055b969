"""`dpo plan` options are built from PlanOptions: every field is an option, with the CLI's names and parsing."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from dpo import api
from dpo.cli import app
from dpo.errors import UserError
from dpo.plan import PlanOptions

# every field set away from its default, and the command line that sets it
CHANGED = PlanOptions(
    dtype="bfloat16",
    batch_size=3,
    gradient_accumulation_steps=4,
    seq_len=64,
    lora_rank=4,
    lora_targets=("q_proj", "c_attn"),
    gradient_checkpointing=True,
    reference="copy",
    optimizer="sgd",
    gpu_memory_gib=12.5,
    device="cpu",
    autocast="float16",
)
CHANGED_ARGS = [
    "--dtype", "bfloat16", "--batch-size", "3", "--gradient-accumulation-steps", "4", "--seq-len", "64",
    "--lora-rank", "4",
    "--lora-targets", "q_proj, c_attn", "--gradient-checkpointing", "--reference", "copy", "--optimizer", "sgd",
    "--gpu-memory", "12.5", "--device", "cpu", "--autocast", "float16",
]  # fmt: skip


given_options: list[tuple[str, ...]] = []  # the fields each call says were set on the command line


class _Plan:
    def to_dict(self):
        return {"planned": True}

    def render(self):
        return "rendered plan"


@pytest.fixture
def planned(monkeypatch) -> list[tuple[str, PlanOptions]]:
    """The (source, options) each `dpo plan` call hands to dpo.api.plan."""
    calls: list[tuple[str, PlanOptions]] = []
    given_options.clear()

    def plan(source, options, given=()):
        calls.append((source, options))
        given_options.append(given)
        return _Plan()

    monkeypatch.setattr(api, "plan", plan)
    return calls


def test_no_options_give_the_default_plan_options(planned):
    result = CliRunner().invoke(app, ["plan", "config.json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "rendered plan"
    assert planned == [("config.json", PlanOptions())]
    assert given_options == [()]


def test_every_plan_option_reaches_its_field(planned):
    # a new PlanOptions field must be added to CHANGED (and so shown to arrive from the command line)
    assert all(getattr(CHANGED, f.name) != f.default for f in dataclasses.fields(PlanOptions))
    result = CliRunner().invoke(app, ["plan", "config.json", "--json", *CHANGED_ARGS])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("{") and '"planned": true' in result.output
    assert planned == [("config.json", CHANGED)]
    assert given_options == [tuple(f.name for f in dataclasses.fields(PlanOptions))]


def test_full_means_no_lora_rank_and_all_linear_is_one_target(planned):
    result = CliRunner().invoke(app, ["plan", "config.json", "--full", "--lora-targets", "all-linear"])
    assert result.exit_code == 0, result.output
    assert planned[0][1] == PlanOptions(lora_rank=None, lora_targets=("all-linear",))
    assert given_options == [("lora_rank", "lora_targets")]  # --full sets lora_rank


def test_an_option_given_at_its_default_value_still_counts_as_given(planned):
    # with a recipe, a given option replaces the recipe's value even when it equals the option's default
    result = CliRunner().invoke(app, ["plan", "quickstart", "--batch-size", "8", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert given_options == [("batch_size", "device")]


def test_help_shows_each_field_with_its_help():
    result = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(PlanOptions):
        option = f.metadata["option"] or "--" + f.name.replace("_", "-")
        assert option in result.output, option
        assert f.metadata["help"] in result.output, f.metadata["help"]
    for flag in ("--json", "--full"):
        assert flag in result.output


def test_dpo_plan_of_gpt2_counts_and_says_lora_does_not_apply(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=101).save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "config.json")])
    assert result.exit_code == 0, result.output
    assert "note: LoRA does not apply" in result.stdout and "setup: full fine-tuning" in result.stdout


def test_dpo_plan_reads_a_recipe_and_given_options_win(tmp_path, tiny_model_dir):
    from tests.conftest import tiny_recipe_dict, write_recipe

    training = {"per_device_train_batch_size": 3, "max_length": 48, "gradient_checkpointing": True}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_model_dir, 8, training))
    planned = api.plan(str(recipe))
    assert planned.recipe == str(recipe) and planned.source == str(tiny_model_dir)
    assert planned.options == PlanOptions(
        batch_size=3, seq_len=48, lora_rank=4, lora_targets=("q_proj", "v_proj"), gradient_checkpointing=True
    )
    given = api.plan(str(recipe), PlanOptions(batch_size=8, device="cpu"), given=("batch_size", "device"))
    assert given.options == dataclasses.replace(planned.options, batch_size=8, device="cpu")
    result = CliRunner().invoke(app, ["plan", str(recipe), "--seq-len", "32", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["recipe"] == str(recipe) and shown["options"]["seq_len"] == 32 and shown["options"]["batch_size"] == 3


def test_a_tr_dpo_recipe_is_planned_with_its_moving_reference(tmp_path, tiny_model_dir):
    from tests.conftest import tiny_recipe_dict, write_recipe

    raw = {**tiny_recipe_dict(tiny_model_dir, 8, {}), "peft": None, "regularizers": {"sync_ref": {"every": 2}}}
    planned = api.plan(str(write_recipe(tmp_path / "r.yaml", raw)))
    assert planned.options.reference == "synced" and planned.options.lora_rank is None
    assert planned.memory["reference"] > 0
    with pytest.raises(UserError, match=r"r.yaml: regularizers.sync_ref: TR-DPO moves a full copy"):
        api.plan(str(tmp_path / "r.yaml"), PlanOptions(lora_rank=16), given=("lora_rank",))


def test_a_dtype_given_for_a_recipe_drops_the_recipes_autocast(tmp_path, tiny_model_dir, monkeypatch):
    """A recipe that trains with bf16 autocast on a GPU host (float32 weights) planned `--dtype bfloat16`: autocast
    is for float32 weights only, so it goes with them, instead of an error about an option the user never set."""
    from dpo.plan import recipe_options
    from tests.conftest import tiny_recipe_dict, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_model_dir, 8, {}))
    on_gpu = recipe_options.options_for_recipe
    monkeypatch.setattr(recipe_options, "options_for_recipe",
                        lambda *a, **k: dataclasses.replace(on_gpu(*a, **k), autocast="bfloat16"))  # fmt: skip
    assert api.plan(str(recipe)).options.autocast == "bfloat16"
    planned = api.plan(str(recipe), PlanOptions(dtype="bfloat16"), given=("dtype",))
    assert planned.options.dtype == "bfloat16" and planned.options.autocast is None


def test_dpo_plan_of_a_bad_recipe_is_a_user_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("data: {train: x.jsonl}\nloss: {bta: 1}\n")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.yaml'}: ")


def test_plan_options_that_would_be_ignored_or_meaningless_are_errors(tmp_path, tiny_model_dir):
    """--lora-targets on a plan of full fine-tuning (--full, or a recipe without LoRA) did nothing; --gpu-memory nan
    fitted nothing and inf fitted everything; a config whose layers cannot be read named no file."""
    from transformers import LlamaConfig

    from tests.conftest import tiny_recipe_dict, write_recipe

    config = str(tiny_model_dir / "config.json")
    with pytest.raises(UserError, match=r"^--lora-targets: applies only with LoRA"):
        api.plan(config, PlanOptions(lora_rank=None, lora_targets=("q_proj",)), given=("lora_rank", "lora_targets"))
    full = write_recipe(tmp_path / "full.yaml", {**tiny_recipe_dict(tiny_model_dir, 8, {}), "peft": None})
    with pytest.raises(UserError, match=r"^--lora-targets: applies only with LoRA"):
        api.plan(str(full), PlanOptions(lora_targets=("q_proj",)), given=("lora_targets",))
    assert api.plan(config, PlanOptions(lora_targets=("q_proj",)), given=("lora_targets",)).options.lora_rank
    for memory in (float("nan"), float("inf"), 0.0):
        with pytest.raises(UserError, match="gpu_memory_gib must be a positive number"):
            api.plan(config, PlanOptions(gpu_memory_gib=memory), given=("gpu_memory_gib",))
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=0, num_attention_heads=4,
                vocab_size=100).save_pretrained(tmp_path / "empty")  # fmt: skip
    with pytest.raises(UserError) as caught:
        api.plan(str(tmp_path / "empty" / "config.json"))
    assert str(caught.value).startswith(str(tmp_path / "empty" / "config.json"))


def test_a_recipes_gradient_accumulation_is_planned_and_a_given_one_wins(tmp_path, tiny_model_dir):
    from tests.conftest import tiny_recipe_dict, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_model_dir, 8, {"gradient_accumulation_steps": 4}))
    planned = api.plan(str(recipe))
    assert planned.options.gradient_accumulation_steps == 4
    assert "gradient_accumulation_steps=4" in planned.render()
    once = api.plan(str(recipe), PlanOptions(gradient_accumulation_steps=1), given=("gradient_accumulation_steps",))
    assert once.options == dataclasses.replace(planned.options, gradient_accumulation_steps=1)
    assert once.memory["total"] == planned.memory["total"] - planned.memory["gradients"]  # LoRA: peak in forward
    result = CliRunner().invoke(app, ["plan", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["options"]["gradient_accumulation_steps"] == 4


def test_gradient_accumulation_below_1_is_a_one_line_error(tiny_model_dir):
    config = str(tiny_model_dir / "config.json")
    result = CliRunner().invoke(app, ["plan", config, "--gradient-accumulation-steps", "0"])
    assert result.exit_code == 2
    assert result.stderr == "error: plan option gradient_accumulation_steps must be at least 1, got 0\n"
