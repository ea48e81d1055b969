"""Recipe -> LossPlan: the loss terms, their hyperparameters, the beta schedule and the regularizers, each checked
against its one table (LOSSES and F_DIVERGENCES in dpo/training/losses.py, BETA_SCHEDULES in dpo/training/beta.py).

The config layer cannot read those tables (it imports no torch), so the recipe's `loss` and `loss.beta_schedule`
sections take keys beyond the schema's, and this module checks them, worded as the config layer words its own:
* `loss.type` names losses in LOSSES; every further `loss` key is a keyword-only parameter of some loss (or an
  unknown key, with the closest valid one suggested), of one of the chosen losses (or an error naming both keys),
  with a value its annotation accepts for each chosen loss that takes it; `label_smoothing: auto` takes the label
  audit's flip-rate estimate, for losses whose label_smoothing is a label-flip rate (cDPO, rDPO);
* `loss.beta_schedule.type` names a kind in BETA_SCHEDULES, and its further keys are that kind's parameters;
* `regularizers.f_divergence` names a link in F_DIVERGENCES, and `regularizers.f_alpha` is a parameter of it;
* regularizers that cannot work with the chosen losses or model setup are errors naming both keys.
A key set to null is not set: the component's own default applies (so a resolved recipe.yaml loads again); a
key that no chosen loss takes is an error naming both keys, except `label_smoothing: 0.0`, which smooths nothing
(recipe.yaml files of earlier versions hold it whatever the loss).
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from dpo.config.loading import LoadedRecipe
from dpo.config.schema import valid_keys
from dpo.config.signatures import REQUIRED, checked_value, description, keyword_parameters, unknown_key_problem
from dpo.errors import Problems, UserError, did_you_mean, raise_all
from dpo.training.beta import BETA_SCHEDULES, schedule_keys
from dpo.training.losses import F_DIVERGENCES, LOSSES, PLAIN_DPO_LINK, LabelFlipRate, LossPlan

AUTO = "auto"  # a loss key set to auto takes its value from the label audit (dpo/training/audit_use.py)


def hyperparameter_keys() -> list[str]:
    """Every loss hyperparameter some loss in LOSSES takes (besides beta), in table order."""
    return list(dict.fromkeys(key for spec in LOSSES.values() for key in spec.hyperparameters))


# Recipe sections whose keys beyond the schema's come from a component table.
TABLE_KEYS = {"loss": hyperparameter_keys, "loss.beta_schedule": schedule_keys}


def section_keys(section: str) -> list[str]:
    """The keys a recipe section takes ('' = top level): the schema's, and those of its component table."""
    table = TABLE_KEYS.get(section)
    return valid_keys(section) + (table() if table else [])


def loss_aliases() -> dict[str, tuple[str, str]]:
    """Other names of the losses in LOSSES: alias -> (loss name, what the alias means)."""
    return {alias: (spec.name, meaning) for spec in LOSSES.values() for alias, meaning in spec.aliases.items()}


def loss_name_hint(name: str) -> str:
    """ "; did you mean 'sigmoid' (plain DPO)?" for a loss name that is not in LOSSES: a known alias first (so 'dpo'
    is answered with plain DPO, not with the closest spelling, 'dpop'), else the closest name or alias."""
    aliases = loss_aliases()
    key = name.strip().lower().replace("-", "_")
    if key in aliases:
        loss, meaning = aliases[key]
        return f"; did you mean '{loss}' ({meaning})?"
    candidates = {**{n: n for n in LOSSES}, **{alias: loss for alias, (loss, _) in aliases.items()}}
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{candidates[close[0]]}'?" if close else ""


def loss_plan(loaded: LoadedRecipe) -> LossPlan:
    loss = loaded.recipe.loss
    names = loss.type_list()
    raise_all(
        [
            UserError(
                f"unknown loss '{name}'{loss_name_hint(name)} (valid: {', '.join(LOSSES)})",
                where=loaded.where("loss.type"),
            )
            for name in names
            if name not in LOSSES
        ]
    )
    problems = Problems()  # every problem of the loss section, each check on its own
    with problems.collect():
        _check_weights(loaded, names)
    hyperparameters: dict[str, Any] = {}
    with problems.collect():
        hyperparameters = _hyperparameters(loaded, names)
    terms = list(zip(names, loss.weights or [1.0] * len(names), strict=False))
    reg = loaded.recipe.regularizers
    if reg.nll_weight > 0:
        with problems.collect():
            with_nll = [n for n in names if LOSSES[n].includes_nll]
            if with_nll:
                raise UserError(
                    f"the NLL term is already in loss.type ({', '.join(with_nll)}); drop one",
                    where=loaded.where("regularizers.nll_weight"),
                )
        terms.append(("sft", reg.nll_weight))
    f_alpha = beta_schedule = None
    with problems.collect():
        f_alpha = _f_alpha(loaded)
    with problems.collect():
        beta_schedule = _beta_schedule(loaded)
    if beta_schedule is not None:
        with problems.collect():
            _check_regularizers(loaded, names, beta_schedule)
    problems.raise_all()
    return LossPlan(
        terms=tuple(terms),
        beta=loss.beta,
        hyperparameters=hyperparameters,
        beta_schedule=beta_schedule,
        f_divergence=reg.f_divergence,
        f_alpha=f_alpha,
        neftune_alpha=reg.neftune_alpha,
    )


