"""PlanOptions for a recipe: the memory plan printed when `dpo train` starts, from the recipe and its DPOConfig."""

from __future__ import annotations

from dpo.config.schema import Recipe
from dpo.plan.options import DEFAULT_LORA_TARGETS, PlanOptions


def planned_optimizer(optim: str) -> str:
    """The planner's optimizer (dpo/plan/options.py OPTIMIZERS) for transformers' `optim` name: its 8-bit AdamWs,
    its other AdamWs, SGD (momentum 0, as transformers builds it: no state); any other (Adafactor, Lion, ...) is
    planned as AdamW, whose two states per parameter are as much as any of them keeps."""
    optim = str(getattr(optim, "value", optim))
    if "8bit" in optim and "adam" in optim:
        return "adamw_8bit"
    return "sgd" if optim == "sgd" else "adamw"


def options_for_recipe(recipe: Recipe, args, cuda: bool, reference_free: bool = False) -> PlanOptions:
    """`args`: the run's trl.DPOConfig (read, never imported here: plan/ needs no trainer). `reference_free`: the
    loss plan needs no reference (dpo/training/losses.py LossPlan.needs_reference), so the run keeps none."""
    peft = recipe.peft
    targets = DEFAULT_LORA_TARGETS
    if peft is not None:
        targets = ("all-linear",) if peft.target_modules == "all-linear" else tuple(peft.target_modules)
    return PlanOptions(
        dtype=recipe.model.dtype,
        batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seq_len=args.max_length or 1024,
        lora_rank=peft.r if peft else None,
        lora_targets=targets,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        reference=_reference(recipe, args, reference_free),
        device="cuda" if cuda else "cpu",
        optimizer=planned_optimizer(args.optim),
        autocast=_autocast(args) if recipe.model.dtype == "float32" else None,
    )


def _reference(recipe: Recipe, args, reference_free: bool) -> str:
    if reference_free:
        return "none"
    if recipe.regularizers.sync_ref is not None:  # TR-DPO (the recipe check refuses it with LoRA or precompute)
        return "synced"
    return "precomputed" if args.precompute_ref_log_probs else "auto"


def _autocast(args) -> str | None:
    """TRL's mixed precision over float32 weights: bf16 or fp16 autocast."""
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else None


def plan_line(recipe: Recipe, args, cuda: bool, reference_free: bool = False) -> str:
    """The planner's one-line summary for this recipe."""
    from dpo.plan.planner import build_plan

    options = options_for_recipe(recipe, args, cuda, reference_free)
    return build_plan(recipe.model.name_or_path, options).summary_line()
