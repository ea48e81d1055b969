"""Sweep specs: YAML file -> validated `SweepSpec` (base recipe, search space, sampler, pruner, objective).

    recipe: ../plain.yaml                         # base recipe, relative to this file
    objective: {metric: eval_rewards/accuracies, direction: maximize}
    sampler: tpe                                  # grid | random | tpe, or {type: tpe, n_startup_trials: 4}
    trials: 16
    pruner: median                                # none | median | hyperband, or {type: median, n_warmup_steps: 10}
    fixed: {training.max_steps: 20}               # overrides applied to every trial
    search:
      loss.beta: {log_uniform: [0.01, 1.0]}
      loss.type: {choice: [sigmoid, ipo]}
      training.learning_rate: {grid: [1.0e-5, 5.0e-5]}
      control: {variants: {plain: {}, cdpo: {loss.label_smoothing: 0.1}}}   # named bundles of overrides

Each name set (search kinds, samplers, pruners) lives in one table below; docs and errors come from them.
Every error is a `UserError` naming the spec file and the key. A recipe key is set in one place (`fixed`, one search
parameter, or the variants of one `variants` parameter), never overridden by another. Whether a sampled
*combination* is valid is decided by running the trial (`dpo train` checks it and exits 2), so an invalid
combination fails that trial alone.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo.config.shipped import resolve_recipe_path
from dpo.config.signatures import checked_value, parameter_annotations
from dpo.config.yaml_loader import read_yaml_mapping
from dpo.errors import UserError, UserErrors, did_you_mean
from dpo.rundir.secrets import redact, redact_data, secret_in

SCALAR = (str, int, float, bool, type(None))


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_values(args, numbers: bool) -> str | None:
    if not isinstance(args, list) or not args:
        return "needs a non-empty list of values"
    wrong = [v for v in args if not (_is_number(v) if numbers else isinstance(v, SCALAR))]
    if wrong:
        return f"{wrong[0]!r} is not a {'number' if numbers else 'plain value (string, number, bool, null)'}"
    if len(set(map(json.dumps, args))) != len(args):
        return "lists a value twice"
    return None


def _check_range(args, positive: bool = False, integer: bool = False) -> str | None:
    n = (2, 3) if integer else (2,)
    ok = isinstance(args, list) and len(args) in n and all(_is_number(v) for v in args)
    if not ok or (integer and not all(isinstance(v, int) for v in args)):
        shape = "[low, high] or [low, high, step] of integers" if integer else "[low, high] of numbers"
        return f"needs {shape}"
    if not args[0] < args[1]:
        return "needs low < high"
    if positive and args[0] <= 0:
        return "needs low > 0 (log scale)"
    if integer and len(args) == 3 and args[2] <= 0:
        return "needs step > 0"
    return None


def _check_variants(args) -> str | None:
    if not isinstance(args, dict) or not args:
        return "needs a mapping of variant name -> {recipe key: value}"
    for name, overrides in args.items():
        if not isinstance(overrides, dict):
            return f"variant '{name}' must be a mapping of recipe keys to values (use {{}} for none)"
    return None


def recorded_choices(values: list) -> list:
    """A `choice` parameter's values as optuna records them (its distribution, in study.db or a database server; the
    grid sampler's space): with secrets redacted. `choose` maps the one drawn back to the value the trial trains with,
    by position. Values that redaction makes equal (two URLs whose passwords both become the same mask) are told apart
    by their position in the list (`... #2`), never recorded as they are: that would store the secrets."""
    shown = redact_data(list(values))
    texts = [json.dumps(v) for v in shown]
    if len(set(texts)) == len(texts):
        return shown
    alike = {t for t in texts if texts.count(t) > 1}  # only strings redact alike: other values are distinct already
    shown = [f"{v} #{i + 1}" if t in alike else v for i, (v, t) in enumerate(zip(shown, texts, strict=True))]
    if len(set(map(json.dumps, shown))) == len(shown):
        return shown
    return [f"#{i + 1}" for i in range(len(shown))]  # a value written as another's marked text: positions alone


def choose(trial, name: str, values: list):
    """suggest_categorical over `recorded_choices(values)`; returns the value of `values` that it drew."""
    shown = recorded_choices(values)
    return values[shown.index(trial.suggest_categorical(name, shown))]


@dataclass(frozen=True)
class SearchKind:
    """One way to search a parameter: how to check its arguments, sample it, and enumerate it for grid."""

    doc: str
    check: Callable[[Any], str | None]
    suggest: Callable[[Any, str, Any], Any]  # (optuna trial, parameter name, args) -> value
    grid: Callable[[Any], list] | None  # the values a grid sweep visits; None = not enumerable
    listed: bool = False  # the spec lists every value: each is checked by the recipe's schema when the spec loads


SEARCH_KINDS: dict[str, SearchKind] = {
    "grid": SearchKind(
        "numbers to try, e.g. {grid: [1.0e-5, 5.0e-5]}",
        lambda a: _check_values(a, numbers=True),
        lambda t, n, a: t.suggest_categorical(n, a),
        lambda a: list(a),
        listed=True,
    ),
    "choice": SearchKind(
        "values to pick from (strings, numbers, bools), e.g. {choice: [sigmoid, ipo]}",
        lambda a: _check_values(a, numbers=False),
        choose,
        recorded_choices,
        listed=True,
    ),
    "uniform": SearchKind(
        "a float range, e.g. {uniform: [0.0, 0.3]}",
        _check_range,
        lambda t, n, a: t.suggest_float(n, a[0], a[1]),
        None,
    ),
    "log_uniform": SearchKind(
        "a float range sampled on a log scale, e.g. {log_uniform: [0.01, 1.0]}",
        lambda a: _check_range(a, positive=True),
        lambda t, n, a: t.suggest_float(n, a[0], a[1], log=True),
        None,
    ),
    "int": SearchKind(
        "an integer range, high included, e.g. {int: [4, 32]} or {int: [4, 32, 4]}",
        lambda a: _check_range(a, integer=True),
        lambda t, n, a: t.suggest_int(n, a[0], a[1], step=a[2] if len(a) == 3 else 1),
        lambda a: list(range(a[0], a[1] + 1, a[2] if len(a) == 3 else 1)),
    ),
    "variants": SearchKind(
        "named bundles of overrides, e.g. {variants: {plain: {}, ipo: {loss.type: ipo}}}; the parameter's "
        "name is a label, not a recipe key",
        _check_variants,
        lambda t, n, a: t.suggest_categorical(n, list(a)),
        lambda a: list(a),
        listed=True,
    ),
}


@dataclass(frozen=True)
class OptunaClass:
    """A sampler or pruner: an optuna class by name, imported when it is used.

    grid: the sampler enumerates the search space: it is given the space, and `trials` defaults to its size.
    seeded_per_trial: built as dpo/sweep/seeding.py's subclass of the same name, whose random draws come from
    (seed, trial number), so that a resumed or shared sweep does not draw its first trials' values again."""

    module: str  # optuna.samplers or optuna.pruners
    name: str
    grid: bool = False
    seeded_per_trial: bool = False

    def load(self) -> type:
        """optuna's class: the one its options are checked against."""
        import importlib

        return getattr(importlib.import_module(self.module), self.name)

    def build(self, **kwargs):
        import importlib

        module = "dpo.sweep.seeding" if self.seeded_per_trial else self.module
        return getattr(importlib.import_module(module), self.name)(**kwargs)


