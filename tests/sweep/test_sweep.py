"""`dpo sweep` on the tiny model: spec errors, parallel trials, a failing trial, pruning, SIGKILL + --resume,
and two sweep processes sharing one PostgreSQL study."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from dpo.config.loading import load_recipe
from dpo.errors import UserError
from dpo.sweep.spec import load_spec, set_items
from tests.conftest import REPO

TINY_FIXED = {"training.max_steps": 2, "training.eval_steps": 1, "data.max_eval_pairs": 4}


# the median pruner from the second trial on (by default it waits for five to finish): the specs below run two or more
MEDIAN = {"type": "median", "n_startup_trials": 1}


def write_spec(path: Path, recipe: Path, **fields) -> Path:
    spec = {"recipe": str(recipe), "objective": {"metric": "eval_rewards/accuracies"}, **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dpo(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpo", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout,
        **kwargs,
    )  # fmt: skip


def summary_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


# --- spec checks (no training) -------------------------------------------------------------------------------

SEARCH = {"loss.beta": {"log_uniform": [0.01, 1.0]}}


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [
        ({"objective": {"metric": "eval_rewards/acuracies"}}, "objective.metric", "eval_rewards/accuracies'?"),
        # a direction against the metric table would make the worst trial best.yaml
        ({"objective": {"metric": "eval_loss", "direction": "maximize"}}, "objective.direction",
         "maximize contradicts the metric table (eval_loss is 'min': better when lower); drop direction, or write "
         "minimize"),
        ({"objective": {"metric": "eval_rewards/accuracies", "direction": "minimize"}}, "objective.direction",
         "minimize contradicts the metric table (eval_rewards/accuracies is 'max': better when higher)"),
        ({"search": {"loss.betta": {"uniform": [0.1, 0.2]}}}, "search.loss.betta", "did you mean 'loss.beta'"),
        ({"search": {"training.lr": {"grid": [1e-5]}}}, "search.training.lr", "not a trl.DPOConfig field"),
        ({"search": {"loss.beta": {"normal": [0.1, 0.2]}}}, "search.loss.beta", "unknown kind 'normal'"),
        ({"search": {"loss.beta": {"log_uniform": [0.0, 1.0]}}}, "search.loss.beta", "low > 0"),
        ({"search": {"name": {"choice": ["a", "b"]}}}, "search.name", "set by the sweep"),
        ({"sampler": "grid"}, "search.loss.beta", "cannot be enumerated"),
        ({"sampler": "grid", "trials": 3, "search": {"loss.beta": {"grid": [0.1, 0.2]}}}, "trials", "only 2 points"),
        ({"sampler": {"type": "tpe", "n_startup": 3}}, "sampler.n_startup", "n_startup_trials"),
        ({"pruner": "meridian"}, "pruner", "did you mean 'median'"),
        ({"trials": None}, "trials", "required with sampler 'tpe'"),
        ({"search": {"c": {"variants": {"ipo": {"loss.typo": "ipo"}}}}}, "search.c.ipo.loss.typo", "'loss.type'"),
        ({"search": {"loss.label_smothing": {"grid": [0.1]}}}, "search.loss.label_smothing", "'loss.label_smoothing'"),
        ({"fixed": {"loss.beta_schedule.ned": 0.3}}, "fixed.loss.beta_schedule.ned", "'loss.beta_schedule.end'"),
        ({"sampler": "tpr"}, "sampler", "unknown sampler 'tpr'; did you mean 'tpe'? (valid: grid, random, tpe)"),
        ({"sampler": {"type": "tpe", "group": True, "multivariate": False}}, "sampler",
         "optuna rejected it: ``group`` option can only"),
        ({"sampler": {"type": "tpe", "n_startup_trials": "four"}}, "sampler.n_startup_trials",
         "must be a whole number, as its default 10 is (got 'four')"),
        ({"sampler": {"type": "tpe", "constant_liar": 1}}, "sampler.constant_liar", "must be true or false"),
        ({"pruner": {"type": "median", "n_warmup_steps": 2.5}}, "pruner.n_warmup_steps", "expected a whole number"),
        ({"pruner": {"type": "hyperband", "max_resource": 1.5}}, "pruner.max_resource", "got 1.5"),  # str | int
        ({"fixed": {"training.eval_on_start": True}}, "fixed.training.eval_on_start", "is built in"),
        ({"search": {"training.eval_on_start": {"choice": [False]}}}, "search.training.eval_on_start", "is built in"),
        # a recipe key set in two places: the later would win without a word, and the recorded params would lie
        ({"fixed": {"loss.beta": 0.1}}, "search.loss.beta",
         "'loss.beta' is also set by fixed.loss.beta: set each recipe key in one place"),
        ({"fixed": {"loss": {"beta": 0.1}}}, "search.loss.beta", "'loss.beta' is also set by fixed.loss:"),
        ({"search": {**SEARCH, "c": {"variants": {"plain": {}, "strong": {"loss.beta": 0.5}}}}},
         "search.c.strong.loss.beta", "'loss.beta' is also set by search.loss.beta:"),
        ({"search": {"c": {"variants": {"ipo": {"loss.type": "ipo"}}}, "loss.type": {"choice": ["sigmoid", "ipo"]}}},
         "search.loss.type", "'loss.type' is also set by search.c.ipo.loss.type:"),
        ({"search": {"c": {"variants": {"ipo": {"loss.type": "ipo"}, "hinge": {"loss.type": "hinge"}}},
                     "d": {"variants": {"plain": {}, "robust": {"loss.type": "robust"}}}}},
         "search.d.robust.loss.type", "'loss.type' is also set by search.c.ipo.loss.type:"),
        # a fixed key overridden by variants of two parameters: which one wins would be silent
        ({"fixed": {"training.eval_steps": 10},
          "search": {"c": {"variants": {"a": {}, "b": {"training.eval_steps": 5}}},
                     "d": {"variants": {"x": {"training.eval_steps": 2}}}}},
         "search.d.x.training.eval_steps", "'training.eval_steps' is also set by search.c.b.training.eval_steps:"),
        # each listed value, checked alone by the recipe's schema
        ({"search": {"loss.beta": {"grid": [0.1, 0]}}}, "search.loss.beta", "Input should be greater than 0 (got 0)"),
        ({"search": {**SEARCH, "data.on_invalid": {"choice": ["error", "skipp"]}}}, "search.data.on_invalid",
         "expected one of error or skip, got the text 'skipp'"),
        ({"search": {**SEARCH, "c": {"variants": {"plain": {}, "small": {"peft": {"r": 0}}}}}}, "search.c.small.peft",
         "peft.r: Input should be greater than 0 (got 0)"),
        ({"fixed": {"training.max_steps": b"\x01"}}, "fixed.training.max_steps",
         "or a list or mapping of them (got b'\\x01')"),  # !!binary (a plain 2024-01-01 is text in YAML 1.2)
    ],
)  # fmt: skip
def test_spec_errors_name_file_and_key(tmp_path, tiny_recipe, fields, key, message):
    base = {"trials": 4, "search": SEARCH}
    spec = write_spec(tmp_path / "spec.yaml", tiny_recipe, **{**base, **fields})
    with pytest.raises(UserError) as info:
        load_spec(spec)
    assert str(info.value).startswith(f"{spec}: {key}") and message in str(info.value)


def test_a_sweep_name_or_variant_name_holding_a_secret_is_refused(tmp_path, tiny_recipe, monkeypatch):
    """The sweep's name is the optuna study's name (and each trial's run name, and the wandb group), a variants
    parameter's label and variant names are a parameter and its values there: optuna's storage (study.db, or the
    --storage database) kept them as written, where our files are redacted. One holding a secret is refused when
    the spec loads, shown redacted; without the secret in the environment the same spec loads."""
    secret = "s3cr3t-value-123"
    monkeypatch.setenv("MY_SERVICE_API_KEY", secret)
    hidden = "[redacted $MY_SERVICE_API_KEY]"
    tail = "holds a secret from $MY_SERVICE_API_KEY, which the study's storage would record: choose another"
    named = write_spec(tmp_path / "named.yaml", tiny_recipe, name=f"sweep-{secret}", trials=2, search=SEARCH)
    label = write_spec(tmp_path / "label.yaml", tiny_recipe, trials=2,
                       search={f"c{secret}": {"variants": {"a": {}, "b": {"loss.beta": 0.2}}}})  # fmt: skip
    variant = write_spec(tmp_path / "variant.yaml", tiny_recipe, trials=2,
                         search={"c": {"variants": {"a": {}, f"v-{secret}": {"loss.beta": 0.2}}}})  # fmt: skip
    stem = write_spec(tmp_path / f"{secret}.yaml", tiny_recipe, trials=2, search=SEARCH)
    expected = {
        named: f"{named}: name: the sweep's name {tail}",
        label: f"{label}: search.c{hidden}: the parameter's label {tail}",
        variant: f"{variant}: search.c.v-{hidden}: variant name 'v-{hidden}' {tail}",
        stem: f"{tmp_path}/{hidden}.yaml: name: the sweep's name (the spec file's name) {tail}",
    }
    for spec, message in expected.items():
        with pytest.raises(UserError) as info:
            load_spec(spec)
        assert str(info.value) == message
    monkeypatch.delenv("MY_SERVICE_API_KEY")
    assert load_spec(named).name == f"sweep-{secret}" and load_spec(stem).name == secret
    assert [p.name for p in load_spec(variant).params] == ["c"]


def test_sampler_and_pruner_options_of_every_type_they_take_are_accepted(tmp_path, tiny_recipe):
    """The option check reads optuna's annotations where it can: HyperbandPruner's max_resource is `str | int`."""
    for pruner in ({"type": "hyperband", "max_resource": 100}, {"type": "hyperband", "max_resource": "auto"}):
        spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=2, search=SEARCH, pruner=pruner))
        assert spec.pruner_kwargs == {k: v for k, v in pruner.items() if k != "type"}
    sampler = {"type": "tpe", "n_startup_trials": 4, "constant_liar": False, "gamma": None}
    assert load_spec(write_spec(tmp_path / "s.yaml", tiny_recipe, trials=2, search=SEARCH, sampler=sampler)).trials == 2


def test_a_fixed_built_in_training_key_may_spell_out_its_default(tmp_path, tiny_recipe):
    """`training.eval_on_start: false` changes nothing, as in a recipe; a recipe accepts it, so must the sweep."""
    fixed = {"training.eval_on_start": False}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=2, search=SEARCH, fixed=fixed))
    assert spec.overrides({"loss.beta": 0.1})["training.eval_on_start"] is False


def test_spec_takes_loss_hyperparameters_and_beta_schedule_keys(tmp_path, tiny_recipe):
    """Keys from the loss and beta schedule tables are recipe keys a sweep may search or fix."""
    spec = load_spec(
        write_spec(
            tmp_path / "spec.yaml", tiny_recipe, sampler="grid",
            fixed={"loss.beta_schedule.type": "linear", "loss.beta_schedule.end": 0.3},
            search={
                "loss.label_smoothing": {"grid": [0.0, 0.1]},
                "c": {"variants": {"plain": {}, "dpop": {"loss.type": "dpop", "loss.dpop_lambda": 5.0}}},
            },
        )
    )  # fmt: skip
    assert spec.trials == 4 and spec.grid_space() == {"loss.label_smoothing": [0.0, 0.1], "c": ["plain", "dpop"]}
    assert spec.overrides({"loss.label_smoothing": 0.1, "c": "dpop"}) == {
        "loss.beta_schedule.type": "linear", "loss.beta_schedule.end": 0.3,
        "loss.label_smoothing": 0.1, "loss.type": "dpop", "loss.dpop_lambda": 5.0,
    }  # fmt: skip
    assert type(spec.build_sampler()).__name__ == "GridSampler" and type(spec.build_pruner()).__name__ == "NopPruner"


def test_spec_grid_and_variants(tmp_path, tiny_recipe):
    spec = load_spec(
        write_spec(
            tmp_path / "spec.yaml", tiny_recipe, sampler="grid", fixed={"training.max_steps": 3},
            search={
                "control": {"variants": {"plain": {}, "ipo": {"loss.type": "ipo", "loss.beta": 0.5}}},
                "training.learning_rate": {"grid": [1.0e-5, 5.0e-5]},
                "peft.r": {"int": [4, 8, 4]},
            },
        )
    )  # fmt: skip
    assert spec.trials == 8 and spec.direction == "maximize" and spec.name == "spec"
    assert spec.grid_space() == {
        "control": ["plain", "ipo"], "training.learning_rate": [1e-05, 5e-05], "peft.r": [4, 8],
    }  # fmt: skip
    overrides = spec.overrides({"control": "ipo", "training.learning_rate": 5e-05, "peft.r": 8})
    assert overrides == {
        "training.max_steps": 3, "loss.type": "ipo", "loss.beta": 0.5, "training.learning_rate": 5e-05, "peft.r": 8,
    }  # fmt: skip


def test_variants_of_one_parameter_may_set_the_same_key(tmp_path, tiny_recipe):
    """Only one variant applies per trial, so two variants setting loss.type is no conflict."""
    search = {"c": {"variants": {"ipo": {"loss.type": "ipo"}, "hinge": {"loss.type": "hinge", "loss.beta": 0.5}}}}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid", search=search))
    assert spec.overrides({"c": "hinge"}) == {"loss.type": "hinge", "loss.beta": 0.5}


def test_a_variant_may_override_a_fixed_key_for_its_trials(tmp_path, tiny_recipe):
    """A fixed default that one variant changes (early stopping evaluating more often): the other variants keep the
    fixed value, and the trial's record, the variant's name, says what it set."""
    search = {"c": {"variants": {"plain": {}, "early_stopping": {"training.eval_steps": 5}}}}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid", search=search,
                                fixed={"training.eval_steps": 10}))  # fmt: skip
    assert spec.overrides({"c": "plain"}) == {"training.eval_steps": 10}
    assert spec.overrides({"c": "early_stopping"}) == {"training.eval_steps": 5}


def test_a_searched_value_that_fits_only_some_combinations_is_left_to_the_trials(tmp_path, tiny_recipe):
    """Values are checked alone only for the keys they set: IPO with the fixed label smoothing, or an audit share
    with suspects: keep, is a combination that fails its trials, not the spec."""
    search = {"loss.type": {"choice": ["ipo", "sigmoid"]}, "data.audit.suspects": {"choice": ["keep", "drop"]},
              "data.audit.share": {"grid": [0.1]}}  # fmt: skip
    fixed = {"loss.label_smoothing": 0.1}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid", search=search, fixed=fixed))
    assert spec.trials == 4 and spec.grid_space()["data.audit.suspects"] == ["keep", "drop"]


def draw(spec, storage, trials: int, workers: int = 1) -> dict[int, dict]:
    """What one `dpo sweep` process draws for `trials` trials (its own sampler, built from the spec; the study in
    `storage` may hold earlier processes' trials), without training: {trial number: params}."""
    import optuna

    from dpo.sweep.spec import SEARCH_KINDS

    def sample_only(trial):
        for p in spec.params:
            SEARCH_KINDS[p.kind].suggest(trial, p.name, p.args)
        return 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=spec.build_sampler(),
                                load_if_exists=True)  # fmt: skip
    study.optimize(sample_only, n_trials=trials, n_jobs=workers)
    return {t.number: t.params for t in study.trials}


@pytest.mark.parametrize("sampler", ["random", {"type": "tpe", "n_startup_trials": 6}], ids=["random", "tpe"])
def test_a_resumed_sweep_draws_new_parameters_and_trial_n_draws_the_same_in_every_process(
    tmp_path, tiny_recipe, sampler
):
    """A sampler seeded once per process would start its stream again in a resumed sweep (or on a second machine),
    so trial 3 would repeat trial 0; and optuna reseeds it from the clock per --workers thread. Trial N's draws
    come from (seed, N) instead (TPE draws its first n_startup_trials at random)."""
    from optuna.storages import InMemoryStorage

    search = {"loss.beta": {"log_uniform": [0.01, 1.0]}, "training.learning_rate": {"uniform": [1.0e-5, 1.0e-3]}}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler=sampler, trials=6, search=search))
    storage = InMemoryStorage()
    first = draw(spec, storage, 3)
    resumed = draw(spec, storage, 3)  # --resume: a new process, a new sampler, the same study
    assert sorted(resumed) == [0, 1, 2, 3, 4, 5]
    earlier = {first[n]["loss.beta"] for n in range(3)}
    assert all(resumed[n]["loss.beta"] not in earlier for n in (3, 4, 5))
    # the same trial number, the same parameters: in one process, one trial at a time or two at a time
    assert draw(spec, InMemoryStorage(), 6) == resumed
    assert draw(spec, InMemoryStorage(), 6, workers=2) == resumed
    reseeded = load_spec(write_spec(tmp_path / "seed1.yaml", tiny_recipe, sampler=sampler, trials=6, search=search,
                                    seed=1))  # fmt: skip
    assert draw(reseeded, InMemoryStorage(), 1)[0] != resumed[0]  # the seed decides what is drawn


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stopped_in", ["the sampler", "the trial's environment", "reading summary.json"])
def test_ctrl_c_anywhere_in_a_trial_marks_it_interrupted_so_resume_runs_it_again(
    tmp_path, tiny_recipe, monkeypatch, stopped_in
):
    """Not only while the trial's process runs: a Ctrl-C while the sampler draws, while the trial is set up or after
    its process exited must leave it interrupted, else optuna's FAIL is final and the grid point is never run."""
    import optuna

    from dpo.sweep import driver

    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid",
                                search={"loss.beta": {"grid": [0.1, 0.2]}}))  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "trials").mkdir(parents=True)

    def trial_process(cmd, env, log_path, trial_dir, record) -> int:  # a trial that ran: no training needed here
        log_path.write_text("trained\n")
        return 0

    monkeypatch.setattr(driver, "_run_trial_logging_redacted", trial_process)
    if stopped_in == "the sampler":
        monkeypatch.setattr(optuna.samplers.GridSampler, "sample_independent", ctrl_c)
    elif stopped_in == "the trial's environment":
        monkeypatch.setattr(driver, "_trial_env", ctrl_c)
    else:
        monkeypatch.setattr(driver, "json_object_or_empty", ctrl_c)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, sampler=spec.build_sampler(), direction=spec.direction)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(lambda t: driver._objective(t, spec, sweep_dir, "sqlite://", 1, {}), n_trials=1,
                       catch=(driver.TrialFailed,))  # fmt: skip
    (stopped,) = study.trials
    assert stopped.state.name == "FAIL" and stopped.user_attrs[driver.INTERRUPTED] is True

    driver._retry_interrupted(study, sweep_dir)  # what --resume does first
    queued = study.trials[-1]
    assert queued.number == 1 and queued.state.name == "WAITING" and queued.system_attrs["retry_history"] == [0]
    assert queued.params == stopped.params and queued.system_attrs["grid_id"] == stopped.system_attrs["grid_id"]


