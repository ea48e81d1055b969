"""Recipe -> LossPlan: the loss terms, their hyperparameters and the regularizers, checked against LOSSES.

* `loss.type` names losses in LOSSES, and every loss hyperparameter that is set is used by one of
  the chosen losses (a knob that would be silently ignored is an error naming both keys);
* regularizers that cannot work with the chosen losses or model setup are errors naming both keys.
"""

from __future__ import annotations

from typing import Any

from dpo.config.loading import LoadedRecipe
from dpo.config.schema import LossSection
from dpo.errors import UserError, did_you_mean
from dpo.train.losses import LOSSES, LossPlan

# Loss hyperparameters: every keyword a loss in LOSSES takes; each is a key of the recipe's `loss` section,
# whose default there means "not set" (the loss function's own default applies).
LOSS_HYPERPARAMETERS: dict[str, Any] = {
    name: LossSection.model_fields[name].default for spec in LOSSES.values() for name in spec.hyperparameters
}


def loss_plan(loaded: LoadedRecipe) -> LossPlan:
    loss = loaded.recipe.loss
    names = loss.type_list()
    for name in names:
        if name not in LOSSES:
            message = f"unknown loss '{name}'{did_you_mean(name, LOSSES)} (valid: {', '.join(LOSSES)})"
            raise UserError(message, where=loaded.where("loss.type"))
    if loss.weights is not None and len(loss.weights) != len(names):
        raise UserError(
            f"{len(loss.weights)} weights for {len(names)} losses ({', '.join(names)})",
            where=loaded.where("loss.weights"),
        )
    if loss.weights is not None and len(names) == 1 and loss.weights != [1.0]:
        raise UserError("weights only apply when loss.type is a list", where=loaded.where("loss.weights"))
    accepted = {hp for name in names for hp in LOSSES[name].hyperparameters}
    hyperparameters = {}
    for key, unset in LOSS_HYPERPARAMETERS.items():
        value = getattr(loss, key)
        if value == unset:
            continue
        if key not in accepted:
            users = sorted(n for n, spec in LOSSES.items() if key in spec.hyperparameters)
            raise UserError(
                f"does not apply to loss.type {names} (it is used by: {', '.join(users)})",
                where=loaded.where(f"loss.{key}"),
            )
        hyperparameters[key] = value
    terms = list(zip(names, loss.weights or [1.0] * len(names), strict=True))
    reg = loaded.recipe.regularizers
    if reg.nll_weight > 0:
        if "sft" in names:
            raise UserError(
                "the NLL term is already in loss.type (sft); drop one", where=loaded.where("regularizers.nll_weight")
            )
        terms.append(("sft", reg.nll_weight))
    _check_regularizers(loaded, names)
    schedule = loss.beta_schedule.model_dump(exclude_none=True)
    return LossPlan(
        terms=tuple(terms),
        beta=loss.beta,
        hyperparameters=hyperparameters,
        beta_schedule={"kind": schedule.pop("type"), **schedule},
        f_divergence=reg.f_divergence,
        f_alpha=reg.f_alpha if reg.f_alpha is not None else 0.5,
        neftune_alpha=reg.neftune_alpha,
    )


def _check_regularizers(loaded: LoadedRecipe, names: list[str]) -> None:
    """Regularizers that cannot work with the chosen losses or model setup are errors naming both keys."""
    recipe = loaded.recipe
    reg = recipe.regularizers
    if reg.f_divergence != "reverse_kl":
        # losses without a reference (the NLL term) have no log-ratio to link, so they are unaffected
        unsupported = [n for n in names if LOSSES[n].needs_reference and not LOSSES[n].supports_f_divergence]
        if unsupported:
            supported = sorted(n for n, spec in LOSSES.items() if spec.supports_f_divergence)
            raise UserError(
                f"does not apply to loss.type {unsupported} (f-divergences work with: {', '.join(supported)})",
                where=loaded.where("regularizers.f_divergence"),
            )
    sorting = [n for n in names if LOSSES[n].sorts_batch]
    if reg.wpo and sorting:
        raise UserError(
            f"does not apply to {sorting} (they sort the batch, which misaligns per-pair weights)",
            where=loaded.where("regularizers.wpo"),
        )
    if reg.sync_ref is not None:
        if recipe.peft is not None:
            raise UserError(
                "needs full fine-tuning (peft: null): with LoRA the reference is the adapter-disabled base, "
                "which cannot be synced",
                where=loaded.where("regularizers.sync_ref"),
            )
        if recipe.training.get("precompute_ref_log_probs"):
            raise UserError(
                "conflicts with training.precompute_ref_log_probs (a synced reference makes them stale)",
                where=loaded.where("regularizers.sync_ref"),
            )
    schedule = recipe.loss.beta_schedule
    if schedule.type == "adaptive" and schedule.keep_fraction not in (None, 1.0) and sorting:
        raise UserError(
            f"keep_fraction filtering does not apply to {sorting} (they sort the whole batch)",
            where=loaded.where("loss.beta_schedule.keep_fraction"),
        )