# The one table of each: help text, spec checks and the sweep driver read them.
SAMPLERS: dict[str, OptunaClass] = {
    "grid": OptunaClass("optuna.samplers", "GridSampler", grid=True),
    "random": OptunaClass("optuna.samplers", "RandomSampler", seeded_per_trial=True),
    "tpe": OptunaClass("optuna.samplers", "TPESampler", seeded_per_trial=True),
}
PRUNERS: dict[str, OptunaClass] = {
    "none": OptunaClass("optuna.pruners", "NopPruner"),
    "median": OptunaClass("optuna.pruners", "MedianPruner"),
    "hyperband": OptunaClass("optuna.pruners", "HyperbandPruner"),
}
DIRECTIONS = ("maximize", "minimize")
# Keys the sweep sets itself for every trial.
RESERVED_KEYS = ("name", "base", "logging.wandb_group")
SPEC_KEYS = ("recipe", "name", "objective", "sampler", "trials", "pruner", "seed", "fixed", "search")


def help_text() -> str:
    """The spec's names for `dpo sweep --help`, from the tables above."""
    kinds = "; ".join(f"{name}: {kind.doc}" for name, kind in SEARCH_KINDS.items())
    return (
        f"Spec keys: {', '.join(SPEC_KEYS)}. Search kinds: {kinds}. Samplers: {', '.join(SAMPLERS)}. "
        f"Pruners: {', '.join(PRUNERS)}."
    )