def test_the_study_database_path_is_taken_literally(tmp_path):
    """A '?' or '%20' in the sweep's folder is part of the file's name, not a URL query or an escaped space."""
    import optuna

    from dpo.sweep.driver import sqlite_url
    from dpo.sweep.storage import open_storage

    folder = tmp_path / "lr?v2 %20x"
    folder.mkdir()
    optuna.create_study(study_name="s", storage=open_storage(sqlite_url(folder / "study.db")))
    assert [p.name for p in tmp_path.iterdir()] == [folder.name] and (folder / "study.db").is_file()


def test_resuming_under_another_name_is_refused_before_any_trial(tmp_path, tiny_recipe):
    """A renamed spec (its name is the file's stem) or an edited `name:` would start a second study in study.db,
    numbering its trials from 0 into the first sweep's trials/ folder."""
    import optuna

    from dpo.sweep.driver import run_sweep, sqlite_url

    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "trials").mkdir(parents=True)
    optuna.create_study(study_name="first", storage=sqlite_url(sweep_dir / "study.db"))
    spec = write_spec(tmp_path / "second.yaml", tiny_recipe, trials=2, search=SEARCH, fixed=TINY_FIXED)
    with pytest.raises(UserError, match=r"holds the sweep 'first', not 'second': resume it with its own name"):
        run_sweep(spec, output_dir=sweep_dir, resume=True)
    assert optuna.get_all_study_names(sqlite_url(sweep_dir / "study.db")) == ["first"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"objective": {"metric": "eval_loss"}, "fixed": {"training.eval_strategy": "no"}},
         "objective.metric: eval_loss is never logged in the trials: training.eval_strategy is 'no': no evaluation "
         "after step 0; each of them would train to its end and fail without it"),
        ({"objective": {"metric": "eval_kl"}, "fixed": {"loss.type": "simpo"}},
         "objective.metric: eval_kl is never logged in the trials: loss.type ['simpo'] uses no reference model;"),
        ({"objective": {"metric": "eval_kl"}, "fixed": {"logging.heldout_kl": False}},
         "objective.metric: eval_kl is never logged in the trials: the held-out KL is off (it needs "
         "logging.heldout_kl"),
        ({"objective": {"metric": "eval_gap/accuracies"}, "fixed": {"training.logging_steps": 4}},
         "objective.metric: eval_gap/accuracies is never logged in the trials: it needs train values logged between "
         "evaluations, and training.logging_steps 4 logs none before the last step (max_steps 4);"),
        # a listed value alone, on the base recipe: the trials that draw it would each fail at their end
        ({"objective": {"metric": "eval_logratios/chosen"}, "search": {"loss.type": {"choice": ["sigmoid", "simpo"]}}},
         "objective.metric: eval_logratios/chosen is never logged in the trials where loss.type is 'simpo': loss.type "
         "['simpo'] uses no reference model;"),
        ({"objective": {"metric": "eval_kl"},
          "search": {"c": {"variants": {"plain": {}, "orpo": {"loss.type": "orpo"}}}}},
         "objective.metric: eval_kl is never logged in the trials of variant search.c.orpo: loss.type ['orpo'] uses "
         "no reference model;"),
        # judged on what the trials train: a combination of values, named whole
        ({"objective": {"metric": "eval_logratios/chosen"},
          "search": {"loss.beta": {"grid": [0.1]}, "loss.type": {"choice": ["sigmoid", "simpo"]}}},
         "objective.metric: eval_logratios/chosen is never logged in the trials where loss.beta is 0.1 and loss.type "
         "is 'simpo': loss.type ['simpo'] uses no reference model;"),
        # both ends of a range: the trials that draw max_steps 4 log no train values before their last step
        ({"objective": {"metric": "eval_gap/accuracies"}, "fixed": {"training.logging_steps": 4}, "sampler": "tpe",
          "trials": 2, "search": {"training.max_steps": {"int": [4, 8]}}},
         "objective.metric: eval_gap/accuracies is never logged in the trials where training.max_steps is 4: it needs "
         "train values logged between evaluations, and training.logging_steps 4 logs none before the last step "
         "(max_steps 4);"),
        # the last step is evaluated, never pruned: a pruner without an evaluation before it would do nothing
        ({"pruner": MEDIAN, "fixed": {"training.eval_steps": 4}},
         "pruner: has no effect: the trials have no evaluation before their last step (training.eval_steps 4 >= "
         "training.max_steps 4), and a trial is never pruned at its last; use pruner: none, or evaluate during "
         "training (training.eval_steps)"),
        # the base recipe evaluates at step 2, but every trial sets eval_steps, to values with no evaluation
        ({"pruner": MEDIAN, "search": {"training.eval_steps": {"grid": [4, 8]}}},
         "pruner: has no effect: the trials have no evaluation before their last step (training.eval_steps 4 >= "
         "training.max_steps 4)"),
        # a range over a key the evaluation does not depend on leaves it as it is
        ({"pruner": MEDIAN, "fixed": {"training.eval_steps": 4}, "sampler": "tpe", "trials": 2,
          "search": {"training.learning_rate": {"log_uniform": [1.0e-5, 1.0e-3]}}},
         "pruner: has no effect: the trials have no evaluation before their last step (training.eval_steps 4 >= "
         "training.max_steps 4)"),
        ({"pruner": MEDIAN, "sampler": "tpe", "trials": 2, "search": {"training.eval_steps": {"int": [4, 12, 4]}}},
         "pruner: has no effect: the trials have no evaluation before their last step (training.eval_steps 4 >= "
         "training.max_steps 4)"),
        # optuna's median pruner prunes no trial before step n_warmup_steps, and the last evaluation is at step 2
        ({"pruner": {**MEDIAN, "n_warmup_steps": 3}},
         "pruner.n_warmup_steps: has no effect: the median pruner prunes from step 3 on, and the trials' last "
         "evaluation before their last step is at step 2 (a trial is never pruned at its last); lower it to 2 or "
         "less, or use pruner: none"),
        # every value of the range judged: the latest evaluation is max_steps 10's at step 9 (every 3 steps), not an
        # end's (max_steps 9: step 6; max_steps 11, every 4 steps: step 8)
        ({"pruner": {**MEDIAN, "n_warmup_steps": 10}, "fixed": {"training.eval_steps": 0.3},
          "sampler": "tpe", "trials": 2, "search": {"training.max_steps": {"int": [9, 11]}}},
         "pruner.n_warmup_steps: has no effect: the median pruner prunes from step 10 on, and the trials' last "
         "evaluation before their last step is at step 9"),
        # a metric beta multiplies ranks trials at different betas by their beta: the search's betas, or a variant's
        ({"objective": {"metric": "eval_loss"}},
         "objective.metric: eval_loss is scaled by beta, and the trials train at different betas (0.1, 0.2): their "
         "values are not comparable, so the best trial would be chosen by its beta; use a metric neither changes, "
         "such as eval_rewards/accuracies or eval_logps/accuracies, or give every trial the same beta"),
        ({"objective": {"metric": "eval_rewards/margins"},
          "search": {"c": {"variants": {"plain": {}, "sharp": {"loss.beta": 0.5}}}}},
         "objective.metric: eval_rewards/margins is scaled by beta, and the trials train at different betas (0.1, "
         "0.5)"),
        # one loss.beta, moved differently by a schedule
        ({"objective": {"metric": "eval_rewards/chosen"}, "search": {"c": {"variants": {
            "constant": {}, "rising": {"loss.beta_schedule.type": "linear", "loss.beta_schedule.end": 0.5}}}}},
         "objective.metric: eval_rewards/chosen is scaled by beta, and the trials train at different betas (0.1, 0.1 "
         "linear end 0.5)"),
        # beta-DPO moves each trial's beta with its own batches: never comparable across trials
        ({"objective": {"metric": "eval_rewards/margins"}, "fixed": {"loss.beta_schedule": {"type": "adaptive"}},
          "search": {"training.learning_rate": {"grid": [1.0e-3, 1.0e-2]}}},
         "objective.metric: eval_rewards/margins is scaled by beta, and beta-DPO (loss.beta_schedule adaptive) moves "
         "the beta of the trials with their own batches"),
        # the held-out loss of different losses at one beta
        ({"objective": {"metric": "eval_loss"}, "search": {"loss.type": {"choice": ["sigmoid", "ipo"]}}},
         "objective.metric: eval_loss is each trial's own loss, and the trials train different losses (sigmoid; ipo): "
         "their values are not comparable, so the best trial would be chosen by its loss's scale"),
        ({"objective": {"metric": "eval_loss"},
          "search": {"c": {"variants": {"plain": {}, "cdpo": {"loss.label_smoothing": 0.1}}}}},
         "objective.metric: eval_loss is each trial's own loss, and the trials train different losses (sigmoid; "
         "sigmoid (label_smoothing 0.1))"),
    ],
)  # fmt: skip
def test_a_sweep_whose_objective_or_pruner_would_never_be_used_is_refused_before_any_trial(
    tmp_path, tiny_recipe, fields, message
):
    """The gate refuses an early-stopping metric the run would not log; a sweep objective got none of those checks,
    so every trial trained to its end and then failed ("objective ... is missing in summary.json")."""
    from dpo.sweep.driver import run_sweep

    spec = write_spec(tmp_path / "spec.yaml", tiny_recipe,
                      **{"sampler": "grid", "search": {"loss.beta": {"grid": [0.1, 0.2]}}, **fields})  # fmt: skip
    with pytest.raises(UserError) as refused:
        run_sweep(spec, output_dir=tmp_path / "sweep")
    assert str(refused.value).startswith(f"{spec}: {message}")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # optuna's MedianPruner waits for n_startup_trials (default 5) completed trials before it compares one
        ({"pruner": "median", "sampler": "random", "trials": 4},
         "pruner: has no effect: the median pruner compares a trial with completed ones only once 5 have completed "
         "(n_startup_trials 5, its default), and in a sweep of 4 trials the last one sees 3 at most; set "
         "n_startup_trials to 3 or less, or use pruner: none"),
        # both options block: both named, so that lowering one is not refused again for the other
        ({"pruner": {"type": "median", "n_min_trials": 5}, "sampler": "random", "trials": 4},
         "pruner: has no effect: the median pruner compares a trial with completed ones only once 5 have completed "
         "(n_startup_trials 5, its default; n_min_trials 5), and in a sweep of 4 trials the last one sees 3 at most; "
         "set n_startup_trials and n_min_trials to 3 or less, or use pruner: none"),
        ({"pruner": {"type": "median", "n_startup_trials": 2}},  # the grid's 2 points: 2 trials
         "pruner.n_startup_trials: has no effect: the median pruner compares a trial with completed ones only once 2 "
         "have completed (n_startup_trials 2), and in a sweep of 2 trials the last one sees 1 at most; set "
         "n_startup_trials to 1 or less, or use pruner: none"),
        # and for n_min_trials of them at the step
        ({"pruner": {"type": "median", "n_startup_trials": 1, "n_min_trials": 3}, "sampler": "random", "trials": 3},
         "pruner.n_min_trials: has no effect: the median pruner compares a trial with completed ones only once 3 have "
         "completed (n_min_trials 3), and in a sweep of 3 trials the last one sees 2 at most; set n_min_trials to 2 or "
         "less, or use pruner: none"),
        ({"pruner": {"type": "median", "n_startup_trials": 0}, "trials": 1},  # 0 still needs one completed trial
         "pruner: has no effect: a sweep of one trial has no completed trial to compare it with; use pruner: none"),
    ],
)  # fmt: skip
def test_a_median_pruner_that_would_wait_past_the_last_trial_is_refused(tmp_path, tiny_recipe, fields, message):
    fields = {"sampler": "grid", "search": {"loss.beta": {"grid": [0.1, 0.2]}}, **fields}
    path = write_spec(tmp_path / "spec.yaml", tiny_recipe, **fields)
    with pytest.raises(UserError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}: {message}"


