"""The metric table (dpo/metrics.py): every held-out metric's direction, checked against a hand-written list; the
readers of the table (early stopping, reduce-on-plateau, the sweep objective, the recipe gate) follow it; and every
key a real run logs is in it."""

from __future__ import annotations

import pytest
import yaml

from dpo.errors import UserError
from dpo.metrics import EVAL_METRICS, EVENT_KEYS, HEADLINE, METRICS, direction, known_direction, lookup
from dpo.training.callbacks import BestCheckpointCallback
from dpo.training.execute import execute
from dpo.training.gate import check
from tests.conftest import read_jsonl

# Which way is better for each held-out metric, written out by hand: a wrong row in the table fails here.
# The rejected answers should lose reward and likelihood, so lower is better for them.
HELD_OUT_DIRECTIONS = {
    "eval_loss": "min",
    "eval_rewards/margins": "max",
    "eval_rewards/accuracies": "max",
    "eval_logps/accuracies": "max",
    "eval_logps/chosen": "max",
    "eval_logps/rejected": "min",
    "eval_rewards/chosen": "max",
    "eval_rewards/rejected": "min",
    "eval_logratios/chosen": "max",
    "eval_logratios/rejected": "min",
    "eval_kl": "min",
    "eval_gap/accuracies": "min",
    "eval_gap/margins": "min",
    "eval_gap/loss": "min",
    "eval_mean_token_accuracy": "max",
    # raw statistics, settings and counters: neither way is better
    "eval_logits/chosen": None,
    "eval_logits/rejected": None,
    "eval_entropy": None,
    "eval_beta": None,
    "eval_num_tokens": None,
    "eval_runtime": None,
    "eval_samples_per_second": None,
    "eval_steps_per_second": None,
    "eval_model_preparation_time": None,
}
# settings, counters and timings: logged held-out, but nothing early stopping or a sweep would watch
NOT_WATCHABLE = {
    "eval_beta",
    "eval_num_tokens",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_model_preparation_time",
}


def test_every_held_out_metric_has_the_expected_direction():
    held_out = {m.held_out_name: known_direction(m.held_out_name) for m in METRICS if m.in_held_out}
    assert held_out == HELD_OUT_DIRECTIONS
    assert set(EVAL_METRICS) == set(HELD_OUT_DIRECTIONS) - NOT_WATCHABLE


@pytest.mark.parametrize("metric", ["eval_rewards/rejected", "eval_logps/rejected", "eval_logratios/rejected"])
def test_rejected_answers_are_better_lower(metric):
    assert direction(metric) == "min" and direction(metric, "max") == "max"


def test_no_direction_is_guessed():
    for metric in ("eval_entropy", "eval_scripted", "eval_my_loss"):  # no better direction; not in the table
        with pytest.raises(ValueError, match="no known better direction"):
            direction(metric)
        assert direction(metric, "min") == "min"


def test_early_stopping_on_rejected_reward_under_auto_counts_lower_as_better():
    callback = BestCheckpointCallback("eval_rewards/rejected", mode="auto", patience=2)
    assert callback.mode == "min"
    stopped = None
    for step, value in [(10, 0.0), (20, -0.5), (30, -0.2), (40, -0.6), (50, -0.3), (60, -0.1)]:
        _, stop = callback.update(step, value)
        if stop:
            stopped = step
            break
    assert callback.best_step == 40 and callback.best_value == -0.6 and stopped == 60


def test_reduce_on_plateau_follows_the_table(tiny_recipe):
    plateau = "training.lr_scheduler_type=reduce_lr_on_plateau"
    config = check(tiny_recipe, [plateau, "early_stopping.metric=eval_rewards/rejected"]).dpo_config
    assert config.lr_scheduler_kwargs["mode"] == "min" and config.greater_is_better is False
    assert config.metric_for_best_model == "eval_rewards/rejected"
    config = check(tiny_recipe, [plateau, "early_stopping.metric=eval_logps/chosen"]).dpo_config
    assert config.lr_scheduler_kwargs["mode"] == "max" and config.greater_is_better is True