@dataclass
class Param:
    name: str  # a recipe key (loss.beta), or a label for `variants`
    kind: str
    args: Any

    def overrides(self, value) -> dict[str, Any]:
        """The recipe overrides for one sampled value."""
        return dict(self.args[value]) if self.kind == "variants" else {self.name: value}

    def spec_key(self, value, key: str) -> str:
        """The spec key that sets recipe key `key` when this parameter takes `value` (for errors)."""
        return f"search.{self.name}.{value}.{key}" if self.kind == "variants" else f"search.{self.name}"


@dataclass
class SweepSpec:
    path: Path
    raw: dict  # the spec as written
    name: str
    base_recipe: Path
    metric: str
    direction: str
    sampler: str
    sampler_kwargs: dict
    pruner: str
    pruner_kwargs: dict
    trials: int
    seed: int
    fixed: dict[str, Any]
    params: list[Param] = field(default_factory=list)

    def where(self, key: str) -> str:
        return f"{self.path}: {key}"

    def identity(self) -> dict:
        """What must match for two processes (or a resume) to be the same sweep. A sweep stored by an older version
        lacks the later keys (recipe, seed, the options): those are not compared (dpo/sweep/driver.py)."""
        return {
            "objective": {"metric": self.metric, "direction": self.direction},
            "sampler": self.sampler,
            "pruner": self.pruner,
            "trials": self.trials,
            "fixed": self.fixed,
            "search": {p.name: {p.kind: p.args} for p in self.params},
            "recipe": self.raw["recipe"],
            "seed": self.seed,
            "sampler_options": self.sampler_kwargs,
            "pruner_options": self.pruner_kwargs,
        }

    def grid_space(self) -> dict[str, list]:
        return {p.name: SEARCH_KINDS[p.kind].grid(p.args) for p in self.params}

    def build_sampler(self):
        kwargs = dict(self.sampler_kwargs)
        if SAMPLERS[self.sampler].grid:
            kwargs["search_space"] = self.grid_space()
        return SAMPLERS[self.sampler].build(seed=self.seed, **kwargs)

    def build_pruner(self):
        return build_pruner(self.pruner, self.pruner_kwargs)

    def trained_values(self, recorded: dict[str, Any]) -> dict[str, Any]:
        """The parameter values the trials train with, from those optuna recorded (a `choice` records its values
        redacted, `recorded_choices`): for best.yaml made from a trial's recorded parameters."""
        values = dict(recorded)
        for p in self.params:
            shown = recorded_choices(p.args) if p.kind == "choice" else []
            if p.name in values and values[p.name] in shown:
                values[p.name] = p.args[shown.index(values[p.name])]
        return values

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """fixed overrides, then each sampled parameter's overrides (in spec order)."""
        out = dict(self.fixed)
        for p in self.params:
            if p.name in params:
                out.update(p.overrides(params[p.name]))
        return out


def set_items(overrides: dict[str, Any]) -> list[str]:
    """key=value items for `--set`; values as JSON, which the recipe's YAML 1.2 parser reads back to the same value."""
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