def _check_weights(loaded: LoadedRecipe, names: list[str]) -> None:
    weights = loaded.recipe.loss.weights
    if weights is not None and len(weights) != len(names):
        raise UserError(
            f"{len(weights)} weights for {len(names)} losses ({', '.join(names)})", where=loaded.where("loss.weights")
        )
    if weights is not None and len(names) == 1 and weights != [1.0]:
        raise UserError("weights only apply when loss.type is a list", where=loaded.where("loss.weights"))


def _hyperparameters(loaded: LoadedRecipe, names: list[str]) -> dict[str, Any]:
    """The `loss` keys beyond the schema's, each a parameter of a chosen loss, validated by its annotation."""
    out: dict[str, Any] = {}
    problems = Problems()
    for key, value in loaded.recipe.loss.hyperparameters.items():
        with problems.collect():
            _hyperparameter(loaded, names, key, value, out)
    problems.raise_all()
    return out


def _hyperparameter(loaded: LoadedRecipe, names: list[str], key: str, value: Any, out: dict[str, Any]) -> None:
    """Check one `loss` key beyond the schema's; a value that applies goes into `out`."""
    dotted = f"loss.{key}"
    users = sorted(n for n, spec in LOSSES.items() if key in spec.hyperparameters)
    if not users:
        raise UserError(unknown_key_problem(dotted, section_keys("loss")), where=loaded.source(dotted))
    if value is None:
        return
    takers = [n for n in names if key in LOSSES[n].hyperparameters]
    if not takers and key == "label_smoothing" and value == 0.0 and not isinstance(value, bool):
        return  # no smoothing, which changes nothing: earlier versions wrote `label_smoothing: 0.0` for every loss
    if not takers:
        raise UserError(
            f"does not apply to loss.type {names} (it is used by: {', '.join(users)})", where=loaded.where(dotted)
        )
    if value == AUTO:
        out[key] = _auto(loaded, dotted, key, takers)
        return
    for name in takers:  # each chosen loss that takes the key must accept the value
        value, problem = checked_value(LOSSES[name].fn, key, value, dotted, strict=True)
        if problem:
            raise UserError(problem, where=loaded.source(dotted))
    out[key] = value


def _is_flip_rate(spec, key: str) -> bool:
    return typing.get_type_hints(spec.fn, include_extras=True).get(key) == LabelFlipRate


def _auto(loaded: LoadedRecipe, dotted: str, key: str, takers: list[str]) -> str:
    """`auto`: the value comes from the label audit's flip-rate estimate (dpo/training/audit_use.py), which only
    means something where the parameter is a label-flip rate (cDPO's and rDPO's epsilon)."""
    others = [n for n in takers if not _is_flip_rate(LOSSES[n], key)]
    if others:
        users = [n for n, spec in LOSSES.items() if _is_flip_rate(spec, key)]
        raise UserError(
            f"auto (the audit's flip-rate estimate) applies to losses whose {key} is a label-flip rate "
            f"({', '.join(users)}), not to {', '.join(others)}",
            where=loaded.where(dotted),
        )
    return AUTO


def _f_alpha(loaded: LoadedRecipe) -> float | None:
    """`regularizers.f_divergence` must name a link in F_DIVERGENCES; `f_alpha` must be one of its parameters."""
    reg = loaded.recipe.regularizers
    if reg.f_divergence not in F_DIVERGENCES:
        hint = did_you_mean(reg.f_divergence, F_DIVERGENCES)
        raise UserError(
            f"unknown f-divergence '{reg.f_divergence}'{hint} (valid: {', '.join(F_DIVERGENCES)})",
            where=loaded.where("regularizers.f_divergence"),
        )
    if reg.f_alpha is None:
        return None
    link = F_DIVERGENCES[reg.f_divergence]
    if "f_alpha" not in keyword_parameters(link):
        takers = [f"'{n}'" for n, fn in F_DIVERGENCES.items() if "f_alpha" in keyword_parameters(fn)]
        raise UserError(
            f"'f_alpha' applies only to f_divergence {' or '.join(takers)}", where=loaded.where("regularizers")
        )
    value, problem = checked_value(link, "f_alpha", reg.f_alpha, "regularizers.f_alpha", strict=True)
    if problem:
        raise UserError(problem, where=loaded.source("regularizers.f_alpha"))
    return value