def test_a_median_pruner_that_compares_before_the_last_trial_and_hyperband_load(tmp_path, tiny_recipe):
    for pruner, trials in [({"type": "median", "n_startup_trials": 3}, 4), ("median", 6), ("hyperband", 2)]:
        spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="random", trials=trials,
                                    pruner=pruner, search={"loss.beta": {"uniform": [0.1, 0.2]}}))  # fmt: skip
        assert spec.trials == trials


@pytest.mark.parametrize(
    "fields",
    [
        {"objective": {"metric": "eval_kl"}},  # LoRA: the adapter-disabled model is the reference
        {"objective": {"metric": "eval_gap/accuracies"}},  # logged every step by default
        {"pruner": MEDIAN},  # evaluated at step 2 of 4
        # some trials evaluate before their last step: the pruner acts on those (the base recipe, max_steps 2 with
        # eval_steps 2, evaluates only at its last step, and no trial trains its eval_steps)
        {"pruner": MEDIAN, "fixed": {"training.max_steps": 2},
         "search": {"loss.beta": {"grid": [0.1]}, "training.eval_steps": {"grid": [4, 1]}}},
        {"pruner": MEDIAN, "fixed": {"training.eval_steps": 4},
         "search": {"c": {"variants": {"plain": {}, "often": {"training.eval_steps": 1}}}}},
        # the high end of the range evaluates at step 4 of 8
        {"pruner": MEDIAN, "fixed": {"training.eval_steps": 4}, "sampler": "tpe", "trials": 2,
         "search": {"training.max_steps": {"int": [4, 8]}}},
        # every trial runs max_steps 8 or 12, so logs train values before its last step; no trial runs the base's 4
        {"objective": {"metric": "eval_gap/accuracies"}, "fixed": {"training.logging_steps": 4},
         "search": {"training.max_steps": {"grid": [8, 12]}}},
        # with eval_delay 3 the ends of the range, eval_steps 2 and 4, evaluate only at the last step (4), but the
        # trials drawing eval_steps 3 evaluate at step 3: judged by its ends, the pruner was refused
        {"pruner": MEDIAN, "fixed": {"training.eval_delay": 3}, "sampler": "tpe", "trials": 2,
         "search": {"training.eval_steps": {"int": [2, 4]}}},
        # a metric beta scales ranks trials of one beta fairly, a reward trials of one beta whatever their loss
        {"objective": {"metric": "eval_loss"}, "search": {"training.learning_rate": {"grid": [1.0e-3, 1.0e-2]}}},
        {"objective": {"metric": "eval_rewards/margins"}, "search": {"loss.type": {"choice": ["sigmoid", "ipo"]}}},
        # the pruner acts from step 2, where the trials evaluate
        {"pruner": {**MEDIAN, "n_warmup_steps": 2}},
        # max_steps 10 evaluates at step 9 (every 3 steps); the ends' last evaluations are at steps 6 and 8
        {"pruner": {**MEDIAN, "n_warmup_steps": 9}, "fixed": {"training.eval_steps": 0.3},
         "sampler": "tpe", "trials": 2, "search": {"training.max_steps": {"int": [9, 11]}}},
    ],
)  # fmt: skip
def test_objectives_and_pruners_the_trials_can_use_pass(tmp_path, tiny_recipe, fields):
    from dpo.sweep.driver import check_objective
    from dpo.training.gate import check

    fields = {"sampler": "grid", "search": {"loss.beta": {"grid": [0.1, 0.2]}}, **fields}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, **fields))
    check_objective(spec, check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False))