@pytest.mark.parametrize("plateau", [[], ["training.lr_scheduler_type=reduce_lr_on_plateau"]])
def test_auto_without_a_known_direction_is_a_user_error_on_the_mode(tiny_recipe, plateau):
    with pytest.raises(UserError, match=r"early_stopping.mode: auto cannot tell.*eval_entropy has no better direction"):
        check(tiny_recipe, [*plateau, "early_stopping.metric=eval_entropy"])
    assert check(tiny_recipe, [*plateau, "early_stopping.metric=eval_entropy", "early_stopping.mode=min"])
    # a metric a user callback adds: dpo cannot know which way is better for it either
    with pytest.raises(UserError, match=r"early_stopping.mode: .*eval_scripted is not one of dpo's metrics"):
        check(tiny_recipe, [*plateau, "early_stopping.metric=eval_scripted"], extra_metrics=("eval_scripted",))
    overrides = [*plateau, "early_stopping.metric=eval_scripted", "early_stopping.mode=max"]
    assert check(tiny_recipe, overrides, extra_metrics=("eval_scripted",))


def test_sweep_objective_direction_comes_from_the_table(tiny_recipe, tmp_path):
    from dpo.sweep.spec import load_spec

    def spec(objective: dict):
        path = tmp_path / "spec.yaml"
        search = {"loss.beta": {"log_uniform": [0.01, 1.0]}}
        path.write_text(
            yaml.safe_dump({"recipe": str(tiny_recipe), "objective": objective, "search": search, "trials": 2})
        )
        return load_spec(path)

    assert spec({"metric": "eval_rewards/rejected"}).direction == "minimize"
    assert spec({"metric": "eval_logratios/chosen"}).direction == "maximize"
    assert spec({"metric": "eval_entropy", "direction": "minimize"}).direction == "minimize"
    with pytest.raises(UserError, match=r"spec.yaml: objective.direction: eval_entropy has no better direction"):
        spec({"metric": "eval_entropy"})


def test_eval_kl_says_it_is_measured_on_the_kl_subsample():
    """eval_kl is computed on the first logging.heldout_kl_pairs held-out pairs (16 by default), not on every held-out
    pair: its meaning (docs, --help, early stopping's list) and its report chart's title say so."""
    kl = lookup("eval_kl")
    subsample = "the first logging.heldout_kl_pairs held-out pairs"
    assert subsample in kl.meaning and subsample in kl.chart
    assert subsample in EVAL_METRICS["eval_kl"]


def test_headline_numbers():
    assert HEADLINE == ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_logps/accuracies")


@pytest.mark.slow
def test_every_key_a_run_logs_is_in_the_table(tiny_recipe, tmp_path):
    """metrics.jsonl of a real tiny run (held-out KL on): each key is a row of the table, logged where its row says;
    and each metric the table says the trainer logs at every train step or evaluation is there."""
    execute(tiny_recipe, ["training.max_steps=2", "training.eval_steps=1", "logging.heldout_kl=true"],
            output_dir=tmp_path / "run")  # fmt: skip
    events = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    logged = {key for event in events for key in event} - set(EVENT_KEYS)
    assert sorted(key for key in logged if lookup(key) is None) == []
    evaluations = [e for e in events if "eval_loss" in e]
    assert {m.held_out_name for m in METRICS if m.in_held_out} <= set(evaluations[-1])
    steps = [e for e in events if "grad_norm" in e]
    end = ("train_", "total_flos")  # transformers' end-of-training event
    assert {m.name for m in METRICS if m.in_train and not m.name.startswith(end)} <= set(steps[-1])


def test_the_headline_table_reads_each_part_of_a_summary_and_a_missing_one_as_empty():
    """One reading of summary.json's step-0 / best / end metrics for the console, the report, the comparison page
    and the model card (four copies, each guarding a missing part its own way, before)."""
    from dpo.metrics import HEADLINE, headline_values

    first = HEADLINE[0]
    summary = {"initial_metrics": {first: 0.7}, "best_metrics": None, "final_metrics": [1]}
    rows = headline_values(summary)
    assert [name for name, _ in rows] == list(HEADLINE)
    assert rows[0] == (first, [0.7, None, None]) and all(values == [None] * 3 for _, values in rows[1:])
    assert headline_values({}) == [(name, [None, None, None]) for name in HEADLINE]