def _beta_schedule(loaded: LoadedRecipe) -> dict[str, Any]:
    """`loss.beta_schedule` checked against BETA_SCHEDULES -> {"kind": type, **the keys set} (BetaController's
    arguments)."""
    section = loaded.recipe.loss.beta_schedule
    kind = section.type
    if kind not in BETA_SCHEDULES:
        raise UserError(
            f"unknown beta_schedule type '{kind}'{did_you_mean(kind, BETA_SCHEDULES)} "
            f"(valid: {', '.join(BETA_SCHEDULES)})",
            where=loaded.where("loss.beta_schedule.type"),
        )
    schedule = BETA_SCHEDULES[kind]
    keys = {}
    for key, value in (section.model_extra or {}).items():
        dotted = f"loss.beta_schedule.{key}"
        users = [n for n, other in BETA_SCHEDULES.items() if key in other.keys]
        if not users:
            raise UserError(
                unknown_key_problem(dotted, section_keys("loss.beta_schedule")), where=loaded.source(dotted)
            )
        if value is None:
            continue
        if key not in schedule.keys:
            raise UserError(
                f"'{key}' does not apply to beta_schedule type '{kind}' (it is used by: {', '.join(users)})",
                where=loaded.where(dotted),
            )
        value, problem = checked_value(schedule.beta, key, value, dotted, strict=True)
        if problem:
            raise UserError(problem, where=loaded.source(dotted))
        keys[key] = value
    for key, default in schedule.keys.items():
        if default is REQUIRED and key not in keys:
            raise UserError(
                f"beta_schedule type '{kind}' needs '{key}' ({description(schedule.beta, key)})",
                where=loaded.where("loss.beta_schedule"),
            )
    return {"kind": kind, **keys}


def _check_regularizers(loaded: LoadedRecipe, names: list[str], beta_schedule: dict[str, Any]) -> None:
    """Regularizers that cannot work with the chosen losses or model setup are errors naming both keys."""
    recipe = loaded.recipe
    reg = recipe.regularizers
    if reg.f_divergence != PLAIN_DPO_LINK:
        # losses without a reference (the NLL term) have no log-ratio to link, so they are unaffected
        unsupported = [n for n in names if LOSSES[n].needs_reference and not LOSSES[n].supports_f_divergence]
        if unsupported or not any(LOSSES[n].supports_f_divergence for n in names):
            supported = sorted(n for n, spec in LOSSES.items() if spec.supports_f_divergence)
            raise UserError(
                f"does not apply to loss.type {unsupported or names} (f-divergences work with: {', '.join(supported)})",
                where=loaded.where("regularizers.f_divergence"),
            )
    if reg.ld_alpha is not None and all(LOSSES[n].includes_nll for n in names):
        raise UserError(  # ORPO reads the whole answer's likelihood (its NLL term and odds): nothing to down-weight
            f"does not apply to loss.type {names}: it down-weights the preference terms of DPO-style losses",
            where=loaded.where("regularizers.ld_alpha"),
        )
    sorting = [n for n in names if not LOSSES[n].per_pair]
    if reg.wpo and sorting:
        raise UserError(
            f"does not apply to {sorting} (they sort the batch or give one value for it: no per-pair weights)",
            where=loaded.where("regularizers.wpo"),
        )
    if reg.sync_ref is not None:
        if recipe.peft is not None:
            raise UserError(
                "needs full fine-tuning (peft: null): with LoRA the reference is the adapter-disabled base, "
                "which cannot be synced",
                where=loaded.where("regularizers.sync_ref"),
            )
        if recipe.training.get("precompute_ref_log_probs") is True:
            raise UserError(
                "conflicts with training.precompute_ref_log_probs (a synced reference makes them stale)",
                where=loaded.where("regularizers.sync_ref"),
            )
    if beta_schedule.get("keep_fraction", 1.0) != 1.0 and sorting:
        raise UserError(
            f"keep_fraction filtering does not apply to {sorting} (they sort the batch or give one value for it)",
            where=loaded.where("loss.beta_schedule.keep_fraction"),
        )
    _check_reference_free(loaded, names, beta_schedule)


def _check_reference_free(loaded: LoadedRecipe, names: list[str], beta_schedule: dict[str, Any]) -> None:
    """A loss plan without a reference (every chosen loss is reference-free: simpo, orpo, sft) keeps no reference
    model: settings that only act on the reference are errors, not no-ops."""
    if any(LOSSES[n].needs_reference for n in names):
        return
    why = f"loss.type {names} uses no reference model"
    recipe = loaded.recipe
    if recipe.training.get("precompute_ref_log_probs") is True:
        raise UserError(f"does not apply: {why}", where=loaded.where("training.precompute_ref_log_probs"))
    if recipe.regularizers.sync_ref is not None:
        raise UserError(f"does not apply: {why}", where=loaded.where("regularizers.sync_ref"))
    if recipe.logging.heldout_kl:
        raise UserError(f"does not apply: {why} (the KL is to the reference)", where=loaded.where("logging.heldout_kl"))
    if BETA_SCHEDULES[beta_schedule["kind"]].adaptive:
        raise UserError(
            f"does not apply: {why}, and an adaptive beta reads the reference log-ratios",
            where=loaded.where("loss.beta_schedule.type"),
        )