def test_an_objective_only_the_base_recipes_loss_lacks_passes_when_every_trial_sets_the_loss(tmp_path, tiny_recipe):
    """No trial trains the base recipe's reference-free simpo: each draws sigmoid or ipo, and logs eval_kl."""
    from dpo.sweep.driver import check_objective
    from dpo.training.gate import check

    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["loss"] = {"type": "simpo", "beta": 2.0}
    simpo = tmp_path / "simpo.yaml"
    simpo.write_text(yaml.safe_dump(recipe))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", simpo, sampler="grid", objective={"metric": "eval_kl"},
                                search={"loss.type": {"choice": ["sigmoid", "ipo"]}}))  # fmt: skip
    check_objective(spec, check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False))


def test_the_checks_judge_every_value_of_an_integer_range_and_only_its_ends_beyond_the_limit(
    tmp_path, tiny_recipe, monkeypatch
):
    """Every listed value and every value of an integer range; a range longer than the limit by its ends. All
    combinations; beyond the limit, each parameter's values with the others at their first value."""
    from dpo.sweep import driver

    search = {"loss.beta": {"grid": [0.1, 0.2, 0.3]}, "loss.type": {"choice": ["sigmoid", "ipo"]},
              "training.max_steps": {"int": [4, 12, 4]}}  # fmt: skip
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=2, search=search))

    def judged():
        return [tuple(value for _, value in combination) for combination in driver._combinations(spec)]

    assert driver.checked_values(spec.params[2]) == [4, 8, 12]  # each value of the range, not only its ends
    assert len(judged()) == 18 and (0.3, "ipo", 8) in judged()
    assert driver.every_combination_judged(spec)
    monkeypatch.setattr(driver, "MAX_CHECKED_COMBINATIONS", 17)
    assert judged() == [(0.1, "sigmoid", 4), (0.2, "sigmoid", 4), (0.3, "sigmoid", 4), (0.1, "ipo", 4),
                        (0.1, "sigmoid", 8), (0.1, "sigmoid", 12)]  # fmt: skip
    assert not driver.every_combination_judged(spec)
    monkeypatch.setattr(driver, "MAX_CHECKED_COMBINATIONS", 2)  # the range, 3 values, is judged by its ends
    assert driver.checked_values(spec.params[2]) == [4, 12]
    assert driver.checked_values(load_spec(write_spec(tmp_path / "s2.yaml", tiny_recipe, trials=2, search={
        "training.max_steps": {"int": [4, 11, 4]}})).params[0]) == [4, 8]  # fmt: skip
    assert not driver.every_combination_judged(spec)


