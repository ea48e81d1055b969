"""Cross-key checks of a recipe that need no component table: keys the rest of the recipe makes ineffective.

A knob that is accepted and ignored is an error naming it. Compared with defaults rather than with "was it
written", so a fully resolved recipe.yaml (every key written out) loads again without complaint.
"""

from __future__ import annotations

from dpo.config.loading import LoadedRecipe
from dpo.config.schema import DataSection, LoggingSection, PeftSection
from dpo.errors import UserError, raise_all

# training keys transformers does not read under an eval_strategy: (keys, why). Without evaluations it reads neither
# (the saves then follow save_steps 0.1); under 'epoch' it evaluates at each epoch's end whatever eval_steps says, and
# eval_delay then counts epochs, so it still acts
IGNORED_UNDER_EVAL_STRATEGY: dict[str, tuple[tuple[str, ...], str]] = {
    "no": (("eval_steps", "eval_delay"), ""),
    "epoch": (("eval_steps",), ": evaluations come at each epoch's end"),
}


def check_no_op_keys(loaded: LoadedRecipe) -> None:
    """Keys whose value differs from the default but that the rest of the recipe makes ineffective."""
    recipe = loaded.recipe
    data, stopping, logging = recipe.data, recipe.early_stopping, recipe.logging
    no_ops = []
    if data.eval and data.heldout_fraction != DataSection.model_fields["heldout_fraction"].default:
        no_ops.append(("data.heldout_fraction", "data.eval is set, so nothing is split off"))
    if data.allow_eval_in_train and not data.eval:
        no_ops.append(("data.allow_eval_in_train", "data.eval is not set: held-out prompts are split off"))
    if stopping.patience is None:
        if stopping.warmup_steps:
            no_ops.append(("early_stopping.warmup_steps", "early_stopping.patience is not set"))
        if stopping.min_delta and not recipe.autopilot.enabled:  # the autopilot's plateau and best read it
            no_ops.append(("early_stopping.min_delta", "early_stopping.patience is not set"))
    if not logging.wandb:
        if logging.wandb_project != "dpo-toolkit" or logging.wandb_mode != "auto":
            key = "logging.wandb_project" if logging.wandb_project != "dpo-toolkit" else "logging.wandb_mode"
            no_ops.append((key, "logging.wandb is false"))
        if logging.wandb_group is not None:
            no_ops.append(("logging.wandb_group", "logging.wandb is false"))
    if (
        logging.heldout_kl is False
        and logging.heldout_kl_pairs != LoggingSection.model_fields["heldout_kl_pairs"].default
    ):
        no_ops.append(("logging.heldout_kl_pairs", "logging.heldout_kl is false"))
    # TRL's disable_dropout (true by default) sets every nn.Dropout to 0, LoRA's included; 0 and the default pass
    peft_dropout = recipe.peft.dropout if recipe.peft is not None else 0.0
    if peft_dropout not in (0.0, PeftSection.model_fields["dropout"].default):
        if recipe.training.get("disable_dropout", True) is True:
            why = "training.disable_dropout is true (TRL's default): TRL zeroes every dropout, LoRA's too"
            no_ops.append(("peft.dropout", f"{why}; set training.disable_dropout: false to keep it"))
    training = recipe.training
    if training.get("padding_free") is True:  # DPOTrainer.__init__ warns and sets it back to False
        no_ops.append(("training.padding_free", "TRL 1.16 turns it off (temporarily unavailable there) and pads"))
    up_front = training.get("precompute_ref_log_probs") is True and recipe.peft is None
    if training.get("precompute_ref_batch_size") is not None and not up_front:
        # with LoRA, or without the up-front pass, each pair's reference log-probs come with its first batch
        no_ops.append(("training.precompute_ref_batch_size", "the reference log-probs are computed up front only "
                       "with training.precompute_ref_log_probs: true and full fine-tuning (peft: null)"))  # fmt: skip
    strategy = training.get("eval_strategy")  # of a wrong type (a list): the DPOConfig check's error, not one here
    if isinstance(strategy, str) and strategy in IGNORED_UNDER_EVAL_STRATEGY:
        ignored, after = IGNORED_UNDER_EVAL_STRATEGY[strategy]
        # only where they were written beside it: a base recipe's cadence (quickstart.yaml's eval_steps) that a child
        # or --set turns off with eval_strategy: no, or moves to epochs, is an override, not a knob set to do nothing;
        # so is a sweep's fixed cadence under a searched strategy (dpo/config/loading.py SWEEP_FIXED_SOURCE)
        strategy_source = loaded.source("training.eval_strategy")
        no_ops += [(f"training.{key}", f"training.eval_strategy is '{strategy}'{after}")
                   for key in ignored
                   if training.get(key) not in (None, 0)
                   and loaded.source(f"training.{key}") == strategy_source]  # fmt: skip
    for split in ("train", "eval"):  # here, not in the schema: a run's recipe.yaml from before still loads
        weighted = [i for i, source in enumerate(data.sources(split)) if source.weight is not None]
        if len(weighted) == 1:  # its share of the weighted sources' own row count is all of it
            no_ops.append((f"data.{split}", f"source {weighted[0]}: weight: weighted sources share their total row "
                           "count by weight, and this source is the only weighted one, so it gives its rows once "
                           "whatever the weight; weight another source too, or give this one a count"))  # fmt: skip
    # max_steps of the wrong type is the DPOConfig check's error (reported with this one), not a comparison here
    max_steps = recipe.training.get("max_steps")
    if "num_train_epochs" in recipe.training and isinstance(max_steps, int) and max_steps > 0:
        no_ops.append(("training.num_train_epochs", "training.max_steps is set and wins"))
    raise_all([UserError(f"has no effect: {reason}", where=loaded.where(key)) for key, reason in no_ops])
