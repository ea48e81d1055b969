"""`dpo convert-trl`: a `trl dpo` config becomes a recipe that loads and validates, every key lands where the recipe
keeps that knob or is listed as not mapped (with why), and problems name the TRL file and key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from dpo.cli import app
from dpo.config.loading import load_recipe
from dpo.training.convert_trl import LORA, MOVED, NOT_MAPPED, convert_trl
from dpo.training.gate import check
from tests.conftest import ARITHMETIC

TRL_CONFIG = {
    "dataset_name": str(ARITHMETIC / "train.jsonl"),
    "beta": 0.2,
    "loss_type": ["sigmoid"],
    "label_smoothing": 0.1,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": ["q_proj", "v_proj"],
    "learning_rate": 5.0e-6,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 4,
    "max_length": 256,
    "report_to": ["tensorboard"],
    "metric_for_best_model": "loss",
    "greater_is_better": False,
    "output_dir": "Qwen2-0.5B-DPO",
    "use_dora": True,
    "gradient_checkpointing": True,
    "made_up_key": 3,
}


def write(tmp_path, config: dict, name: str = "trl.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))  # keys sorted: the unmapped ones are listed in this order
    return path


def test_a_trl_config_becomes_a_recipe_that_validates(tmp_path):
    source = write(tmp_path, TRL_CONFIG)
    out = tmp_path / "recipes" / "converted.yaml"
    result = CliRunner().invoke(app, ["convert-trl", str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote {out}"
    assert result.stderr.splitlines() == [
        "not mapped: label_smoothing: TRL's sigmoid loss ignores it, so TRL trained without smoothing (for cDPO set "
        "loss.label_smoothing in the recipe)",
        "not mapped: made_up_key: not an option of trl dpo (ScriptArguments, ModelConfig, DPOConfig)",
        "not mapped: output_dir: pass --output-dir to dpo train (default runs/<name>)",
        "not mapped: use_dora: no recipe key for DoRA",
        "note: no model_name_or_path: the recipe trains dpo's embedded model (smollm2-135m-instruct)",
        "note: no held-out split given: the recipe holds out data.heldout_fraction of the prompts",
    ]
    text = out.read_text()
    assert text.startswith("# Converted from the trl dpo config trl.yaml by `dpo convert-trl`.\n")
    assert f"#   dpo train {out}\n" in text
    recipe = load_recipe(out).recipe
    assert recipe.name == "trl" and recipe.data.train == str(ARITHMETIC / "train.jsonl")
    assert recipe.loss.type == "sigmoid" and recipe.loss.beta == 0.2
    assert recipe.loss.hyperparameters == {}  # TRL's sigmoid never read its label_smoothing: no cDPO here either
    assert recipe.peft.r == 8 and recipe.peft.alpha == 16 and recipe.peft.target_modules == ["q_proj", "v_proj"]
    assert recipe.training == {
        "learning_rate": 5.0e-6, "num_train_epochs": 2, "per_device_train_batch_size": 4, "max_length": 256,
        "gradient_checkpointing": True,
    }  # fmt: skip
    assert recipe.logging.tensorboard and not recipe.logging.wandb
    assert recipe.early_stopping.metric == "eval_loss" and recipe.early_stopping.mode == "min"
    checked = check(out)  # the data too: a local file, as TRL's load_dataset would read it
    assert checked.data.card["split"]["train_pairs"] > 0


def test_knobs_trl_ignored_are_not_turned_on_by_the_conversion(tmp_path):
    """TRL's sigmoid loss ignores label_smoothing and its disable_dropout (true by default) zeroes LoRA's dropout;
    TRL 1.16 turns padding_free off; the reference batch size does nothing under LoRA: the recipe keeps none of
    them, each listed with why; where TRL reads them (robust, dropout kept on) they map."""
    ignored = convert_trl(write(tmp_path, {"dataset_name": "x", "label_smoothing": 0.1, "use_peft": True,
                                           "lora_dropout": 0.1}))  # fmt: skip
    assert dict(ignored.unmapped)["lora_dropout"].startswith("TRL's disable_dropout (true unless set false) zeroes")
    assert dict(ignored.unmapped)["label_smoothing"].startswith("TRL's sigmoid loss ignores it")
    assert "label_smoothing" not in ignored.recipe.get("loss", {}) and ignored.recipe["peft"] == {}
    read = convert_trl(write(tmp_path, {"dataset_name": "x", "loss_type": ["robust"], "label_smoothing": 0.1,
                                        "use_peft": True, "lora_dropout": 0.1, "disable_dropout": False}))  # fmt: skip
    assert read.recipe["loss"] == {"type": "robust", "label_smoothing": 0.1}
    assert read.recipe["peft"] == {"dropout": 0.1} and read.unmapped == []
    off = convert_trl(write(tmp_path, {"dataset_name": "x", "use_peft": True, "padding_free": True,
                                       "precompute_ref_batch_size": 4}))  # fmt: skip
    assert [key for key, _ in off.unmapped] == ["padding_free", "precompute_ref_batch_size"]
    assert "training" not in off.recipe  # and the recipe validates (convert_trl checks it)


def test_without_use_peft_trl_trains_the_full_model_and_so_does_the_recipe(tmp_path):
    source = write(tmp_path, {"dataset_name": "trl-lib/ultrafeedback_binarized", "lora_r": 8, "eval_strategy": "steps"})
    converted = convert_trl(source)
    assert converted.recipe["peft"] is None
    assert ("lora_r", "use_peft is not true, so TRL does not use it either") in converted.unmapped
    assert converted.recipe["data"] == {
        "train": "hub:trl-lib/ultrafeedback_binarized",
        "eval": {"path": "hub:trl-lib/ultrafeedback_binarized", "split": "test"},  # TRL evaluates on the test split
    }


def test_a_built_in_option_at_its_default_converts_and_otherwise_is_said_not_to(tmp_path):
    """TRL configs often spell the defaults out: `eval_on_start: false` is what every run does anyway."""
    default = convert_trl(write(tmp_path, {"dataset_name": "trl-lib/x", "eval_on_start": False}))
    assert default.recipe["training"]["eval_on_start"] is False and not default.unmapped
    changed = convert_trl(write(tmp_path, {"dataset_name": "trl-lib/x", "eval_on_start": True}, name="on.yaml"))
    assert "eval_on_start" not in changed.recipe.get("training", {})
    assert [(key, why.split(":")[0]) for key, why in changed.unmapped] == [("eval_on_start", "is built in")]


def test_every_trl_option_is_mapped_or_said_not_to_be():
    """Every field of the three dataclasses `trl dpo` reads has a rule here: a move, LoRA, a rule of its own, a
    reason it is not mapped, or a DPOConfig field that goes under training: (or that the training check refuses)."""
    from trl import ModelConfig, ScriptArguments

    from dpo.training.convert_trl import _HANDLED, _READ_ELSEWHERE

    ruled = {*MOVED, *LORA, *_HANDLED, *NOT_MAPPED, *_READ_ELSEWHERE}
    for cls in (ScriptArguments, ModelConfig):
        assert {f.name for f in dataclasses.fields(cls)} <= ruled, cls


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"loss_type": "dpo"}, "(loss_type): loss.type: unknown loss 'dpo'; did you mean 'sigmoid' (plain DPO)?"),
        ({"beta": "high"}, "(beta): loss.beta: expected a number, got the text 'high'"),
    ],
)
def test_problems_name_the_trl_key(tmp_path, config, expected):
    source = write(tmp_path, {"dataset_name": "trl-lib/x", **config})
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {source} {expected}")


def test_every_problem_is_listed(tmp_path):
    source = write(tmp_path, {"dataset_name": "trl-lib/x", "loss_type": "dpo", "max_steps": "ten", "beta": 0.1})
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {source} (") for line in lines)
    assert "(max_steps): training.max_steps: expected a whole number, got the text 'ten'" in lines[1]


def test_an_existing_output_is_not_overwritten(tmp_path):
    source = write(tmp_path, {"dataset_name": "trl-lib/x"})
    (tmp_path / "r.yaml").write_text("mine\n")
    result = CliRunner().invoke(app, ["convert-trl", str(source), "--output", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and (tmp_path / "r.yaml").read_text() == "mine\n"
    assert result.stderr.startswith(f"error: {tmp_path / 'r.yaml'}: already exists")


def test_without_output_the_recipe_is_printed(tmp_path):
    source = write(tmp_path, {"dataset_name": "trl-lib/x", "model_name_or_path": "gpt2", "use_peft": True})
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout[result.stdout.index("# Converted") :])
    assert printed == {"name": "trl", "model": {"name_or_path": "gpt2"}, "peft": {}, "data": {"train": "hub:trl-lib/x"}}


def test_an_output_under_a_file_is_one_error_line_and_nothing_is_written(tmp_path):
    source = write(tmp_path, {"dataset_name": "trl-lib/x"})
    (tmp_path / "afile").write_text("mine\n")
    result = CliRunner().invoke(app, ["convert-trl", str(source), "--output", str(tmp_path / "afile" / "r.yaml")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'afile'}: is a file, not a directory\n"
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dataset_name": "x", "datasets": ["a.jsonl"]},
         "datasets[0]: expected a data set {path, name, split}, got the text 'a.jsonl'"),
        ({"datasets": [{"name": "foo"}]}, "datasets[0]: needs a path (a data set name or path), it has none"),
        ({"datasets": {"path": "a"}}, "datasets: expected a list of data sets {path, name, split}, got a mapping"),
        ({"dataset_name": 123}, "dataset_name: expected a data set name or path, got 123"),
        ({"dataset_name": "x", "report_to": 5}, "report_to: expected a name or a list of names, got 5"),
        ({"dataset_name": "x", "loss_type": ["sigmoid", {"a": 1}], "label_smoothing": 0.1},
         "loss_type: expected a loss name or a list of loss names, got ['sigmoid', a mapping] (a list)"),
        ({"dataset_name": "x", "metric_for_best_model": 5}, "metric_for_best_model: expected a metric name, got 5"),
        # YAML 1.2 reads `no` as text, which is true: use_peft: no would have turned LoRA on
        ({"dataset_name": "x", "use_peft": "no"},
         "use_peft: expected true or false, got the text 'no' (TRL's YAML 1.1 reads it as false: write that)"),
    ],
)  # fmt: skip
def test_a_malformed_trl_config_is_one_error_line_naming_the_trl_key(tmp_path, config, message):
    """Each was a traceback (TypeError, KeyError) or a wrong recipe."""
    source = write(tmp_path, config)
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 2 and result.stderr == f"error: {source}: {message}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("beta: 1e400\n", " (beta): loss.beta: must be a finite number (got inf)"),
        ("gradient_checkpointing: off\n",
         ": gradient_checkpointing: expected true or false, got the text 'off' (TRL's YAML 1.1 reads it as false: "
         "write that)"),
    ],
)  # fmt: skip
def test_a_converted_recipe_dpo_validate_would_refuse_is_refused(tmp_path, text, message):
    source = tmp_path / "trl.yaml"
    source.write_text(f"dataset_name: trl-lib/x\n{text}")
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 2 and result.stderr == f"error: {source}{message}\n"


def test_a_metric_dpo_does_not_log_is_refused_naming_metric_for_best_model(tmp_path):
    """transformers would look for eval_accuracy, which DPO never logs: dpo validate refused the converted recipe.
    The converted recipe now passes the gate's checks that read no data (the metric table's names end the line)."""
    source = tmp_path / "trl.yaml"
    source.write_text("dataset_name: trl-lib/x\nmetric_for_best_model: accuracy\n")
    result = CliRunner().invoke(app, ["convert-trl", str(source)])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        f"error: {source} (metric_for_best_model): early_stopping.metric: unknown held-out metric 'eval_accuracy'"
    )


def test_metric_for_best_model_null_is_trls_default_and_maps_to_nothing(tmp_path):
    """It was written as early_stopping.metric: eval_None."""
    converted = convert_trl(write(tmp_path, {"dataset_name": "trl-lib/x", "metric_for_best_model": None}))
    assert "early_stopping" not in converted.recipe and not converted.unmapped


def test_a_missing_trl_config_is_named_as_one(tmp_path):
    result = CliRunner().invoke(app, ["convert-trl", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'nope.yaml'}: trl config not found\n"
