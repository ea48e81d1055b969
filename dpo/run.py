"""One training run: recipe -> data -> model -> trainer -> run directory.

    import dpo
    summary = dpo.train("recipes/quickstart.yaml", overrides=["loss.beta=0.2"], output_dir="runs/b02")

Everything that can be wrong with the user's input (recipe, training settings, data, model path) is
checked by `check()` before the run directory is created, so a bad input never leaves a half-made run.

Run directory:
    recipe.yaml       the fully resolved recipe (a plain recipe `dpo train` accepts)
    data_card.json    rows read, dropped and why, split sizes, content hashes
    metrics.jsonl     one JSON object per log event, with `step`; TRL's metric names, eval ones eval_-prefixed
    summary.json      stop_reason, best_step, best_metric, initial/final metrics, runtime_s, steps
    final/            the trained adapter (LoRA) or model, plus the tokenizer
    checkpoints/      best checkpoint(s) when early stopping is on, periodic ones when asked
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo.data import PreparedData, prepare_data
from dpo.errors import UserError, did_you_mean
from dpo.recipe import LoadedRecipe, Recipe, load_recipe


@dataclass
class CheckedRecipe:
    """A recipe that passed every check that needs no weights: what `dpo validate` reports on."""

    loaded: LoadedRecipe
    data: PreparedData
    loss_plan: Any
    dpo_config: Any  # trl.DPOConfig as the run will use it (output_dir set again for the real run directory)

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe


def check(recipe_path: str | Path, overrides=(), extra_metrics: tuple[str, ...] = ()) -> CheckedRecipe:
    """Load and check a recipe and its data without loading model weights. Every user error surfaces here,
    before a run directory exists. `extra_metrics`: held-out metrics that user callbacks add."""
    from dpo.trainer_config import build_dpo_config, check_no_op_keys, loss_plan

    loaded = load_recipe(recipe_path, list(overrides))
    plan = loss_plan(loaded)
    # checks the `training` keys against DPOConfig's fields, then TRL's own checks of the values
    dpo_config = build_dpo_config(loaded, Path("runs") / "_check")
    check_no_op_keys(loaded, dpo_config)
    _check_early_stopping(loaded, dpo_config, extra_metrics)
    _check_model(loaded)
    data = prepare_data(loaded.recipe.data, loaded.recipe.seed, where=loaded.where)
    return CheckedRecipe(loaded, data, plan, dpo_config)


def _check_model(loaded: LoadedRecipe) -> None:
    """The model must be loadable: the embedded model's package installed, or a config for a dir / hub id."""
    from dpo.models import EMBEDDED_MODELS, cache_dir, load_config

    name = loaded.recipe.model.name_or_path
    try:
        if name in EMBEDDED_MODELS:
            if not (cache_dir() / name / "config.json").is_file():
                EMBEDDED_MODELS[name].package_dir()
        else:
            load_config(name)
    except UserError as exc:
        message = str(exc).removeprefix("model.name_or_path: ")
        raise UserError(message, where=loaded.where("model.name_or_path")) from None


def _check_early_stopping(loaded: LoadedRecipe, dpo_config, extra_metrics: tuple[str, ...]) -> None:
    from dpo.diagnostics import EVAL_METRICS

    stopping = loaded.recipe.early_stopping
    known = [*EVAL_METRICS, *extra_metrics]
    if stopping.metric not in known:
        raise UserError(
            f"unknown held-out metric '{stopping.metric}'{did_you_mean(stopping.metric, known)} "
            f"(valid: {', '.join(known)})",
            where=loaded.where("early_stopping.metric"),
        )
    if stopping.patience is None:
        return
    never = dpo_config.eval_strategy == "no"
    steps, every = dpo_config.max_steps, dpo_config.eval_steps
    if never or (dpo_config.eval_strategy == "steps" and every and every >= 1 and 0 < steps < every):
        raise UserError(
            "needs evaluations during training (training.eval_strategy 'no', or eval_steps > max_steps): "
            "without them the untrained model would be kept as the best",
            where=loaded.where("early_stopping.patience"),
        )


