"""A recipe's mistakes are reported together: one `error:` line per problem (file, key, what is wrong in plain
words), exit 2, nothing written. Loss names users know from elsewhere point at the loss they mean."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dpo.cli import app
from dpo.config.loading import load_recipe
from dpo.errors import UserError, UserErrors
from dpo.training.loss_plan import loss_name_hint
from tests.conftest import ARITHMETIC, write_recipe

TRAIN = str(ARITHMETIC / "train.jsonl")


def errors_of(tmp_path, recipe: dict) -> tuple[list[str], int]:
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    result = CliRunner().invoke(app, ["validate", str(path)])
    return result.stderr.splitlines(), result.exit_code


def test_every_schema_problem_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = {
        "data": {"train": TRAIN},
        "lose": 1,
        "loss": {"beta": "high"},
        "peft": {"r": 1.5, "target_modules": 7},
        "early_stopping": {"mode": "sideways"},
        "logging": {"wandb": "maybe"},
    }
    lines, code = errors_of(tmp_path, recipe)
    where = f"error: {tmp_path / 'bad.yaml'}: "
    assert code == 2
    assert (
        lines
        == [
            where + "peft.r: expected a whole number, got 1.5",
            where + "peft.target_modules: expected a list or one of all-linear, got 7",  # one line for a union type
            where + "loss.beta: expected a number, got the text 'high'",
            where + "early_stopping.mode: expected one of auto, max or min, got the text 'sideways'",
            where + "logging.wandb: expected true or false, got the text 'maybe'",
            where
            + "unknown key 'lose'; did you mean 'loss'? (valid: name, seed, model, peft, data, loss, regularizers, "
            "early_stopping, autopilot, training, logging, base)",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_problems_of_different_checks_are_reported_together(tmp_path):
    recipe = {
        "data": {"train": TRAIN, "eval": str(ARITHMETIC / "eval.jsonl"), "heldout_fraction": 0.3},
        "loss": {"type": "dpo"},
        "training": {"max_steps": "ten", "learning_rat": 1e-4, "beta": 0.2},
    }
    lines, code = errors_of(tmp_path, recipe)
    assert code == 2 and all(line.startswith(f"error: {tmp_path / 'bad.yaml'}: ") for line in lines)
    text = "\n".join(lines)
    assert len(lines) == 5, text
    assert "loss.type: unknown loss 'dpo'; did you mean 'sigmoid' (plain DPO)?" in lines[0]
    assert "training.max_steps: expected a whole number, got the text 'ten'" in text  # words, not <class 'int'>
    assert "unknown key 'training.learning_rat'; did you mean 'training.learning_rate'?" in text
    assert "training.beta: belongs elsewhere: use loss.beta" in text
    assert "data.heldout_fraction: has no effect: data.eval is set" in text


def test_several_problems_raise_one_exception_holding_each(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"data": {"train": TRAIN}, "seed": "x", "name": "../up"})
    with pytest.raises(UserErrors) as err:
        load_recipe(path)
    assert [type(e) for e in err.value.errors] == [UserError, UserError]
    assert str(err.value) == "; ".join(str(e) for e in err.value.errors)  # one line where one line is wanted
    assert err.value.where == str(path)


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("dpo", "'sigmoid' (plain DPO)"),
        ("DPO", "'sigmoid' (plain DPO)"),
        ("cdpo", "'sigmoid' (conservative DPO, with loss.label_smoothing > 0)"),
        ("rdpo", "'robust' (robust DPO)"),
        ("slic", "'hinge' (SLiC)"),
        ("sigmoidd", "'sigmoid'"),
        ("bco-pair", "'bco_pair'"),
    ],
)
def test_loss_names_from_elsewhere_point_at_the_loss_they_mean(written, meant):
    assert loss_name_hint(written) == f"; did you mean {meant}?"


def test_an_unrelated_loss_name_gets_no_hint():
    assert loss_name_hint("xyz") == ""


def test_knobs_that_trl_turns_off_are_errors_naming_them(tmp_path):
    """TRL's disable_dropout (default true) zeroes LoRA's dropout; TRL 1.16 turns padding_free off; the reference
    batch size is read only by the up-front pass of full fine-tuning. Each one set where it does nothing is an
    error naming it; where it does something (or at the default a resolved recipe.yaml writes), it passes."""
    recipe = {
        "data": {"train": TRAIN},
        "peft": {"dropout": 0.2},
        "training": {"padding_free": True, "precompute_ref_batch_size": 4},
    }
    lines, code = errors_of(tmp_path, recipe)
    where = f"error: {tmp_path / 'bad.yaml'}: "
    assert code == 2 and sorted(lines) == [
        where + "peft.dropout: has no effect: training.disable_dropout is true (TRL's default): TRL zeroes every "
        "dropout, LoRA's too; set training.disable_dropout: false to keep it",
        where + "training.padding_free: has no effect: TRL 1.16 turns it off (temporarily unavailable there) and pads",
        where + "training.precompute_ref_batch_size: has no effect: the reference log-probs are computed up front "
        "only with training.precompute_ref_log_probs: true and full fine-tuning (peft: null)",
    ]
    fine = {
        "data": {"train": TRAIN},
        "peft": None,
        "training": {"disable_dropout": False, "precompute_ref_log_probs": True, "precompute_ref_batch_size": 4},
    }
    assert errors_of(tmp_path, fine) == ([], 0)
    assert errors_of(tmp_path, {"data": {"train": TRAIN}, "peft": {"dropout": 0.05}}) == ([], 0)


def test_every_number_and_text_a_run_could_not_keep_is_reported(tmp_path):
    """check_scalars stopped at the first: an infinite beta hid the NaN learning rate, the integer too large for 64
    bits and the lone surrogate, each found only by the next attempt."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"data:\n  train: {TRAIN}\nloss:\n  beta: 1e400\ntraining:\n  learning_rate: .nan\n"
        f'  max_steps: {10**30}\n  run_name_suffix: "\\ud800"\n'
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    where = f"error: {path}: "
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        where + "loss.beta: must be a finite number (got inf)",
        where + "training.learning_rate: must be a finite number (got nan)",
        where + "training.max_steps: must be an integer from -9223372036854775807 to 9223372036854775807 (2^63 - 1) "
        "(got 1000000000000000000000000000000)",
        where + "training.run_name_suffix: must be text without lone surrogate escapes (\\ud800 to \\udfff) "
        "(got '\\ud800')",
    ]