# 2 x 591 = 1182 combinations, more than MAX_CHECKED_COMBINATIONS: each value is judged with the other parameter at its
# first value (eval_steps 1000, no evaluation during training), never max_steps 600 with eval_steps 5, which evaluates
# up to step 595. The trials that draw it use the pruner: the spec is left to them, not refused.
@pytest.mark.parametrize(
    "fields",
    [
        {"pruner": {**MEDIAN, "n_warmup_steps": 100},
         "search": {"training.eval_steps": {"choice": [1000, 5]}, "training.max_steps": {"int": [10, 600]}}},
        {"pruner": MEDIAN,
         "search": {"training.eval_steps": {"choice": [1000, 5]}, "training.max_steps": {"int": [2, 600]}}},
    ],
)  # fmt: skip
def test_a_pruner_judged_on_only_some_combinations_is_left_to_the_trials(tmp_path, tiny_recipe, fields):
    from dpo.sweep import driver
    from dpo.training.gate import check

    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="tpe", trials=4, **fields))
    assert not driver.every_combination_judged(spec)
    driver.check_objective(spec, check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False))


def test_a_pruner_no_trial_can_use_is_refused_when_every_combination_was_judged(tmp_path, tiny_recipe, monkeypatch):
    """2 x 81 combinations, all judged: max_steps 90 with eval_steps 5 evaluates last at step 85, before the warmup.
    The same spec past the limit is left to the trials."""
    from dpo.sweep import driver
    from dpo.training.gate import check

    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="tpe", trials=4,
                                pruner={**MEDIAN, "n_warmup_steps": 100}, search={
                                    "training.eval_steps": {"choice": [1000, 5]},
                                    "training.max_steps": {"int": [10, 90]}}))  # fmt: skip
    checked = check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False)
    with pytest.raises(UserError) as refused:
        driver.check_objective(spec, checked)
    assert str(refused.value) == (
        f"{spec.path}: pruner.n_warmup_steps: has no effect: the median pruner prunes from step 100 on, and the "
        "trials' last evaluation before their last step is at step 85 (a trial is never pruned at its last); lower "
        "it to 85 or less, or use pruner: none"
    )
    monkeypatch.setattr(driver, "MAX_CHECKED_COMBINATIONS", 161)
    driver.check_objective(spec, checked)


STRATEGY_SPEC = {"sampler": "grid", "pruner": MEDIAN, "fixed": {"training.eval_steps": 1},
                 "search": {"training.eval_strategy": {"choice": ["steps", "epoch"]}}}  # fmt: skip


def test_a_searched_eval_strategy_overrides_a_fixed_eval_steps_in_every_trial(tmp_path, tiny_recipe):
    """The fixed keys and the parameters' values were both plain --set, so "written beside" each other: every trial
    drawing 'epoch' failed its gate ("--set: training.eval_steps: has no effect"), though the spec means eval_steps
    for the trials that evaluate by steps. The fixed keys are a layer of their own, below the searched values."""
    from dpo.config.loading import SWEEP_FIXED_SOURCE
    from dpo.sweep import driver
    from dpo.training.gate import check

    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, **STRATEGY_SPEC))
    checked = check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False)
    driver.check_objective(spec, checked)
    assert [c.which for c in driver.trial_configs(spec, checked)] == [
        " where training.eval_strategy is 'steps'", " where training.eval_strategy is 'epoch'"
    ]  # fmt: skip
    assert driver._layers(spec, {"training.eval_strategy": "epoch"}) == (
        {"training.eval_steps": 1}, {"training.eval_strategy": "epoch"}
    )  # fmt: skip
    for strategy in ("steps", "epoch"):
        overrides = driver.trial_overrides(spec, {"training.eval_strategy": strategy})
        assert [getattr(o, "source", "--set") for o in overrides] == [SWEEP_FIXED_SOURCE, "--set"]
        trial = check(spec.base_recipe, overrides, writes_run_dir=False)
        assert (trial.dpo_config.eval_strategy, trial.dpo_config.eval_steps) == (strategy, 1)


def test_a_trial_process_applies_the_fixed_keys_as_their_own_layer(tmp_path, tiny_recipe, monkeypatch, capsys):
    """`python -m dpo.sweep.trial ... --fixed training.eval_steps=1 --set training.eval_strategy="epoch"`: the
    gate of the trial's run passes (its run then stopped here)."""
    from dpo.sweep import trial
    from dpo.training import execute as execute_module
    from dpo.training.gate import check

    seen = []

    def execute(recipe, overrides, output_dir, callbacks):
        seen.append(check(recipe, overrides, writes_run_dir=False).dpo_config.eval_strategy)
        raise UserError("stopped before training")

    monkeypatch.setattr(execute_module, "execute", execute)
    monkeypatch.setattr(trial, "trial_callback", lambda *args: None)
    monkeypatch.setenv(trial.STORAGE_ENV, "sqlite:///unused.db")
    argv = ["--study", "s", "--trial-id", "0", "--metric", "eval_loss", "--pruner", '{"type": "median"}',
            str(tiny_recipe), "--fixed", "training.eval_steps=1", "--set", 'training.eval_strategy="epoch"',
            "--output-dir", str(tmp_path / "trial")]  # fmt: skip
    assert trial.main(argv) == 2
    assert capsys.readouterr().err == "error: stopped before training\n"
    assert seen == ["epoch"]
    # written beside each other (both fixed), eval_steps is still a knob that does nothing
    argv[argv.index('training.eval_strategy="epoch"') - 1] = "--fixed"
    assert trial.main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --set (sweep fixed): training.eval_steps: has no effect: training.eval_strategy is 'epoch': "
        "evaluations come at each epoch's end\n"
    )


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path, tiny_recipe):
    spec = write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=2, search=SEARCH)
    spec.write_text(spec.read_text().replace("eval_rewards/accuracies", "eval_accuracy"))
    proc = dpo("sweep", spec, "--output-dir", tmp_path / "sweep")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith(f"error: {spec}: objective.metric: unknown held-out metric 'eval_accuracy'")
    assert not (tmp_path / "sweep").exists()


def test_the_sweep_checks_its_own_folder_not_the_base_recipes_run_directory(tmp_path, tiny_recipe, monkeypatch):
    """The trials write under the sweep's folder, never the base recipe's runs/<name>: a runs/ that `dpo train`
    could not create does not stop the sweep, which gets as far as locking its own folder."""
    from dpo.sweep import driver

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where dpo train would make runs/")
    spec = write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=1, search=SEARCH, fixed=TINY_FIXED)

    class LockReached(Exception):
        pass

    def lock(*args, **kwargs):
        raise LockReached

    monkeypatch.setattr(driver, "DirectoryLock", lock)
    with pytest.raises(LockReached):
        driver.run_sweep(spec, output_dir=tmp_path / "sweep")


