"""Sweeps: many `dpo train` runs over a search space, driven by optuna.

    python -m dpo sweep recipes/sweeps/beta-x-loss.yaml --workers 2
    python -m dpo sweep SPEC.yaml --storage postgresql://user@db-host/sweeps   # on several machines: one sweep

Each trial is a separate process (`python -m dpo.sweep.trial`, dpo/sweep/trial.py): `dpo train` of the base
recipe with the trial's overrides into SWEEP_DIR/trials/trial-NNNN, plus an optuna callback passed through
`execute(callbacks=...)`. A crash, a non-finite loss, an invalid combination or an error around the trial's
process (a fork refused, a full disk) fails that trial (with its reason), never the sweep. The trial reports its
held-out objective to optuna at every evaluation, so the pruner can stop hopeless trials early. A sweep none of
whose trials completed writes no best.yaml, and `dpo sweep` exits 3 (`nothing_completed`).

Sweep directory (shared with `dpo report`; keep the names):
    sweep.yaml          the spec as given (secrets redacted), plus base_recipe resolved to an absolute path
    study.db            optuna's SQLite storage (absent when --storage names another database)
    trials/trial-NNNN/  one run directory per trial, plus trial.json and train.log (the trial's output)
    sweep_summary.json  objective, sampler, pruner, every trial, best trial/value/params, importance, steps
    best.yaml           the best trial's resolved recipe: a plain recipe `dpo train` accepts

The objective value of a trial is the objective metric of the weights the run ends with: with early stopping
(the best checkpoint restored into final/) `best_metrics`, otherwise the last evaluation (`final_metrics`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dpo.config.yaml_loader import UNFOLDED, dump_yaml
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_json, atomic_write_text
from dpo.rundir.files import (
    BEST_RECIPE,
    RECIPE,
    STUDY_DB,
    SUMMARY,
    SWEEP_SPEC,
    SWEEP_SUMMARY,
    TRAIN_LOG,
    TRIAL,
    TRIAL_DIR,
    TRIALS,
    json_object_or_empty,
    kept_weights,
    read_metrics,
    read_text,
)
from dpo.rundir.lock import DirectoryLock
from dpo.rundir.secrets import (
    MIN_SECRET_LENGTH,
    RedactedCopy,
    redact,
    redact_data,
    redact_standard_streams,
    url_passwords,
)
from dpo.rundir.writable import check_output_dir
from dpo.sweep.spec import SEARCH_KINDS, SweepSpec, load_spec, set_items
from dpo.sweep.storage import STORAGE_ENV, open_storage
from dpo.sweep.trial import INTERRUPTED_EXIT, INTERRUPTED_MESSAGE

# how the driver's own lines in a trial's train.log start: they are not the trial's, so never its failure reason
LOG_NOTE = "note (dpo sweep):"
IN_USE = ("another `dpo sweep` is running on this directory (use --workers for parallel trials, "
          "or --storage with a database server for several processes)")  # fmt: skip


# A trial Ctrl-C stopped: optuna records it failed, this user attribute says `--resume` should run it again.
INTERRUPTED = "interrupted"
INTERRUPTED_EXIT_CODES = (INTERRUPTED_EXIT, -signal.SIGINT)  # the trial's exit on Ctrl-C; before its main ran


class TrialFailed(Exception):
    """A trial that ran and failed (or never started); optuna records it as FAIL and the sweep goes on."""


def run_sweep(
    spec_path: str | Path,
    workers: int = 1,
    storage: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    echo=print,
) -> dict:
    """Run (or join, or resume) a sweep; returns the summary (also in SWEEP_DIR/sweep_summary.json)."""
    import optuna

    from dpo.training.gate import check

    if storage is not None:  # its password is a secret here too (a database error echoing the URL), as in a trial
        _check_password_is_visible(storage)
        os.environ[STORAGE_ENV] = storage
        redact_standard_streams()
    spec = load_spec(spec_path)
    if workers < 1:
        raise UserError(f"must be at least 1 (got {workers})", where="--workers")
    sweep_dir = (Path(output_dir) if output_dir else Path("sweeps") / spec.name).resolve()
    url = storage or sqlite_url(sweep_dir / STUDY_DB)
    _check_sweep_dir(sweep_dir, external=storage is not None, resume=resume)
    # a broken base recipe fails here, not in every trial; its runs/<name> is no trial's directory: not checked
    checked = check(spec.base_recipe, set_items(spec.fixed), writes_run_dir=False)
    check_objective(spec, checked)
    group = _group(spec, checked.recipe)  # once: a base recipe edited mid-sweep fails its trials, not the sweep
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # with SQLite in the sweep directory, one `dpo sweep` process owns it (its --workers share the study)
    with DirectoryLock(sweep_dir, IN_USE) if storage is None else contextlib.nullcontext():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if resume and storage is None:
            _check_resumes_this_sweep(spec, url, sweep_dir)
        study = _open_study(spec, url, shared=storage is not None)
        (sweep_dir / TRIALS).mkdir(exist_ok=True)  # after the storage opened: a bad --storage leaves no trials/
        _write_spec(spec, sweep_dir)
        if storage is None:
            _retry_interrupted(study, sweep_dir)  # we hold the lock: any trial still "running" was killed
        else:  # a machine that died left its trials "running": failed and queued again before counting
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        counted = _counted(study)
        remaining = spec.trials - sum(t.state.is_finished() or t.state.name == "RUNNING" for t in counted)
        if remaining > 0:
            echo(f"sweep {spec.name}: {remaining} of {spec.trials} trials to run, {min(workers, remaining)} at a time")
            study.optimize(
                lambda trial: _objective(trial, spec, sweep_dir, url, workers, group),
                n_trials=remaining,
                n_jobs=min(workers, remaining),
                catch=(TrialFailed,),
                callbacks=[lambda s, t: _stop_when_done(s, spec.trials)],
            )
        summary = summarize(study, spec, sweep_dir)
        atomic_write_json(sweep_dir / SWEEP_SUMMARY, summary)  # first: the record stands if best.yaml cannot be made
        _write_best(summary, spec, sweep_dir, group)
    from dpo.analysis.report import write_report_or_warn

    write_report_or_warn(sweep_dir)  # the sweep's dashboard; `dpo report SWEEP_DIR` rebuilds it
    return summary


# Combinations of parameter values check_objective judges, at most: beyond it (about 4 ms each, a recipe loaded and
# checked), each parameter's values are judged with the others at their first value, which finds a value no trial
# can use, and whether the pruner acts is left to the trials (`every_combination_judged`).
MAX_CHECKED_COMBINATIONS = 1024


@dataclass(frozen=True)
class TrialConfig:
    """One combination of parameter values the trials may train with, checked as the gate checks a recipe."""

    which: str  # how an error names the trials: " where loss.type is 'simpo'", " of variant search.c.orpo"
    recipe: Any
    plan: Any
    dpo_config: Any
    train_pairs: int | None  # None: the combination changes the data, counted when a trial reads them


def check_objective(spec: SweepSpec, checked) -> None:
    """The objective must be logged by every trial, and the pruner must have evaluations to act on, before any trial
    trains: otherwise each trial trains to its end and then fails ("objective ... is missing"), or the pruner never
    prunes. `checked`: the base recipe with the fixed keys (dpo/training/gate.py's CheckedRecipe). Judged on what the
    trials train, `trial_configs`: every parameter sets its keys in every trial, so the base recipe's own values of
    those keys are trained by none."""
    from dpo.training.arguments import last_evaluation_before_the_end, no_evaluation_during_training

    configs = trial_configs(spec, checked)
    if not configs:
        return  # the recipe checks refuse every combination: each trial fails with its own reason
    every = every_combination_judged(spec)
    failing = [(c, problem) for c in configs if (problem := _unlogged_objective(c, spec.metric))]
    if failing:  # one judged combination suffices: the trials that draw it would fail
        config, problem = failing[0]
        all_fail = every and len(failing) == len(configs)
        which = "" if all_fail else config.which  # all of them: the base recipe or fixed keys
        raise UserError(
            f"{spec.metric} is never logged in the trials{which}: {problem}; each of them would train to its end and "
            "fail without it",
            where=spec.where("objective.metric"),
        )
    _check_objective_comparable(spec, configs)
    if spec.pruner == "none" or not every:
        return  # only some combinations judged: those not judged may evaluate late enough, so the trials decide
    # Refused, not warned: a pruner that never prunes is a knob that does nothing (a trial is never pruned at its
    # last evaluation, dpo/sweep/trial.py), and the project makes those errors.
    reasons = [no_evaluation_during_training(c.dpo_config, c.train_pairs) for c in configs]
    if all(reasons):
        raise UserError(
            f"has no effect: the trials have no evaluation before their last step ({reasons[0]}), and a trial is never "
            "pruned at its last; use pruner: none, or evaluate during training (training.eval_steps)",
            where=spec.where("pruner"),
        )
    warmup = spec.pruner_kwargs.get("n_warmup_steps", 0) if spec.pruner == "median" else 0
    lasts = [last_evaluation_before_the_end(c.dpo_config, c.train_pairs) for c in configs]
    if warmup and None not in lasts and max(lasts) < warmup:  # None: a trial's length needs its data
        raise UserError(
            f"has no effect: the median pruner prunes from step {warmup} on, and the trials' last evaluation before "
            f"their last step is at step {max(lasts)} (a trial is never pruned at its last); lower it to "
            f"{max(lasts)} or less, or use pruner: none",
            where=spec.where("pruner.n_warmup_steps"),
        )


def _check_objective_comparable(spec: SweepSpec, configs: list[TrialConfig]) -> None:
    """The objective must rank trials by their models, not by a setting that changes what the metric measures: a
    metric that beta multiplies (a reward, a margin, the loss: the metric table's scales_with_beta) across trials
    that train at different betas or move beta differently (a schedule; beta-DPO moves it with each trial's own
    batches), and the held-out loss across trials that train different losses (loss type, its hyperparameters, a
    regulariser's term), would call the trial with the largest beta, or the smallest loss scale, best. Refused,
    naming what differs."""
    from dpo.metrics import lookup
    from dpo.training.beta import BETA_SCHEDULES

    watched = lookup(spec.metric)
    if watched is None or not configs:
        return
    advice = "use a metric neither changes, such as eval_rewards/accuracies or eval_logps/accuracies"
    if watched.scales_with_beta:
        adaptive = [c for c in configs if BETA_SCHEDULES[c.plan.beta_schedule["kind"]].adaptive]
        if adaptive:
            raise UserError(
                f"{spec.metric} is scaled by beta, and beta-DPO (loss.beta_schedule adaptive) moves the beta of the "
                f"trials{'' if len(adaptive) == len(configs) else adaptive[0].which} with their own batches: their "
                f"values are not comparable; {advice}",
                where=spec.where("objective.metric"),
            )
        betas = list(dict.fromkeys(_beta_described(c.plan) for c in configs))
        if len(betas) > 1:
            raise UserError(
                f"{spec.metric} is scaled by beta, and the trials train at different betas ({', '.join(betas)}): their "
                f"values are not comparable, so the best trial would be chosen by its beta; {advice}, or give every "
                "trial the same beta",
                where=spec.where("objective.metric"),
            )
    if watched.name in ("loss", "gap/loss"):
        losses = list(dict.fromkeys(_loss_described(c.plan) for c in configs))
        if len(losses) > 1:
            raise UserError(
                f"{spec.metric} is each trial's own loss, and the trials train different losses ({'; '.join(losses)}): "
                f"their values are not comparable, so the best trial would be chosen by its loss's scale; {advice}",
                where=spec.where("objective.metric"),
            )


def _beta_described(plan) -> str:
    """A trial's beta as the objective check names it: `0.1`, or `0.1 linear end 0.5` where a schedule moves it."""
    keys = {key: value for key, value in plan.beta_schedule.items() if key != "kind" and value is not None}
    moving = f" {plan.beta_schedule['kind']}" + "".join(f" {k} {v}" for k, v in keys.items())
    return f"{plan.beta:g}" + ("" if plan.beta_schedule["kind"] == "constant" else moving)


def _loss_described(plan) -> str:
    """A trial's loss as the objective check names it: its terms with their weights and the hyperparameters."""
    from dpo.training.losses import PLAIN_DPO_LINK

    terms = " + ".join(name if weight == 1 else f"{weight:g} {name}" for name, weight in plan.terms)
    settings = [f"{key} {value}" for key, value in sorted(plan.hyperparameters.items())]
    if plan.f_divergence != PLAIN_DPO_LINK:
        settings.append(f"f_divergence {plan.f_divergence}")
    return terms + (f" ({', '.join(settings)})" if settings else "")


def _unlogged_objective(config: TrialConfig, metric: str) -> str | None:
    """Why these trials never log `metric`, or None. Under eval_strategy 'no' nothing is logged after step 0; under
    any other strategy the last step is evaluated, and the metric table says what it needs."""
    from dpo.training.arguments import no_evaluation_during_training
    from dpo.training.gate import unlogged_metric

    if config.dpo_config.eval_strategy == "no":
        return f"{no_evaluation_during_training(config.dpo_config, config.train_pairs)}: no evaluation after step 0"
    return unlogged_metric(config.recipe, config.plan, config.dpo_config, metric)


def checked_values(param) -> list:
    """The values of a search parameter the checks judge: every value a grid, choice or variants parameter lists (as
    written: a variants parameter's names), every value of an integer range, and both ends of a float range.

    The ends of a range do not suffice: the steps a run evaluates at are not monotone in what sets them. With an
    eval_delay of 3 in a run of 4 steps, eval_steps 2 and 4 evaluate only at the last step and eval_steps 3 at step 3
    (a range [2, 4] judged by its ends refused a pruner that acts on every trial drawing 3); the last evaluation
    before the end, which a median pruner's n_warmup_steps is judged by, falls from step 9 to step 8 as max_steps goes
    from 10 to 11 with eval_steps 0.3. So an integer range is judged at each of its values, up to
    MAX_CHECKED_COMBINATIONS of them (beyond that, as a float range, by its ends, and whether the pruner acts left to
    the trials). A float range is judged by its ends: the values between them are not countable here (a fraction of
    the run counts in whole steps only once each trial's length is known)."""
    if SEARCH_KINDS[param.kind].listed:
        return list(param.args)
    low, high = param.args[0], param.args[1]
    if param.kind == "int":
        step = param.args[2] if len(param.args) == 3 else 1
        if _int_range_size(param.args) <= MAX_CHECKED_COMBINATIONS:
            return SEARCH_KINDS["int"].grid(param.args)
        high = low + (high - low) // step * step  # the highest value the step reaches
    return [low, high]


def every_combination_judged(spec: SweepSpec) -> bool:
    """Whether `_combinations` judges every combination of the parameters' values: no integer range cut to its ends
    and no more than MAX_CHECKED_COMBINATIONS of them. Only then may check_objective refuse a pruner for what every
    trial lacks (a float range counts as judged by its ends, `checked_values`)."""
    cut = any(p.kind == "int" and _int_range_size(p.args) > MAX_CHECKED_COMBINATIONS for p in spec.params)
    return not cut and math.prod(len(checked_values(p)) for p in spec.params) <= MAX_CHECKED_COMBINATIONS


def _int_range_size(args) -> int:
    """How many values an integer range [low, high] or [low, high, step] holds, high included when the step reaches
    it."""
    low, high = args[0], args[1]
    step = args[2] if len(args) == 3 else 1
    return (high - low) // step + 1


def _combinations(spec: SweepSpec) -> list[tuple]:
    """The combinations of `checked_values` to judge, each a tuple of (parameter, value): all of them, or beyond
    MAX_CHECKED_COMBINATIONS each parameter's values with the other parameters at their first value."""
    values = [[(p, v) for v in checked_values(p)] for p in spec.params]
    if math.prod(map(len, values)) <= MAX_CHECKED_COMBINATIONS:
        return list(itertools.product(*values))
    first = [options[0] for options in values]
    others = [tuple(first[:i] + [pair] + first[i + 1 :]) for i, options in enumerate(values) for pair in options[1:]]
    return [tuple(first), *others]


def trial_configs(spec: SweepSpec, checked) -> list[TrialConfig]:
    """What the trials train: the base recipe with the fixed keys and one combination of parameter values
    (`_combinations`), checked by the gate's settings checks. A combination the recipe checks refuse is left out:
    its trials fail with that reason (the schema's part of each listed value is checked when the spec loads)."""
    from dpo.config.loading import load_recipe
    from dpo.errors import Problems
    from dpo.training.gate import check_settings

    configs = []
    for combination in _combinations(spec):
        overrides = {key: value for p, v in combination for key, value in p.overrides(v).items()}
        try:
            loaded = load_recipe(spec.base_recipe, trial_overrides(spec, {p.name: v for p, v in combination}))
        except UserError:
            continue
        plan, dpo_config = check_settings(loaded, checked.run_dir, Problems())
        if plan is None or dpo_config is None:
            continue
        variants = "".join(f" of variant search.{p.name}.{v}" for p, v in combination if p.kind == "variants")
        values = " and ".join(f"{p.name} is {v!r}" for p, v in combination if p.kind != "variants")
        data_changed = any(key.startswith("data") for key in overrides)  # the pairs are counted with the data
        configs.append(
            TrialConfig(
                variants + (f" where {values}" if values else ""),
                loaded.recipe,
                plan,
                dpo_config,
                None if data_changed else len(checked.data.train),
            )
        )
    return configs


def _check_sweep_dir(sweep_dir: Path, external: bool, resume: bool) -> None:
    check_output_dir(sweep_dir)  # the same check, and words, as every command that writes a directory
    has_study = (sweep_dir / STUDY_DB).is_file()
    if external:
        return  # several processes (machines) join one sweep through the database: an existing dir is expected
    if resume and not has_study:
        raise UserError(f"nothing to resume: no {STUDY_DB} here", where=str(sweep_dir))
    if not resume and has_study:
        raise UserError("already holds a sweep; add --resume to continue it, or choose another --output-dir",
                        where=str(sweep_dir))  # fmt: skip
    if not resume and sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise UserError("sweep directory is not empty; choose another --output-dir", where=str(sweep_dir))


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file: the path percent-encoded, so that a '?' or '%' in a sweep's name or
    folder is part of the file name, not a query or an escape."""
    return f"sqlite:///{quote(str(path))}"


def _check_resumes_this_sweep(spec: SweepSpec, url: str, sweep_dir: Path) -> None:
    """A resume with a spec whose name the study database does not hold (the spec renamed, or its `name:` edited)
    would start a second study there, numbering its trials from 0 again into the same trials/ folder."""
    import optuna

    stored = optuna.get_all_study_names(storage=open_storage(url))
    if stored and spec.name not in stored:
        raise UserError(
            f"holds the sweep '{stored[0]}', not '{spec.name}': resume it with its own name (`name: {stored[0]}` in "
            "the spec)",
            where=str(sweep_dir),
        )


def _check_password_is_visible(url: str) -> None:
    """SQLAlchemy reads a password up to the first '@', so it accepts a '/', '?', '#' or space the redaction does
    not look past (`URL_CREDENTIALS`): such a URL is refused rather than printed with its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return  # not a URL SQLAlchemy can read: open_storage says so
    if password and len(password) >= MIN_SECRET_LENGTH and not any(password in v for v in url_passwords(url)):
        raise UserError(
            "the database password holds a '/', '?', '#' or a space: percent-encode it (%2F, %3F, %23, %20) so that"
            " it can be kept out of logs",
            where="--storage",
        )


def _open_study(spec: SweepSpec, url: str, shared: bool):
    import optuna

    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(url, shared=shared),
        sampler=spec.build_sampler(),
        pruner=spec.build_pruner(),
        direction=spec.direction,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("dpo_sweep")
    # as the storage gives it back (JSON), secrets redacted: the storage is study.db or a database server; compared
    # redacted on both sides (a sweep stored before this kept them as they were)
    identity = redact_data(json.loads(json.dumps(spec.identity())))
    if stored is None:
        study.set_user_attr("dpo_sweep", identity)
        return study
    stored = redact_data(stored)
    differing = [k for k in identity if k in stored and stored[k] != identity[k]]  # older sweeps: fewer keys
    if differing:
        key = differing[0]
        raise UserError(
            f"differs from the sweep '{spec.name}' already in the storage ({stored[key]!r} there); "
            "use another name: for another sweep",
            where=spec.where(IDENTITY_SPEC_KEYS.get(key, key)),
        )
    return study


# identity() keys that are not spec keys: the spec key that holds them
IDENTITY_SPEC_KEYS = {"sampler_options": "sampler", "pruner_options": "pruner"}


def _write_spec(spec: SweepSpec, sweep_dir: Path) -> None:
    """sweep.yaml: the spec as given, secrets redacted in the data (redacting the text would miss one YAML escaped)."""
    text = dump_yaml(redact_data({**spec.raw, "base_recipe": str(spec.base_recipe)}), sort_keys=False, width=UNFOLDED)
    target = sweep_dir / SWEEP_SPEC
    if read_text(target) != text:
        atomic_write_text(target, text)


# --- which trials count --------------------------------------------------------------------------------------


def _retried(trials) -> set[int]:
    """Trials that were interrupted and queued again (optuna's retry records the original numbers)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _counted(study) -> list:
    """The trials that count towards `trials`: all but interrupted-and-retried ones and surplus ones."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return [t for t in trials if t.number not in retried and not t.user_attrs.get("surplus")]


def _stop_when_done(study, budget: int) -> None:
    done = sum(t.state.is_finished() or t.state.name == "RUNNING" for t in _counted(study))
    if done >= budget:
        study.stop()


def _retry_interrupted(study, sweep_dir: Path) -> None:
    """Trials left "running" by a killed sweep, and those Ctrl-C stopped (optuna records them failed; we mark them
    INTERRUPTED): failed, and their parameters queued to run first, each once."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False, states=(states.RUNNING, states.FAIL))
    retried = _retried(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
        for t in trials:
            if t.state == states.FAIL and (not t.user_attrs.get(INTERRUPTED) or t.number in retried):
                continue  # failed on its own, or already queued again
            if t.state == states.RUNNING:
                study._storage.set_trial_state_values(t._trial_id, state=states.FAIL)
            retry(study, study._storage.get_trial(t._trial_id))
            name = TRIAL_DIR.format(number=t.number)
            log = sweep_dir / TRIALS / f".{name}.log"
            if log.is_file():  # what the killed trial printed goes where a finished trial's output goes
                (sweep_dir / TRIALS / name).mkdir(exist_ok=True)
                os.replace(log, sweep_dir / TRIALS / name / TRAIN_LOG)


# --- one trial -----------------------------------------------------------------------------------------------


def _objective(trial, spec: SweepSpec, sweep_dir: Path, url: str, workers: int, group: dict) -> float:
    """One trial; a Ctrl-C anywhere in it (the sampler drawing its parameters, the trial's process, reading what that
    wrote) marks it INTERRUPTED, so that `--resume` runs its parameters again: optuna alone would record it failed,
    and a failed trial is never rerun (a grid point would be lost)."""
    try:
        return _run_trial(trial, spec, sweep_dir, url, workers, group)
    except KeyboardInterrupt:
        trial.set_user_attr(INTERRUPTED, True)
        raise
    except (OSError, UserError) as exc:
        # what went wrong around the trial, not in it (fork refused: EAGAIN, ENOMEM, EMFILE; a full disk writing
        # trial.json): that trial fails with the reason, and the sweep goes on to its summary ("never the sweep")
        reason = redact(f"could not run the trial: {exc}")  # a path in it may hold a secret: study.db keeps it
        trial.set_user_attr("reason", reason)
        _keep_log(sweep_dir, TRIAL_DIR.format(number=trial.number))
        raise TrialFailed(reason) from exc


def _run_trial(trial, spec: SweepSpec, sweep_dir: Path, url: str, workers: int, group: dict) -> float:
    import optuna

    name = TRIAL_DIR.format(number=trial.number)
    # a retried trial starts with a copy of the attributes of the trial it repeats: its own, from here on
    own = ((INTERRUPTED, False), ("reason", None), ("run_dir", f"{TRIALS}/{name}"), ("steps", 0), ("max_steps", None))
    for key, value in own:
        trial.set_user_attr(key, value)
    earlier = [t for t in _counted(trial.study) if t.number < trial.number]
    if len(earlier) >= spec.trials:  # another process took the last slot first
        trial.set_user_attr("surplus", True)
        raise TrialFailed("surplus: the sweep already has its trials")
    params = {p.name: SEARCH_KINDS[p.kind].suggest(trial, p.name, p.args) for p in spec.params}
    trial_dir = sweep_dir / TRIALS / name
    if trial_dir.exists():  # another sweep's trial of that number (an --output-dir shared by two sweeps)
        trial.set_user_attr("reason", f"{TRIALS}/{name} already exists; it is not overwritten")
        raise TrialFailed(f"{TRIALS}/{name} already exists")
    rel = f"{TRIALS}/{name}"
    fixed, searched = _layers(spec, params)
    pruner = json.dumps({"type": spec.pruner, **spec.pruner_kwargs})
    cmd = [sys.executable, "-m", "dpo.sweep.trial", "--study", spec.name, "--trial-id", str(trial._trial_id),
           "--metric", spec.metric, "--pruner", pruner, "--parent-pid", str(os.getpid()), str(spec.base_recipe),
           *[arg for item in set_items(fixed) for arg in ("--fixed", item)],
           *_override_args({**searched, "name": f"{spec.name}-{name}", **group}),
           "--output-dir", str(trial_dir)]  # fmt: skip
    env = _trial_env(spec, url, workers)
    record = {"number": trial.number, "state": "running", "params": params, "value": None, "reason": None,
              "steps": 0, "run_dir": rel}  # fmt: skip
    log_tmp = sweep_dir / TRIALS / f".{name}.log"
    returncode = _run_trial_logging_redacted(cmd, env, log_tmp, trial_dir, record)
    trial_dir.mkdir(parents=True, exist_ok=True)  # a trial rejected by `dpo train` never made its directory
    os.replace(log_tmp, trial_dir / TRAIN_LOG)
    summary = json_object_or_empty(trial_dir / SUMMARY)  # {} for a trial that wrote none
    record["steps"] = summary.get("steps") if summary else _steps_from_metrics(trial_dir)
    record["max_steps"] = (summary or {}).get("max_steps")

    def finish(state: str, reason: str | None = None, value: float | None = None):
        record.update(state=state, reason=reason, value=value)
        for key in ("reason", "steps", "max_steps", "run_dir"):
            trial.set_user_attr(key, record[key])
        atomic_write_json(trial_dir / TRIAL, record)

    stop = (summary or {}).get("stop_reason")
    if returncode in INTERRUPTED_EXIT_CODES:  # Ctrl-C reached the trial (its process group) in a worker thread
        trial.set_user_attr(INTERRUPTED, True)
        finish("failed", INTERRUPTED_MESSAGE)
        raise TrialFailed(INTERRUPTED_MESSAGE)
    if returncode != 0 or stop == "non_finite":
        reason = (summary or {}).get("error") or _failure_line(trial_dir / TRAIN_LOG, returncode, stop)
        finish("failed", reason)
        raise TrialFailed(reason)
    if stop == "pruned":
        reason = f"pruned by the {spec.pruner} pruner at step {record['steps']} ({spec.metric})"
        finish("pruned", reason)
        raise optuna.TrialPruned(reason)
    value = objective_value(summary, spec.metric)
    if value is None or not math.isfinite(value):
        reason = f"objective {spec.metric} is {'missing' if value is None else value} in summary.json"
        finish("failed", reason)
        raise TrialFailed(reason)
    finish("complete", value=value)
    return value


def _keep_log(sweep_dir: Path, name: str) -> None:
    """A trial that failed around its process: what it printed, if anything, goes where a trial's output goes."""
    log = sweep_dir / TRIALS / f".{name}.log"
    with contextlib.suppress(OSError):  # the disk that failed the trial may fail this too: the reason is recorded
        if log.is_file():
            (sweep_dir / TRIALS / name).mkdir(exist_ok=True)
            os.replace(log, sweep_dir / TRIALS / name / TRAIN_LOG)


def _group(spec: SweepSpec, base) -> dict:
    """logging.wandb_group = the sweep's name when the trials log to wandb (the key is an error without wandb);
    WANDB_RUN_GROUP in the trial's environment groups the runs either way. `base`: the base recipe with the fixed
    keys, as the sweep checked it when it started."""
    return {"logging.wandb_group": spec.name} if base.logging.wandb else {}


def objective_value(summary: dict, metric: str) -> float | None:
    """The objective for the weights the run ends with (the restored best checkpoint under early stopping)."""
    value = kept_weights(summary)[1].get(metric)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return math.nan  # "nan" / "inf" written as strings


def _layers(spec: SweepSpec, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's overrides (`spec.overrides(params)`) as two layers: the fixed keys no parameter overrides, and the
    parameters' values. The trial applies the first as SWEEP_FIXED_SOURCE (dpo/config/loading.py), so a searched
    key is judged as overriding a fixed one, not as written beside it."""
    merged = spec.overrides(params)
    searched = [key for p in spec.params if p.name in params for key in p.overrides(params[p.name])]
    fixed = {key: value for key, value in merged.items() if key not in searched}
    return fixed, {key: merged[key] for key in dict.fromkeys(searched)}


def trial_overrides(spec: SweepSpec, params: dict[str, Any]) -> list[str]:
    """The override items a trial loads its recipe with, in the layers the trial process gets them in."""
    from dpo.config.loading import SWEEP_FIXED_SOURCE, Override

    fixed, searched = _layers(spec, params)
    return [Override(item, SWEEP_FIXED_SOURCE) for item in set_items(fixed)] + set_items(searched)


def _override_args(overrides: dict[str, Any]) -> list[str]:
    return [arg for item in set_items(overrides) for arg in ("--set", item)]


def _trial_env(spec: SweepSpec, url: str, workers: int) -> dict[str, str]:
    env = dict(os.environ)
    # the storage URL may hold a database password: passed in the environment, not on a command line others can read
    env[STORAGE_ENV] = url
    env["WANDB_RUN_GROUP"] = spec.name  # wandb groups the trials' runs by sweep
    # parallel trials share the cores instead of each starting one thread per core
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def _run_trial_logging_redacted(cmd: list[str], env: dict[str, str], log_path: Path, trial_dir: Path,
                                record: dict) -> int:  # fmt: skip
    """Run the trial and return its exit code; its output (stdout and stderr) is read through a pipe and redacted
    into `log_path`, so that what it writes straight to its file descriptors (C extensions, os.write, a fatal error)
    never reaches the file with a secret in it, as it would if the file were the trial's stdout. A log that could not
    be written whole is said in record["log_error"] (trial.json)."""
    log = log_path.open("w", encoding="utf-8")
    proc = copy = None
    try:  # Popen inside: a fork refused (EAGAIN, ENOMEM, EMFILE) still closes the log
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        copy = RedactedCopy(proc.stdout, log, env)
        _wait_writing_running(proc, trial_dir, record)
    finally:
        failing = proc is None or proc.poll() is None  # we are failing (Ctrl-C, a full disk): nobody would record it
        if proc is not None and failing:
            proc.kill()
            proc.wait()
        pipe_closed = copy.finish(linger_s=1.0 if failing else 30.0) if copy else False
        error = copy.error if copy else None
        if error is None and not pipe_closed and not failing:
            with contextlib.suppress(OSError):  # on a line of its own: the trial's last line may lack its newline
                log.write(
                    f"\n{LOG_NOTE} a process the trial left running held its output open; later output not kept\n"
                )
        try:
            log.close()
        except OSError as exc:  # a full disk: what the file buffered could not be written either
            error = error or exc
        if error is not None:
            record["log_error"] = f"train.log is incomplete: {error}"
    return proc.returncode


def _wait_writing_running(proc, trial_dir: Path, record: dict) -> None:
    """Wait for the trial; once `dpo train` has claimed its directory, mark it running (trial.json)."""
    written = False
    while True:
        try:
            proc.wait(timeout=1.0)
            return
        except subprocess.TimeoutExpired:
            pass
        if not written and (trial_dir / RECIPE).is_file():
            atomic_write_json(trial_dir / TRIAL, record)
            written = True


def _failure_line(log: Path, returncode: int, stop: str | None) -> str:
    """The trial's own `error:` line, else the last line of its output (a traceback's exception)."""
    lines = [ln.strip() for ln in read_text(log).splitlines() if ln.strip() and not ln.startswith(LOG_NOTE)]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    if stop:
        return f"stop reason {stop}"
    return f"exit code {returncode}: {lines[-1] if lines else 'no output'}"


def _steps_from_metrics(run_dir: Path) -> int:
    """The last training step a trial logged (for a trial that ended without a summary.json)."""
    try:
        events = read_metrics(run_dir)
    except UserError:  # a damaged metrics file of one trial must not stop the sweep: that trial's count is unknown
        return 0
    return max((e.get("step", 0) for e in events if "loss" in e), default=0)


# --- the end: summary, best recipe ---------------------------------------------------------------------------

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def summarize(study, spec: SweepSpec, sweep_dir: Path) -> dict:
    trials = study.get_trials(deepcopy=False)
    retried = {n: t.number for t in trials for n in t.system_attrs.get("retry_history", [])}
    rows = []
    for t in trials:
        if t.user_attrs.get("surplus") or t.state.name not in STATES:
            continue  # surplus trials never ran; WAITING ones (queued retries) have not started
        name = TRIAL_DIR.format(number=t.number)
        record = {
            "number": t.number,
            "state": STATES[t.state.name],
            "params": dict(t.params),
            "value": t.value if t.state.name == "COMPLETE" else None,
            "reason": t.user_attrs.get("reason"),
            "steps": t.user_attrs.get("steps"),
            "run_dir": t.user_attrs.get("run_dir", f"{TRIALS}/{name}"),
            "max_steps": t.user_attrs.get("max_steps"),
        }
        if t.state.name == "FAIL" and (record["reason"] is None or t.user_attrs.get(INTERRUPTED)):
            again = retried.get(t.number)  # its process died with the sweep, or Ctrl-C stopped it
            record["reason"] = (record["reason"] or "interrupted: the sweep process stopped") + (
                f"; retried as trial {again}" if again is not None else ""
            )
            record["steps"] = _steps_from_metrics(sweep_dir / record["run_dir"])
            if (sweep_dir / record["run_dir"]).is_dir():
                atomic_write_json(sweep_dir / record["run_dir"] / TRIAL, {k: v for k, v in record.items()})
        rows.append(record)
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    if complete:
        pick = max if spec.direction == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
    steps = [r["steps"] or 0 for r in rows]
    saved = sum((r["max_steps"] or 0) - (r["steps"] or 0) for r in rows if r["state"] == "pruned")
    return {
        "name": spec.name,
        "objective": {"metric": spec.metric, "direction": spec.direction},
        "sampler": spec.sampler,
        "pruner": spec.pruner,
        "trials": rows,
        "best_trial": best["number"] if best else None,
        "best_value": best["value"] if best else None,
        "best_params": best["params"] if best else {},
        "importance": _importance(study, len(complete)),
        "steps_total": sum(steps),
        "steps_saved_by_pruning": max(0, saved),
        "base_recipe": str(spec.base_recipe),
        "sweep_dir": str(sweep_dir),
    }


def nothing_completed(summary: dict) -> str | None:
    """Why the sweep produced nothing, or None: no trial completed (each failed or was pruned), so there is no best
    trial and no best.yaml. `dpo sweep` then exits 3, as a run that started but could not finish, so that a script's
    next step (`dpo train SWEEP_DIR/best.yaml`) does not fail later on a missing file. A trial still running (on
    another machine sharing --storage) may yet complete: None."""
    trials = summary["trials"]
    if summary["best_trial"] is not None or any(t["state"] == "running" for t in trials):
        return None
    counts = {state: sum(t["state"] == state for t in trials) for state in ("failed", "pruned")}
    shown = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none ran"
    failed = [t["reason"] or "no reason recorded" for t in trials if t["state"] == "failed"]
    if failed:
        reason, times = max(collections.Counter(failed).items(), key=lambda item: item[1])
        why = f"the most common failure ({times} of {len(failed)}): {reason}"
    elif counts["pruned"]:
        why = f"every trial was pruned by the {summary['pruner']} pruner"
    else:
        why = "the sweep has no trials"
    return f"{summary['sweep_dir']}: no trial completed ({shown}), so there is no best.yaml; {why}"


def _importance(study, n_complete: int) -> dict:
    """optuna's parameter importances where it can compute them (two or more finished trials that differ)."""
    import optuna

    values = {t.value for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    if n_complete < 2 or len(values) < 2:
        return {}  # with one objective value there is nothing to attribute
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def _write_best(summary: dict, spec: SweepSpec, sweep_dir: Path, group: dict) -> None:
    """best.yaml: the best trial's resolved recipe (its run directory's recipe.yaml), renamed."""
    from dpo.config.loading import load_recipe

    if summary["best_trial"] is None:
        return
    best = next(t for t in summary["trials"] if t["number"] == summary["best_trial"])
    trained = sweep_dir / best["run_dir"] / RECIPE
    recipe = None
    if trained.is_file():  # what the best trial trained, even if the base recipe was edited since
        with contextlib.suppress(UserError):  # a recipe.yaml edited by hand since: the base recipe, as below
            recipe = load_recipe(trained, set_items({"name": f"{spec.name}-best"})).recipe
    if recipe is None:  # its run directory is on another machine (--storage): the base recipe with its parameters
        print(
            f"note: best.yaml is the base recipe with trial {summary['best_trial']}'s parameters ({trained} is not "
            "readable here)",
            file=sys.stderr,
        )
        params = spec.trained_values(summary["best_params"])
        overrides = {**spec.overrides(params), "name": f"{spec.name}-best", **group}
        recipe = load_recipe(spec.base_recipe, set_items(overrides)).recipe
    header = (
        f"# Best trial {summary['best_trial']} of sweep {spec.name}: {spec.metric} = {summary['best_value']:.6g}\n"
        f"#   python -m dpo train {sweep_dir / BEST_RECIPE}\n"
    )
    atomic_write_text(sweep_dir / BEST_RECIPE, redact(header) + recipe.to_yaml(redact=redact_data))