def plan_line(checked: CheckedRecipe) -> str:
    """The memory planner's one-line summary for this recipe (printed when training starts)."""
    import torch

    from dpo.plan import PlanOptions, build_plan

    recipe, args = checked.recipe, checked.dpo_config
    peft = recipe.peft
    options = PlanOptions(
        dtype=recipe.model.dtype,
        batch_size=args.per_device_train_batch_size,
        seq_len=args.max_length or 1024,
        lora_rank=peft.r if peft else None,
        lora_targets=(("all-linear",) if peft.target_modules == "all-linear" else tuple(peft.target_modules))
        if peft
        else PlanOptions.lora_targets,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        reference="precomputed" if args.precompute_ref_log_probs else "auto",
        device="cuda" if torch.cuda.is_available() else "cpu",
        autocast="bfloat16" if args.bf16 and recipe.model.dtype == "float32" else None,
    )
    return build_plan(recipe.model.name_or_path, options).summary_line()


def default_output_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def _claim_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("--output-dir is a file, not a directory", where=str(run_dir))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError("run directory is not empty; choose another --output-dir", where=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, data: dict) -> None:
    """Write to a temporary name and rename, so a killed process never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _configure_wandb(recipe: Recipe, run_dir: Path) -> str | None:
    """wandb goes online only when an API key is configured (or the recipe says online); never by surprise."""
    if not recipe.logging.wandb:
        return None
    mode = recipe.logging.wandb_mode
    if mode == "auto":
        has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read_netrc()
        mode = "online" if has_key else "offline"
    os.environ.update(
        WANDB_MODE=mode, WANDB_DIR=str(run_dir), WANDB_PROJECT=recipe.logging.wandb_project, WANDB_SILENT="true"
    )
    return mode


def _read_netrc() -> str:
    try:
        return Path(os.path.expanduser("~/.netrc")).read_text()
    except OSError:
        return ""


def trainer_inputs(checked: CheckedRecipe, run_dir: Path, callbacks: list) -> dict:
    """The keyword arguments of a (TRL or our) DPOTrainer for a checked recipe: model, tokenizer, LoRA, data."""
    from peft import LoraConfig

    from dpo.models import load_model, load_tokenizer
    from dpo.trainer_config import build_dpo_config

    recipe = checked.recipe
    peft_config = None
    if recipe.peft is not None:
        peft_config = LoraConfig(
            r=recipe.peft.r,
            lora_alpha=recipe.peft.alpha,
            lora_dropout=recipe.peft.dropout,
            target_modules=recipe.peft.target_modules,
            task_type="CAUSAL_LM",
        )
    train_ds, eval_ds = checked.data.datasets()
    return {
        "model": load_model(recipe.model.name_or_path, recipe.model.dtype, recipe.model.trust_remote_code),
        "args": build_dpo_config(checked.loaded, run_dir),  # as checked, now with the real run directory
        "train_dataset": train_ds,
        "eval_dataset": eval_ds,
        "processing_class": load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code),
        "peft_config": peft_config,
        "callbacks": callbacks,
    }


def build_trainer(checked: CheckedRecipe, run_dir: Path, callbacks: list):
    """Our Trainer for a checked recipe."""
    from dpo.trainer import Trainer

    return Trainer(**trainer_inputs(checked, run_dir, callbacks), loss_plan=checked.loss_plan)


def train(recipe_path: str | Path, overrides=(), output_dir: str | Path | None = None) -> dict:
    """Train one recipe and write its run directory. Returns the summary (also in summary.json)."""
    summary, _ = execute(recipe_path, overrides, output_dir)
    return summary


def execute(
    recipe_path: str | Path,
    overrides=(),
    output_dir: str | Path | None = None,
    callbacks: list | None = None,
    extra_metrics: tuple[str, ...] = (),
):
    """`train`, also returning the trainer; `callbacks` (transformers TrainerCallbacks) run before ours and
    may add held-out metrics named in `extra_metrics`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from dpo.callbacks import BestCheckpointCallback, CompactProgressCallback, MetricsFileCallback
    from dpo.diagnostics import overfitting_block
    from dpo.sweep_callbacks import callback_from_env

    started = time.time()
    checked = check(recipe_path, overrides, extra_metrics)  # on every rank: each rank builds its own trainer
    recipe = checked.recipe
    run_dir = Path(output_dir) if output_dir else default_output_dir(recipe)
    main = is_main_process()
    if main:  # under torchrun / accelerate launch only rank 0 writes the run directory
        _claim_run_dir(run_dir)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        _write_json(run_dir / "data_card.json", checked.data.card)
    _configure_wandb(recipe, run_dir)
    if recipe.logging.tensorboard:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    try:
        if main:
            print(plan_line(checked), flush=True)
    except UserError as exc:  # a model family the planner cannot count is no reason not to train
        print(f"plan: not available ({exc})", flush=True)

    stopping = recipe.early_stopping
    best = BestCheckpointCallback(
        metric=stopping.metric,
        mode=stopping.mode,
        patience=stopping.patience,
        min_delta=stopping.min_delta,
        warmup_steps=stopping.warmup_steps,
        keep_best=stopping.patience is not None,
    )
    own = [MetricsFileCallback(run_dir / "metrics.jsonl"), best]
    sweep_trial = callback_from_env()  # inside `dpo sweep`: report to optuna, stop when pruned
    if sweep_trial is not None:
        own.append(sweep_trial)
    trainer = build_trainer(checked, run_dir, [*(callbacks or []), *own])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.args.world_size != launched:  # independent copies of one run would overwrite each other's files
        raise RuntimeError(f"launched as {launched} processes, but the trainer runs {trainer.args.world_size}")
    # transformers prints a dict per log event; metrics.jsonl has them all, the terminal gets a bar and a
    # line per evaluation (or nothing, with logging.progress_bar: false).
    trainer.remove_callback(PrinterCallback)
    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgressCallback())
    initial = trainer.evaluate()  # step 0: the reference model's held-out numbers, for the before/after view
    _unmark_eval_preparation(trainer)
    if best.keep_best and best.best_step == 0:
        trainer.save_model(str(Path(trainer.args.output_dir) / "checkpoint-0"))
    train_output = trainer.train()
    stop_reason = "early_stopped" if best.stopped_at is not None else "completed"
    if sweep_trial is not None and sweep_trial.pruned_at is not None:
        stop_reason = "pruned"

    restored = _restore_best(trainer, best)
    trainer.save_model(str(run_dir / "final"))  # writes on the main process only (all ranks take part)
    if main:
        trainer.processing_class.save_pretrained(str(run_dir / "final"))
    if trainer.args.report_to and "wandb" in trainer.args.report_to:
        import wandb

        if wandb.run is not None:
            wandb.run.summary.update({"stop_reason": stop_reason, "best_step": best.best_step})
            wandb.finish()

    summary = {
        "stop_reason": stop_reason,
        "best_step": best.best_step,
        "best_metric": {"name": best.metric, "mode": best.mode, "value": best.best_value},
        "final_weights": "best" if restored else "last",
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "initial_metrics": _eval_only(initial),
        "best_metrics": _eval_at(trainer.state.log_history, best.best_step) or _eval_only(initial),
        "final_metrics": _last_metrics(trainer.state.log_history),
        "train_loss": train_output.training_loss,
        "overfitting": overfitting_block(trainer.state.log_history, stopping.metric, stopping.patience, stopping.mode),
        "runtime_s": round(time.time() - started, 2),
        "run_dir": str(run_dir),
    }
    if main:
        _write_json(run_dir / "summary.json", summary)
    return summary, trainer


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (both set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _unmark_eval_preparation(trainer) -> None:
    """Let train() wrap the model in DistributedDataParallel after an evaluation.

    An evaluate() before train() prepares the bare model for evaluation only (no DDP wrapper) and marks it
    prepared; train() then skips the wrapper, so under torchrun / accelerate launch every process would update
    its own copy of the weights, unsynchronised. DeepSpeed and FSDP prepare fully in evaluate(): left alone.
    """
    model = trainer.model
    if (
        trainer.args.world_size > 1
        and trainer.model_wrapped is model
        and getattr(model, "_is_accelerate_prepared", False)
    ):
        del model._is_accelerate_prepared
        trainer.accelerator._models[:] = [m for m in trainer.accelerator._models if m is not model]


def _restore_best(trainer, best) -> bool:
    """Load the best checkpoint's weights into the trainer's model when it is not the last step."""
    if not best.keep_best or best.best_step is None or best.best_step == trainer.state.global_step:
        return False
    trainer.state.best_model_checkpoint = str(Path(trainer.args.output_dir) / f"checkpoint-{best.best_step}")
    trainer._load_best_model()  # transformers' own loader: handles PEFT adapters and full models
    return True


def _eval_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}


def _eval_at(log_history: list[dict], step: int | None) -> dict:
    return next((_eval_only(h) for h in log_history if "eval_loss" in h and h.get("step") == step), {})


def _last_metrics(log_history: list[dict]) -> dict:
    """The last evaluation's metrics and the last training step's metrics, merged."""
    last_eval = next((h for h in reversed(log_history) if "eval_loss" in h), {})
    last_train = next((h for h in reversed(log_history) if "loss" in h and "eval_loss" not in h), {})
    merged = {k: v for k, v in last_train.items() if k not in ("epoch", "step")}
    merged.update(_eval_only(last_eval))
    merged["eval_step"] = last_eval.get("step")
    return merged