# --- sweeps that train -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_four_trials_best_yaml_trains(tmp_path, tiny_recipe):
    import optuna

    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, name="duo", sampler="random", trials=4, fixed=TINY_FIXED,
        search={"loss.beta": {"log_uniform": [0.05, 0.5]}, "training.learning_rate": {"grid": [1.0e-2, 1.0e-3]}},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    proc = dpo("sweep", spec, "--workers", 2, "--output-dir", sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep duo: eval_rewards/accuracies (maximize)" in proc.stdout and "best: trial" in proc.stdout

    summary = summary_of(sweep_dir)
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert all(t["state"] == "complete" and t["steps"] == 2 for t in summary["trials"])
    assert summary["steps_total"] == 8 and summary["steps_saved_by_pruning"] == 0
    best = max(summary["trials"], key=lambda t: t["value"])
    assert summary["best_value"] == best["value"] and summary["best_params"] == best["params"]
    for t in summary["trials"]:
        run_dir = sweep_dir / t["run_dir"]
        assert json.loads((run_dir / "trial.json").read_text()) == t
        assert (run_dir / "train.log").is_file() and (run_dir / "final").is_dir()
        resolved = load_recipe(run_dir / "recipe.yaml").recipe
        assert resolved.loss.beta == t["params"]["loss.beta"]
        assert resolved.training["learning_rate"] == t["params"]["training.learning_rate"]
        run_summary = json.loads((run_dir / "summary.json").read_text())
        assert run_summary["final_metrics"]["eval_rewards/accuracies"] == t["value"]
    spec_copy = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert spec_copy["base_recipe"] == str(tiny_recipe.resolve()) and spec_copy["trials"] == 4

    # the two workers ran trials at the same time
    study = optuna.load_study(study_name="duo", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))

    # best.yaml is the best trial's resolved recipe and trains as it is
    best_recipe = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    trial_recipe = yaml.safe_load((sweep_dir / best["run_dir"] / "recipe.yaml").read_text())
    assert {**trial_recipe, "name": "duo-best"} == best_recipe
    proc = dpo("train", sweep_dir / "best.yaml", "--output-dir", tmp_path / "best-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "best-run" / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_invalid_combination_fails_alone(tmp_path, tiny_recipe):
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, sampler="grid", fixed={**TINY_FIXED, "loss.label_smoothing": 0.1},
        search={"loss.type": {"choice": ["ipo", "sigmoid"]}},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    proc = dpo("sweep", spec, "--output-dir", sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_type = {t["params"]["loss.type"]: t for t in summary_of(sweep_dir)["trials"]}
    failed, ok = by_type["ipo"], by_type["sigmoid"]
    assert failed["state"] == "failed" and failed["value"] is None and failed["steps"] == 0
    assert "loss.label_smoothing" in failed["reason"] and "does not apply" in failed["reason"]
    assert "error:" in (sweep_dir / failed["run_dir"] / "train.log").read_text()
    assert json.loads((sweep_dir / failed["run_dir"] / "trial.json").read_text())["state"] == "failed"
    assert ok["state"] == "complete" and summary_of(sweep_dir)["best_trial"] == ok["number"]
    assert "failed" in proc.stdout  # the table shows it


@pytest.mark.slow
def test_what_a_trial_writes_to_its_file_descriptors_reaches_train_log_redacted(tmp_path, tiny_recipe):
    """A trial's own sys.stdout redacts, but C extensions and os.write bypass it: the driver reads the trial's output
    through a pipe and redacts it there. A sitecustomize makes every Python process write the secret to fd 2."""
    secret = "fd-level-secret-0123456789"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nos.write(2, b'from fd 2: ' + os.environ.get('DPO_TEST_API_KEY', '').encode() + b'\\n')\n"
    )
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_recipe,
        name="fd",
        sampler="grid",
        fixed={**TINY_FIXED, "loss.label_smoothing": 0.1},
        search={"loss.type": {"choice": ["ipo"]}},
    )  # fmt: skip  (one trial, which `dpo train` rejects at once: label smoothing does not apply to IPO)
    sweep_dir = tmp_path / "sweep"
    python_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "DPO_TEST_API_KEY": secret}
    dpo("sweep", spec, "--output-dir", sweep_dir, env=env)
    log = (sweep_dir / "trials" / "trial-0000" / "train.log").read_text()
    assert "from fd 2: [redacted $DPO_TEST_API_KEY]" in log  # the trial did write it, and it was redacted
    assert secret not in log and "does not apply" in log


def test_the_drivers_own_note_in_train_log_is_never_the_trials_failure_reason(tmp_path):
    from dpo.sweep.driver import LOG_NOTE, _failure_line

    log = tmp_path / "train.log"
    log.write_text(
        f"Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n{LOG_NOTE} later output not kept\n"
    )
    assert _failure_line(log, 1, None) == "exit code 1: RuntimeError: CUDA out of memory"


def open_files_under(folder: Path) -> list[str]:
    """The files under `folder` this process holds open (Linux: /proc/self/fd)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads this process's open files from /proc")
def test_an_error_around_a_trial_fails_that_trial_not_the_sweep(tmp_path, tiny_recipe, monkeypatch):
    """A fork refused (EAGAIN with several workers), or a full disk writing trial.json, raised out of optuna and ended
    the sweep with a traceback, no sweep_summary.json, the trial's log open and `.trial-NNNN.log` left behind."""
    import errno

    from dpo.sweep import driver

    search = {"loss.beta": {"grid": [0.1, 0.2, 0.3]}}
    spec = write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid", search=search)
    sweep_dir = tmp_path / "sweep"
    real_popen, real_write, started = subprocess.Popen, driver.atomic_write_json, []

    def popen(cmd, **kwargs):  # the first trial's fork is refused; the others run a process that trains nothing
        started.append(cmd)
        if len(started) == 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_popen([sys.executable, "-c", "print('trained')"], **kwargs)

    def disk_full_in_the_third(path, data):
        if len(started) == 3 and path.name == "trial.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    trained = {"final_weights": "last", "final_metrics": {"eval_rewards/accuracies": 0.75}, "steps": 4, "max_steps": 4}
    monkeypatch.setattr(driver.subprocess, "Popen", popen)
    monkeypatch.setattr(driver, "atomic_write_json", disk_full_in_the_third)
    monkeypatch.setattr(driver, "json_object_or_empty", lambda path: trained)  # the summary.json a trial wrote
    summary = driver.run_sweep(spec, output_dir=sweep_dir, echo=lambda line: None)

    states = {t["number"]: t for t in summary["trials"]}
    assert [states[n]["state"] for n in (0, 1, 2)] == ["failed", "complete", "failed"]
    assert states[0]["reason"] == "could not run the trial: [Errno 11] Resource temporarily unavailable"
    assert states[2]["reason"].startswith("could not run the trial: [Errno 28] No space left on device: ")
    assert summary["best_trial"] == 1 and (sweep_dir / "sweep_summary.json").is_file()
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == ["trial-0000", "trial-0001", "trial-0002"]
    assert (sweep_dir / "trials" / "trial-0000" / "train.log").read_text() == ""  # the log was closed and kept
    assert open_files_under(sweep_dir / "trials") == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device whose writes fail: disk full)")
def test_a_trial_log_that_cannot_be_written_is_said_in_trial_json_not_a_crash(tmp_path):
    from dpo.sweep.driver import _run_trial_logging_redacted

    record = {}
    cmd = [sys.executable, "-c", "print('a little output, kept in the file buffer until the close')"]
    returncode = _run_trial_logging_redacted(cmd, dict(os.environ), Path("/dev/full"), tmp_path, record)
    assert returncode == 0
    assert record["log_error"].startswith("train.log is incomplete: ") and "No space left" in record["log_error"]


def test_the_pruner_is_asked_before_the_last_evaluation_never_at_it():
    """Trainer evaluates once more at the last step: a trial pruned there had spent all its steps and lost its value
    (no best trial, no importance, 0 steps saved). It is reported, and the trial completes."""
    from types import SimpleNamespace

    from dpo.sweep.trial import OptunaTrialCallback

    reported = []
    hopeless = SimpleNamespace(report=lambda value, step: reported.append((step, value)), should_prune=lambda: True)

    def evaluate_at(step: int) -> tuple[OptunaTrialCallback, bool]:
        callback = OptunaTrialCallback(hopeless, "eval_loss")
        state = SimpleNamespace(global_step=step, max_steps=6, is_world_process_zero=True)
        control = callback.on_evaluate(None, state, SimpleNamespace(should_training_stop=False), {"eval_loss": 0.7})
        return callback, control.should_training_stop

    last, stopped = evaluate_at(6)
    assert reported == [(6, 0.7)] and not stopped and last.pruned_at is None and last.stop_reason is None
    earlier, stopped = evaluate_at(4)
    assert reported[-1] == (4, 0.7) and stopped and earlier.pruned_at == 4 and earlier.stop_reason == "pruned"


@pytest.mark.parametrize(
    ("early_stopped_at", "autopilot_stopped", "reason"),
    [(4, False, "early_stopped"), (None, True, "autopilot"), (None, False, "pruned")],
)
def test_a_run_that_ended_by_its_own_rule_is_not_recorded_pruned(early_stopped_at, autopilot_stopped, reason):
    """The pruner stopped the run at the evaluation where early stopping or the autopilot stopped it anyway: the run
    ended as its recipe says, and the sweep records the trial complete with its value, not pruned without one."""
    from types import SimpleNamespace

    from dpo.sweep.trial import OptunaTrialCallback
    from dpo.training.autopilot import STOP_REASON
    from dpo.training.execute import _stop_reason

    pruner = OptunaTrialCallback(SimpleNamespace(), "eval_loss")
    pruner.pruned_at = 4
    autopilot = SimpleNamespace(stop_reason=STOP_REASON if autopilot_stopped else None)
    assert _stop_reason(SimpleNamespace(stopped_at=early_stopped_at), autopilot, [pruner]) == reason
    assert _stop_reason(SimpleNamespace(stopped_at=early_stopped_at), None, [pruner]) == (
        "early_stopped" if early_stopped_at else "pruned"
    )