def build_pruner(name: str, kwargs: dict):
    return PRUNERS[name].build(**kwargs)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec. Checks every key and value; not whether combinations are valid. `path` may
    name a shipped sweep (`sweeps/controls`; `dpo recipes` lists them)."""
    path = resolve_recipe_path(path)
    raw = read_yaml_mapping(path, what="sweep spec")

    def where(key: str) -> str:
        return f"{path}: {key}"

    for key in raw:
        if key not in SPEC_KEYS:
            raise UserError(
                f"unknown key '{key}'{did_you_mean(key, SPEC_KEYS)} (valid: {', '.join(SPEC_KEYS)})", where=str(path)
            )
    if not isinstance(raw.get("recipe"), str):
        raise UserError("required: the base recipe, a path relative to this file", where=where("recipe"))
    base = (path.parent / Path(raw["recipe"]).expanduser()).resolve()
    if not base.is_file():
        raise UserError(f"recipe file '{raw['recipe']}' not found (looked for {base})", where=where("recipe"))
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UserError("must be a plain name (no '/', not starting with '.')", where=where("name"))
    _check_no_secret(name, "the sweep's name" + ("" if "name" in raw else " (the spec file's name)"), where("name"))

    metric, direction = _objective(raw.get("objective"), where)
    sampler, sampler_kwargs = _typed(raw.get("sampler", "tpe"), SAMPLERS, "sampler", where)
    pruner, pruner_kwargs = _typed(raw.get("pruner", "none"), PRUNERS, "pruner", where)
    for key in ("seed", "search_space"):
        if key in sampler_kwargs:
            raise UserError(f"'{key}' is set by the sweep (seed: top-level key)", where=where(f"sampler.{key}"))
    _check_kwargs(SAMPLERS[sampler].load(), sampler_kwargs, "sampler", where)
    _check_kwargs(PRUNERS[pruner].load(), pruner_kwargs, "pruner", where)
    try:
        build_pruner(pruner, pruner_kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"optuna rejected it: {exc}", where=where("pruner")) from None
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"must be an integer (got {seed!r})", where=where("seed"))

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UserError("must be a mapping of recipe keys to values", where=where("fixed"))
    set_by: dict[str, str] = {}  # recipe key -> the spec key that sets it: each recipe key is set in one place
    for key in fixed:
        _check_recipe_key(str(key), where(f"fixed.{key}"), fixed[key])
        _check_plain(fixed[key], where(f"fixed.{key}"))
        _claim(set_by, _keys_set(str(key), fixed[key]), f"fixed.{key}", where)

    search = raw.get("search")
    if not isinstance(search, dict) or not search:
        raise UserError("required: a mapping of recipe key -> {kind: arguments}", where=where("search"))
    params = []
    for key, body in search.items():
        key = str(key)
        if not isinstance(body, dict) or len(body) != 1:
            raise UserError(
                f"must be one mapping {{kind: arguments}}, kind one of: {', '.join(SEARCH_KINDS)}",
                where=where(f"search.{key}"),
            )
        ((kind, args),) = body.items()
        if kind not in SEARCH_KINDS:
            hint = did_you_mean(kind, SEARCH_KINDS)
            raise UserError(
                f"unknown kind '{kind}'{hint} (valid: {', '.join(SEARCH_KINDS)})", where=where(f"search.{key}")
            )
        problem = SEARCH_KINDS[kind].check(args)
        if problem:
            raise UserError(f"{kind} {problem}", where=where(f"search.{key}"))
        if kind == "variants":
            _check_no_secret(key, "the parameter's label", where(f"search.{key}"))
            for variant in args:
                _check_no_secret(str(variant), f"variant name {str(variant)!r}", where(f"search.{key}.{variant}"))
            # one variant applies per trial: two may set the same key; and a variant may override a fixed key (the
            # other variants keep the fixed value, and the trial's record, the variant's name, says what it set)
            by_variants: dict[str, str] = {}
            for variant, overrides in args.items():
                in_variant = {k: place for k, place in set_by.items() if not place.startswith("fixed.")}
                for sub in overrides:
                    _check_recipe_key(str(sub), where(f"search.{key}.{variant}.{sub}"), overrides[sub])
                    _check_plain(overrides[sub], where(f"search.{key}.{variant}.{sub}"))
                    place = f"search.{key}.{variant}.{sub}"
                    _claim(in_variant, _keys_set(str(sub), overrides[sub]), place, where)
                # this variant's own claims (a fixed key it overrides included), the first variant's for the record
                by_variants.update({k: v for k, v in in_variant.items() if set_by.get(k) != v and k not in by_variants})
            set_by.update(by_variants)
        else:
            _check_recipe_key(key, where(f"search.{key}"))
            _claim(set_by, [key], f"search.{key}", where)
        params.append(Param(key, kind, args))

    trials = _trials(raw, sampler, params, where)
    _check_pruner_startup(pruner, pruner_kwargs, trials, where)
    _check_listed_values(base, fixed, params, where)
    spec = SweepSpec(
        path=path,
        raw=raw,
        name=name,
        base_recipe=base,
        metric=metric,
        direction=direction,
        sampler=sampler,
        sampler_kwargs=sampler_kwargs,
        pruner=pruner,
        pruner_kwargs=pruner_kwargs,
        trials=trials,
        seed=seed,
        fixed=fixed,
        params=params,
    )
    try:  # options optuna checks only together (TPE's group needs multivariate): here, not inside the sweep
        spec.build_sampler()
    except (ValueError, TypeError) as exc:
        raise UserError(f"optuna rejected it: {exc}", where=where("sampler")) from None
    return spec


def _check_pruner_startup(pruner: str, kwargs: dict, trials: int, where) -> None:
    """optuna's median pruner compares a trial with the completed ones only once `n_startup_trials` of them (at least
    one) have completed, and `n_min_trials` have reached the step: in a sweep of no more trials than that it never
    prunes, a knob that does nothing (n_startup_trials' default, five, is easy to miss in a short sweep). Refused, as a
    pruner without evaluations to act on is (driver.py). Pruned and failed trials do not count, so this is the
    least it needs."""
    parameters = inspect.signature(PRUNERS[pruner].load().__init__).parameters
    waits = {name: kwargs.get(name, parameters[name].default) for name in ("n_startup_trials", "n_min_trials")
             if name in parameters}  # fmt: skip
    if not waits:
        return  # hyperband: its brackets decide, judged by optuna at run time
    needed = max(waits.values())
    if max(needed, 1) < trials:
        return
    blocking = [name for name, value in waits.items() if value >= trials]  # each must come down, not just one
    given = [name for name in blocking if name in kwargs]
    if trials == 1:
        problem, key = "a sweep of one trial has no completed trial to compare it with; use pruner: none", "pruner"
    else:
        named = "; ".join(f"{name} {waits[name]}{'' if name in kwargs else ', its default'}" for name in blocking)
        problem = (
            f"the {pruner} pruner compares a trial with completed ones only once {needed} have completed ({named}), "
            f"and in a sweep of {trials} trials the last one sees {trials - 1} at most; set {' and '.join(blocking)} "
            f"to {trials - 1} or less, or use pruner: none"
        )
        key = f"pruner.{given[0]}" if len(given) == 1 and len(blocking) == 1 else "pruner"
    raise UserError(f"has no effect: {problem}", where=where(key))


def _check_no_secret(text: str, what: str, where: str) -> None:
    """The sweep's name is the optuna study's name, and a variants parameter's label and its variant names are a
    parameter and its values there: optuna's storage (study.db, or the --storage database) records them as they are,
    where the redaction of our own files does not reach (a `choice` value is recorded redacted: recorded_choices).
    One that holds a secret (dpo/rundir/secrets.py) is refused, as a run directory whose path holds one is; the
    message shows it redacted."""
    name = secret_in(text)
    if name is not None:
        raise UserError(
            redact(f"{what} holds a secret from ${name}, which the study's storage would record: choose another"),
            where=redact(where),
        )


def _objective(block, where) -> tuple[str, str]:
    from dpo.metrics import EVAL_METRICS, known_direction

    if not isinstance(block, dict) or "metric" not in block:
        raise UserError("required: {metric: <held-out metric>, direction: maximize|minimize}", where=where("objective"))
    extra = sorted(set(block) - {"metric", "direction"})
    if extra:
        raise UserError(f"unknown key '{extra[0]}' (valid: metric, direction)", where=where("objective"))
    metric = block["metric"]
    if metric not in EVAL_METRICS:
        hint = did_you_mean(str(metric), EVAL_METRICS)
        raise UserError(
            f"unknown held-out metric '{metric}'{hint} (valid: {', '.join(EVAL_METRICS)})",
            where=where("objective.metric"),
        )
    better = known_direction(metric)
    if not block.get("direction") and better is None:
        raise UserError(
            f"{metric} has no better direction; say maximize or minimize", where=where("objective.direction")
        )
    expected = None if better is None else "maximize" if better == "max" else "minimize"
    direction = block.get("direction") or expected
    if direction not in DIRECTIONS:
        raise UserError(
            f"must be one of {', '.join(DIRECTIONS)} (got {direction!r})", where=where("objective.direction")
        )
    if expected is not None and direction != expected:
        # the sweep would pick, and write to best.yaml, the worst trial: said, as early stopping's contradicting mode is
        raise UserError(
            f"{direction} contradicts the metric table ({metric} is '{better}': better when "
            f"{'higher' if better == 'max' else 'lower'}); drop direction, or write {expected}",
            where=where("objective.direction"),
        )
    return metric, direction


def _typed(value, names: dict[str, OptunaClass], key: str, where) -> tuple[str, dict]:
    """`name` or {type: name, **kwargs} -> (name, kwargs)."""
    if isinstance(value, dict):
        kwargs = dict(value)
        value = kwargs.pop("type", None)
    else:
        kwargs = {}
    if value not in names:
        hint = did_you_mean(str(value), names)
        raise UserError(f"unknown {key} {value!r}{hint} (valid: {', '.join(names)})", where=where(key))
    return value, kwargs


def _check_kwargs(cls, kwargs: dict, key: str, where) -> None:
    parameters = {
        n: p for n, p in inspect.signature(cls.__init__).parameters.items()
        if n not in ("self", "seed", "search_space") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }  # fmt: skip
    accepted = list(parameters)
    for name, value in kwargs.items():
        if name not in accepted:
            hint = did_you_mean(name, accepted, prefix=f"{key}.")
            raise UserError(
                f"unknown option '{name}'{hint} (optuna {cls.__name__} takes: {', '.join(accepted) or 'none'})",
                where=where(f"{key}.{name}"),
            )
        if not isinstance(value, SCALAR):
            raise UserError(f"must be a plain value (got {type(value).__name__})", where=where(f"{key}.{name}"))
        # optuna itself would fail only at the first trial (n_startup_trials: four): checked here, by the option's
        # annotation where optuna's can be read (HyperbandPruner's max_resource: str | int), else by its default
        if parameter_annotations(cls.__init__).get(name) is not None and _schema_builds(cls.__init__, name):
            _, problem = checked_value(cls.__init__, name, value, f"{key}.{name}", strict=True)
            if problem:
                raise UserError(problem.removeprefix(f"{key}.{name}: "), where=where(f"{key}.{name}"))
            continue
        default = parameters[name].default
        if not _same_kind(value, default):
            kind = KIND_WORDS[type(default)]
            raise UserError(f"must be {kind}, as its default {default!r} is (got {value!r})",
                            where=where(f"{key}.{name}"))  # fmt: skip


KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}


def _schema_builds(fn, name: str) -> bool:
    """Whether pydantic can check values against the annotation (an optuna type, a FrozenTrial, it cannot)."""
    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    try:
        TypeAdapter(parameter_annotations(fn)[name])
    except (PydanticSchemaGenerationError, TypeError, NameError):
        return False
    return True


def _same_kind(value, default) -> bool:
    """Whether `value` fits an option whose default is `default` (None, or no default: anything goes); an int
    is a fine float, a bool is no number."""
    if default is None or default is inspect.Parameter.empty or not isinstance(default, bool | int | float | str):
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _trials(raw: dict, sampler: str, params: list[Param], where) -> int:
    trials = raw.get("trials")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise UserError(f"must be a positive integer (got {trials!r})", where=where("trials"))
    if not SAMPLERS[sampler].grid:
        if trials is None:
            raise UserError(f"required with sampler '{sampler}' (how many trials to run)", where=where("trials"))
        return trials
    size = 1
    for p in params:
        values = SEARCH_KINDS[p.kind].grid
        if values is None:
            enumerable = [k for k, kind in SEARCH_KINDS.items() if kind.grid is not None]
            raise UserError(
                f"{p.kind} cannot be enumerated by the grid sampler (use {', '.join(enumerable)}, "
                f"or sampler {'/'.join(n for n, s in SAMPLERS.items() if not s.grid)})",
                where=where(f"search.{p.name}"),
            )
        size *= len(values(p.args))
    if trials is not None and trials > size:
        raise UserError(f"{trials} trials but the grid has only {size} points", where=where("trials"))
    return trials or size


def _check_plain(value: Any, where: str) -> None:
    """A value the trials get through `--set` (as JSON): text, numbers, true/false, null, and lists and mappings
    of them; not what YAML also reads (a date, bytes, a set)."""
    if isinstance(value, list):
        for item in value:
            _check_plain(item, where)
    elif isinstance(value, dict):
        for item in value.values():
            _check_plain(item, where)
    elif not isinstance(value, SCALAR) or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(
            f"must be text, a finite number, true/false, null, or a list or mapping of them (got {value!r})",
            where=where,
        )


def _check_listed_values(base: Path, fixed: dict, params: list[Param], where) -> None:
    """Each value a grid, choice or variants parameter lists, checked alone by the recipe's schema (the base recipe,
    the fixed keys and that value), so that `loss.beta: {grid: [0, 0.1]}` fails when the spec loads, not in the
    trials that draw it. Only problems of the keys the value sets count: whether it fits the other searched values
    is a combination, checked by each trial, as is what the schema leaves to later checks (a loss's name and
    hyperparameters, the training keys TRL checks)."""
    from dpo.config.loading import SET_SOURCE, load_recipe

    try:
        load_recipe(base, set_items(fixed))
    except UserError:
        return  # the base recipe or a fixed key is wrong: `dpo sweep` says so when it checks the base recipe
    for p in params:
        if not SEARCH_KINDS[p.kind].listed:
            continue
        for value in list(p.args):  # the values (a variants parameter: its names) as written, not as recorded
            overrides = p.overrides(value)
            try:
                load_recipe(base, set_items({**fixed, **overrides}))
                continue
            except UserErrors as exc:
                errors = exc.errors
            except UserError as exc:
                errors = [exc]
            for error in errors:  # "--set: loss.beta: Input should be greater than 0 (got 0)"
                if error.where != SET_SOURCE:
                    continue
                key, _, problem = str(error).removeprefix(f"{SET_SOURCE}: ").partition(": ")
                for sub, sub_value in overrides.items():
                    if key in _keys_set(sub, sub_value):  # a mapping for a section: name the key inside it
                        problem = problem if key == sub else f"{key}: {problem}"
                        raise UserError(problem, where=where(p.spec_key(value, sub)))


def _keys_set(key: str, value: Any) -> list[str]:
    """The recipe keys an override sets: a mapping given for a section sets each of its keys (--set merges it into
    the section), any other value sets the key itself."""
    from dpo.training.loss_plan import section_keys

    if isinstance(value, dict) and not key.startswith("training.") and section_keys(key):
        return [k for sub, v in value.items() for k in _keys_set(f"{key}.{sub}", v)]
    return [key]


def _claim(set_by: dict[str, str], keys: list[str], place: str, where) -> None:
    """Record that the spec key `place` sets `keys`. A recipe key (or a key above or below it) set in two places
    would be overridden by the later one without a word, and the trial's recorded parameters would not be what
    trained: an error naming the second place."""
    for key in keys:
        for other, first in set_by.items():
            if key == other or key.startswith(f"{other}.") or other.startswith(f"{key}."):
                raise UserError(f"'{key}' is also set by {first}: set each recipe key in one place", where=where(place))
        set_by[key] = place


def _check_recipe_key(key: str, where: str, value: Any = None) -> None:
    """The key must name a recipe key: a schema field, a loss hyperparameter or beta schedule key from their tables,
    or (training.*) a trl.DPOConfig field. Values are checked elsewhere (_check_listed_values, and each trial);
    `value` (a fixed one, or a variant's) only decides whether a built-in training key spells out its default."""
    if key in RESERVED_KEYS:
        raise UserError(f"'{key}' is set by the sweep for every trial", where=where)
    parts = key.split(".")
    if parts[0] == "training":
        if len(parts) < 2:
            raise UserError("name one training key (training.learning_rate, ...)", where=where)
        from dpo.training.arguments import training_key_problem

        problem = training_key_problem(parts[1], value)
        if problem:
            raise UserError(problem[0], where=where)
        return
    from dpo.training.loss_plan import section_keys

    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        valid = section_keys(parent)  # the schema's keys, and those of the loss and beta schedule tables
        if not valid:  # a leaf that holds a value (a list or mapping); deeper parts are its own keys
            return
        if part not in valid:
            hint = did_you_mean(part, valid, prefix=f"{parent}." if parent else "")
            raise UserError(f"unknown recipe key '{key}'{hint}", where=where)