@pytest.mark.slow
def test_a_trial_pruned_where_early_stopping_stopped_it_keeps_its_value(tmp_path, tiny_recipe):
    """Patience 1 stops the run at step 1, where an always-prune pruner is asked too: the run says early_stopped,
    and its best_metrics hold the objective the sweep records."""
    from types import SimpleNamespace

    from dpo.sweep.driver import objective_value
    from dpo.sweep.trial import OptunaTrialCallback
    from dpo.training.execute import execute
    from tests.training.test_early_stopping import ScriptedMetric

    hopeless = SimpleNamespace(report=lambda value, step: None, should_prune=lambda: True)
    pruner = OptunaTrialCallback(hopeless, "eval_scripted")
    overrides = ["early_stopping.metric=eval_scripted", "early_stopping.mode=max", "early_stopping.patience=1",
                 "early_stopping.noise_sigmas=0", "training.max_steps=3", "training.eval_steps=1"]  # fmt: skip
    callbacks = [ScriptedMetric([5, 1, 1, 1]), pruner]
    summary, _ = execute(tiny_recipe, overrides, tmp_path / "run", callbacks, extra_metrics=("eval_scripted",))
    assert pruner.pruned_at == 1 and summary["steps"] == 1
    assert summary["stop_reason"] == "early_stopped" and objective_value(summary, "eval_scripted") == 5


@pytest.mark.slow
def test_pruning_stops_a_hopeless_trial(tmp_path, tiny_recipe):
    # trial 0 learns (eval_loss falls below log 2); trial 1 barely moves, so at its first evaluation it is worse
    # than the median of the finished trial at that step and is pruned
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, sampler="grid", seed=1, objective={"metric": "eval_loss"},
        pruner={"type": "median", "n_startup_trials": 1}, fixed={"training.max_steps": 6, "training.eval_steps": 2},
        search={"training.learning_rate": {"grid": [1.0e-2, 1.0e-9]}},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    proc = dpo("sweep", spec, "--output-dir", sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(sweep_dir)
    assert summary["objective"] == {"metric": "eval_loss", "direction": "minimize"}
    first, second = summary["trials"]  # the grid's order under seed 1: the learning trial first
    assert first["params"]["training.learning_rate"] == 1.0e-2
    assert first["state"] == "complete" and first["steps"] == 6
    assert second["state"] == "pruned" and second["steps"] == 2 and "median" in second["reason"]
    run_summary = json.loads((sweep_dir / second["run_dir"] / "summary.json").read_text())
    assert run_summary["stop_reason"] == "pruned" and run_summary["steps"] == 2
    assert summary["steps_total"] == 8 and summary["steps_saved_by_pruning"] == 4
    assert summary["best_trial"] == 0


@pytest.mark.slow
def test_sigkill_then_resume_runs_only_what_is_missing(tmp_path, tiny_recipe):
    betas = [0.05, 0.1, 0.2]
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, name="killed", sampler="grid", fixed=TINY_FIXED,
        search={"loss.beta": {"grid": betas}},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dpo", "sweep", str(spec), "--output-dir", str(sweep_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = sweep_dir / "trials" / "trial-0001" / "recipe.yaml"  # one trial done, the second started
    deadline = time.time() + 300
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert second.exists(), "the sweep never reached its second trial"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {n: (sweep_dir / "trials" / f"trial-000{n}" / "summary.json").stat().st_mtime_ns for n in (0,)}

    again = dpo("sweep", spec, "--output-dir", sweep_dir)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently appended to
    resumed = dpo("sweep", spec, "--output-dir", sweep_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    summary = summary_of(sweep_dir)
    states = {t["number"]: t for t in summary["trials"]}
    assert states[1]["state"] == "failed" and states[1]["reason"].startswith("interrupted")
    assert "retried as trial 2" in states[1]["reason"]
    assert json.loads((sweep_dir / "trials" / "trial-0001" / "trial.json").read_text())["state"] == "failed"
    finished = [t for t in summary["trials"] if t["state"] == "complete"]
    assert len(finished) == 3  # the total is right: 3 trials, each grid point once
    assert sorted(t["params"]["loss.beta"] for t in finished) == betas
    assert states[2]["params"] == states[1]["params"]  # the interrupted point ran again
    for n, mtime in done.items():  # finished trials were not re-run
        assert (sweep_dir / "trials" / f"trial-000{n}" / "summary.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == [f"trial-000{n}" for n in range(4)]


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_then_resume_runs_the_interrupted_trial_again(tmp_path, tiny_recipe):
    """Ctrl-C reaches the whole foreground process group, the sweep and its trial: optuna records the trial
    failed (not "running", as after SIGKILL); `--resume` still runs its parameters again, once."""
    betas = [0.05, 0.1, 0.2]
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, name="stopped", sampler="grid", fixed=TINY_FIXED,
        search={"loss.beta": {"grid": betas}},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dpo", "sweep", str(spec), "--output-dir", str(sweep_dir)]
    # a terminal's foreground job takes SIGINT's default action; pytest itself may have been started with `&` by a
    # non-interactive shell (a CI script), which makes SIGINT ignored, and an ignored signal stays ignored in children
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=default_sigint)  # fmt: skip
    second = sweep_dir / "trials" / "trial-0001" / "recipe.yaml"
    deadline = time.time() + 300
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert second.exists(), "the sweep never reached its second trial"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert proc.wait(timeout=120) != 0

    resumed = dpo("sweep", spec, "--output-dir", sweep_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(sweep_dir)
    states = {t["number"]: t for t in summary["trials"]}
    assert states[1]["state"] == "failed" and "interrupted" in states[1]["reason"]
    assert "retried as trial 2" in states[1]["reason"] and states[2]["params"] == states[1]["params"]
    finished = [t for t in summary["trials"] if t["state"] == "complete"]
    assert sorted(t["params"]["loss.beta"] for t in finished) == betas  # each grid point once, none lost
    again = dpo("sweep", spec, "--output-dir", sweep_dir, "--resume")  # nothing left: no trial runs twice
    assert again.returncode == 0 and len(summary_of(sweep_dir)["trials"]) == len(summary["trials"])


@pytest.mark.slow
def test_a_shared_sweep_restarted_after_its_machine_died_retries_the_stale_trial(tmp_path, tiny_recipe, monkeypatch):
    """A machine died mid-trial and the sweep is started again (--storage): the trial it left "running" stopped
    beating, so it is failed and its parameters run again, instead of counting as running for ever."""
    import optuna

    from dpo.sweep import storage
    from dpo.sweep.driver import run_sweep

    monkeypatch.setattr(storage, "GRACE_S", 1)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = write_spec(tmp_path / "shared.yaml", tiny_recipe, trials=1, search=SEARCH, fixed=TINY_FIXED)
    study = optuna.create_study(study_name="shared", storage=storage.open_storage(url, shared=True),
                                direction="maximize")  # fmt: skip
    dead = study.ask({"loss.beta": optuna.distributions.FloatDistribution(0.01, 1.0, log=True)})
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2)  # past the grace period: the machine is gone
    summary = run_sweep(spec, storage=url, output_dir=tmp_path / "machine-2", echo=lambda line: None)
    states = {t["number"]: t for t in summary["trials"]}
    assert states[0]["state"] == "failed" and "retried as trial 1" in states[0]["reason"]
    assert states[1]["state"] == "complete" and states[1]["params"] == states[0]["params"]


# --- one sweep, several processes, through PostgreSQL ----------------------------------------------------------

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (Debian's package) on a free port, run as the `postgres` user when we are root."""
    if PG_BIN is None or not (PG_BIN / "initdb").is_file():
        pytest.skip("PostgreSQL server binaries not installed (scripts/setup.sh installs Debian's postgresql)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="dpo-pg-", dir="/tmp"))  # pytest's tmp dirs are not readable by postgres
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, PG_BIN / "pg_ctl", "-D", data, "-o", options, "-l", root / "log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_postgres_sweep(tmp_path, tiny_recipe, postgres_url):
    import optuna

    spec = write_spec(
        tmp_path / "spec.yaml", tiny_recipe, name="shared", sampler="random", trials=3, fixed=TINY_FIXED,
        search={"loss.beta": {"log_uniform": [0.05, 0.5]}},
    )  # fmt: skip
    # two "machines": each its own sweep directory, one study in the database
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dpo", "sweep", str(spec), "--storage", postgres_url, "--output-dir", str(d)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for d in dirs
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    ran = [sorted(int(t.name.removeprefix("trial-")) for t in (d / "trials").iterdir()) for d in dirs]
    assert all(ran), f"both processes ran trials: {ran}"
    assert sorted(ran[0] + ran[1]) == [0, 1, 2]  # each trial ran once, in one of the two
    assert not any((d / "study.db").exists() for d in dirs)
    storage = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    study = optuna.load_study(study_name="shared", storage=storage)
    # both processes may ask for a trial once the budget is nearly used up: the one that finds it used up marks its
    # trial surplus (FAIL, never run, not counted); the sweep's own trials all completed
    counted = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3
    assert all(t.state.name == "FAIL" for t in study.trials if t.user_attrs.get("surplus"))
    last = max(dirs, key=lambda d: (d / "sweep_summary.json").stat().st_mtime_ns)
    assert [t["state"] for t in summary_of(last)["trials"]] == ["complete"] * 3


# --- the shipped sweeps ----------------------------------------------------------------------------------------

SHIPPED = sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweep_every_trial_recipe_validates(path):
    import itertools

    from dpo.training.gate import check

    spec = load_spec(path)
    grid = spec.grid_space()
    for combo in itertools.product(*grid.values()):
        check(spec.base_recipe, set_items(spec.overrides(dict(zip(grid, combo, strict=True)))))
    head = path.read_text().splitlines()[:8]
    assert head[0].startswith("# ") and any(f"dpo sweep recipes/sweeps/{path.name}" in line for line in head)


def test_shipped_sweeps_cover_beta_loss_and_controls():
    controls = load_spec(REPO / "recipes" / "sweeps" / "controls.yaml").grid_space()["control"]
    assert controls == ["plain", "cdpo", "ipo", "robust", "dpop", "early_stopping"]
    space = load_spec(REPO / "recipes" / "sweeps" / "beta-x-loss.yaml").grid_space()
    assert set(space) == {"loss.beta", "loss.type"}


@pytest.mark.slow
def test_a_trial_whose_storage_cannot_be_opened_is_a_one_line_error(tmp_path):
    """The trial process turns every user error into one `error:` line and exit 2, the storage's too (the sweep
    records that line as the trial's reason); nothing is written."""
    from dpo.sweep.trial import STORAGE_ENV

    run_dir = tmp_path / "trial"
    proc = subprocess.run(
        [sys.executable, "-m", "dpo.sweep.trial", "--study", "s", "--trial-id", "0", "--metric", "eval_loss",
         "--pruner", '{"type": "median"}', "--output-dir", str(run_dir), str(REPO / "recipes" / "quickstart.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, STORAGE_ENV: "bogus://nowhere"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --storage: cannot open the optuna storage") and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_the_sweep_driver_redacts_the_password_of_its_storage_url(tmp_path, monkeypatch, capsys):
    """`dpo sweep --storage URL` holds the URL on its command line, not in a variable: the driver puts it where
    the redaction looks (as its trials get it), so nothing it prints afterwards shows the password."""
    from dpo.sweep.driver import run_sweep
    from dpo.sweep.storage import STORAGE_ENV

    monkeypatch.setenv(STORAGE_ENV, "unset")  # so that monkeypatch removes what run_sweep sets
    url = "postgresql://alice:pw-0123456789@db-host/sweeps"
    with pytest.raises(UserError):
        run_sweep(tmp_path / "missing.yaml", storage=url)
    print(f"cannot reach {url}")
    assert capsys.readouterr().out == "cannot reach postgresql://alice:[redacted $DPO_SWEEP_STORAGE]@db-host/sweeps\n"
    # a password the redaction cannot see whole (SQLAlchemy reads past its '/') is refused, not used
    with pytest.raises(UserError, match="percent-encode") as refused:
        run_sweep(tmp_path / "missing.yaml", storage="postgresql://alice:pw/0123456789@db-host/sweeps")
    assert refused.value.where == "--storage" and "0123456789" not in str(refused.value)


# --- secrets in the spec's values ------------------------------------------------------------------------------

SWEEP_SECRET = "zq9SWEEPsecret4242"


def test_a_choice_holding_a_secret_is_recorded_redacted_and_trains_with_its_value(tmp_path, tiny_recipe, monkeypatch):
    """optuna records a categorical parameter's choices (its distribution; the grid sampler's space) in study.db or a
    database server: the secret there is redacted, and the trial still gets the value as written."""
    import optuna

    from dpo.sweep import driver

    monkeypatch.setenv("MY_API_KEY", SWEEP_SECRET)
    values = [f"/data/{SWEEP_SECRET}/a.jsonl", "/data/plain/b.jsonl"]
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid",
                                search={"data.train": {"choice": values}}))  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "trials").mkdir(parents=True)
    commands = []

    def trial_process(cmd, env, log_path, trial_dir, record) -> int:  # no training: what it was asked to train
        commands.append(cmd)
        log_path.write_text("trained\n")
        return 0

    monkeypatch.setattr(driver, "_run_trial_logging_redacted", trial_process)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, sampler=spec.build_sampler(), direction=spec.direction)
    study.optimize(lambda t: driver._objective(t, spec, sweep_dir, "sqlite://", 1, {}), n_trials=2,
                   catch=(driver.TrialFailed,))  # fmt: skip
    recorded = sorted(t.params["data.train"] for t in study.trials)
    assert recorded == ["/data/[redacted $MY_API_KEY]/a.jsonl", "/data/plain/b.jsonl"]
    assert SWEEP_SECRET not in repr([(t.distributions, t.system_attrs) for t in study.trials])
    trained = [arg.removeprefix("data.train=") for cmd in commands for arg in cmd if arg.startswith("data.train=")]
    assert sorted(trained) == sorted(json.dumps(v) for v in values)


def test_choices_that_redact_alike_are_recorded_apart_and_never_as_they_are(tmp_path, tiny_recipe, monkeypatch):
    """Two URLs whose passwords come from one variable redact to the same text: they were recorded as written (the
    passwords in study.db); now each is marked by its position, and `choose` still trains with the value as written,
    as does best.yaml made from the recorded parameters."""
    from types import SimpleNamespace

    from dpo.sweep.spec import choose, recorded_choices

    monkeypatch.setenv("DB_URLS", "postgresql://u:pass1longsecret@h1/db postgresql://u:pass2longsecret@h2/db")
    values = ["https://u:pass1longsecret@h/m", "https://u:pass2longsecret@h/m", "plain"]
    recorded = recorded_choices(values)
    assert recorded == ["https://u:[redacted $DB_URLS]@h/m #1", "https://u:[redacted $DB_URLS]@h/m #2", "plain"]
    drawn = SimpleNamespace(suggest_categorical=lambda name, shown: shown[1])
    assert choose(drawn, "data.train", values) == values[1]
    # a value that is written as another's marked text: positions alone, still distinct and redacted
    marked = recorded_choices([*values[:2], "https://u:[redacted $DB_URLS]@h/m #1"])
    assert marked == ["#1", "#2", "#3"]
    assert recorded_choices(["a", "b"]) == ["a", "b"]  # nothing to tell apart: as written
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, sampler="grid",
                                search={"data.train": {"choice": values}}))  # fmt: skip
    assert spec.trained_values({"data.train": recorded[1]}) == {"data.train": values[1]}


def test_the_study_records_the_spec_redacted_and_one_stored_before_still_resumes(tmp_path, tiny_recipe, monkeypatch):
    """The spec's fixed and search values are the study's `dpo_sweep` attribute (in study.db, or a database server):
    stored redacted, and compared redacted on both sides, so a sweep stored with its secrets (before this) is the same
    sweep, and one with another value is not."""
    import optuna

    from dpo.sweep import driver
    from dpo.sweep.storage import open_storage

    monkeypatch.setenv("MY_API_KEY", SWEEP_SECRET)
    fixed = {"data.eval": f"/data/{SWEEP_SECRET}/eval.jsonl"}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_recipe, trials=1, search=SEARCH, fixed=fixed))
    url = driver.sqlite_url(tmp_path / "study.db")
    driver._open_study(spec, url, shared=False)
    stored = optuna.load_study(study_name="spec", storage=open_storage(url)).user_attrs["dpo_sweep"]
    assert SWEEP_SECRET not in json.dumps(stored)
    assert stored["fixed"]["data.eval"] == "/data/[redacted $MY_API_KEY]/eval.jsonl"

    old = load_spec(write_spec(tmp_path / "old.yaml", tiny_recipe, trials=1, search=SEARCH, fixed=fixed))
    study = optuna.create_study(study_name="old", storage=open_storage(url))
    study.set_user_attr("dpo_sweep", json.loads(json.dumps(old.identity())))  # as earlier versions stored it
    driver._open_study(old, url, shared=False)  # the same sweep: raises nothing
    other = {"data.eval": "/data/other/eval.jsonl"}
    changed = load_spec(write_spec(tmp_path / "old.yaml", tiny_recipe, trials=1, search=SEARCH, fixed=other))
    with pytest.raises(UserError, match=r"fixed: differs from the sweep 'old' already in the storage"):
        driver._open_study(changed, url, shared=False)
