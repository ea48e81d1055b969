"""One training run: recipe -> data -> model -> trainer -> run directory.

    import dpo
    summary = dpo.train("recipes/quickstart.yaml", overrides=["loss.beta=0.2"], output_dir="runs/b02")

Everything that can be wrong with the user's input (recipe, training settings, data, model path) is
checked by `check()` before the run directory is created, so a bad input never leaves a half-made run.

Run directory:
    recipe.yaml       the fully resolved recipe (a plain recipe `dpo train` accepts)
    recipe_changes.json  the recipe file, the --set overrides, and each key they changed vs the base chain
    data_card.json    rows read, dropped and why, split sizes, content hashes
    metrics.jsonl     one JSON object per log event, with `step`; TRL's metric names, eval ones eval_-prefixed
    summary.json      stop_reason, best_step, best_metric, initial/final metrics, runtime_s, steps
    final/            the trained adapter (LoRA) or model, plus the tokenizer
    checkpoints/      a complete checkpoint at every evaluation (the last two and the best are kept), for resume
    .lock             while a `dpo train` writes the directory (dpo/lock.py)
    report.html       the dashboard (dpo/report.py); `dpo report RUN_DIR` rebuilds it

Crash safety: every file is written to a temporary name and renamed (dpo/atomic.py), checkpoints are marked
complete last (dpo/resume.py), and `execute(..., resume=True)` continues a killed run from its last complete
checkpoint. A NaN/Inf loss or gradient norm stops the run before the bad step is applied: summary.json says
`stop_reason: non_finite` and RunFailed (exit code 3) is raised. Secrets never reach the run dir (dpo/secrets.py).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo import resume as resuming
from dpo.atomic import atomic_write_json, atomic_write_text, replace_dir
from dpo.data import PreparedData, prepare_data
from dpo.errors import NonFiniteError, RunFailed, UserError, did_you_mean
from dpo.lock import RunLock
from dpo.recipe import LoadedRecipe, Recipe, changes_from_base, load_recipe
from dpo.secrets import redact, redact_config


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

    @property
    def warnings(self) -> list[str]:
        """Settings that are valid but risky: printed by `dpo validate` and `dpo train`."""
        found = []
        if self.recipe.model.trust_remote_code:
            found.append(
                f"{self.loaded.where('model.trust_remote_code')}: true: Python code shipped with the model "
                f"'{self.recipe.model.name_or_path}' will run on this machine; keep it false unless you trust it"
            )
        return found


def check(recipe_path: str | Path, overrides=(), extra_metrics: tuple[str, ...] = ()) -> CheckedRecipe:
    """Load and check a recipe and its data without loading model weights. Every user error surfaces here,
    before a run directory exists. `extra_metrics`: held-out metrics that user callbacks add."""
    from dpo.trainer_config import build_dpo_config, check_no_op_keys, loss_plan

    loaded = load_recipe(recipe_path, list(overrides))
    plan = loss_plan(loaded)
    # checks the `training` keys against DPOConfig's fields, then TRL's own checks of the values
    dpo_config = build_dpo_config(loaded, Path("runs") / "_check")
    check_no_op_keys(loaded, dpo_config)
    _check_heldout_kl(loaded, dpo_config)
    _check_early_stopping(loaded, dpo_config, extra_metrics)
    _check_model(loaded)
    recipe = loaded.recipe
    data = prepare_data(
        recipe.data,
        recipe.seed,
        where=loaded.where,
        tokenizer=_check_tokenizer(loaded),
        max_length=dpo_config.max_length,  # rows longer than this would be cut by TRL: invalid rows
    )
    return CheckedRecipe(loaded, data, plan, dpo_config)


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str, trust_remote_code: bool):
    from dpo.models import load_tokenizer

    return load_tokenizer(name_or_path, trust_remote_code)


def _check_tokenizer(loaded: LoadedRecipe):
    """The model's tokenizer for the data's length check (no weights), loaded once per process; read-only use."""
    model = loaded.recipe.model
    try:
        return _tokenizer(model.name_or_path, model.trust_remote_code)
    except (UserError, OSError, ValueError) as exc:
        message = str(exc).removeprefix("model.name_or_path: ").splitlines()[0]
        raise UserError(f"cannot load the tokenizer: {message}", where=loaded.where("model.name_or_path")) from None


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


def heldout_kl_available(recipe: Recipe, dpo_config) -> bool:
    """The held-out KL needs a reference model at evaluation: the adapter-disabled policy under LoRA, or TRL's
    reference copy; full fine-tuning with precomputed reference log-probs keeps neither."""
    return recipe.peft is not None or not dpo_config.precompute_ref_log_probs


def _check_heldout_kl(loaded: LoadedRecipe, dpo_config) -> None:
    if loaded.recipe.logging.heldout_kl and not heldout_kl_available(loaded.recipe, dpo_config):
        raise UserError(
            "needs a reference model at evaluation, which full fine-tuning (peft: null) with "
            "training.precompute_ref_log_probs: true does not keep; set one of them otherwise, or heldout_kl: false",
            where=loaded.where("logging.heldout_kl"),
        )


def _check_early_stopping(loaded: LoadedRecipe, dpo_config, extra_metrics: tuple[str, ...]) -> None:
    from dpo.diagnostics import EVAL_METRICS

    stopping = loaded.recipe.early_stopping
    known = [*EVAL_METRICS, *extra_metrics]
    kl_on = loaded.recipe.logging.heldout_kl
    if stopping.metric == "eval_kl" and (kl_on is False or not heldout_kl_available(loaded.recipe, dpo_config)):
        raise UserError(
            "eval_kl is only logged with the held-out KL on: it needs logging.heldout_kl and a reference model at "
            "evaluation (LoRA, or training.precompute_ref_log_probs: false)",
            where=loaded.where("early_stopping.metric"),
        )
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


def _claim_run_dir(run_dir: Path, resume: bool) -> RunLock:
    """Take the run directory's lock (one writer per run directory); a new run needs an empty directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("--output-dir is a file, not a directory", where=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if os.environ.get("RANK", "0") != "0":
        return lock  # the other processes of one multi-process run: rank 0 holds the lock for all of them
    lock.acquire()  # first, so that a directory in use says so rather than "not empty"
    if lock.cleared:
        print(f"cleared a stale lock of pid {lock.cleared.get('pid')} (not running any more)", file=sys.stderr)
    if not resume and resuming.has_previous_attempt(run_dir):
        lock.release()
        raise UserError(
            "run directory is not empty; choose another --output-dir (or add --resume to continue it)",
            where=str(run_dir),
        )
    return lock


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data)  # temporary name + rename, secrets redacted


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


def _start_wandb(recipe: Recipe, run_dir: Path, mode: str | None) -> None:
    """Open the wandb run ourselves, so it carries the resolved recipe as its config and the sweep's group;
    transformers' WandbCallback then logs into this run (it only calls wandb.init when no run is open)."""
    if mode is None:
        return
    import wandb

    wandb.init(
        project=recipe.logging.wandb_project,
        name=recipe.name,
        group=recipe.logging.wandb_group,
        dir=str(run_dir),
        mode=mode,
        config={"recipe": redact_config(recipe.model_dump(mode="json"))},
    )


def _finish_wandb(summary: dict) -> None:
    """The run's verdict as wandb summary values: what a person compares across runs in the wandb table."""
    import wandb

    if wandb.run is None:
        return
    best = summary["best_metric"]
    overfitting = summary.get("overfitting") or {}  # absent when the run stopped on a non-finite value
    wandb.run.summary.update(
        {
            "stop_reason": summary["stop_reason"],
            "best_step": summary["best_step"],
            "best_metric_name": best["name"],
            f"best/{best['name']}": best["value"],
            "overfitting_onset_step": overfitting.get("onset_step"),
            "overfitting_warnings": len(overfitting.get("warnings", [])),
        }
    )
    wandb.finish(exit_code=0 if summary["stop_reason"] in resuming.FINISHED else 1)


def write_report_or_warn(run_dir: Path) -> Path | None:
    """The dashboard is a view of files already written: if it fails, say so on one line and keep the run."""
    from dpo.report import write_report

    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here must not lose a finished run
        print(
            f"warning: report.html not written ({type(exc).__name__}: {exc}); retry with: dpo report {run_dir}",
            file=sys.stderr,
        )
        return None


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

    wanted = checked.recipe.logging.heldout_kl
    heldout_kl = heldout_kl_available(checked.recipe, checked.dpo_config) if wanted is None else wanted
    return Trainer(**trainer_inputs(checked, run_dir, callbacks), loss_plan=checked.loss_plan, heldout_kl=heldout_kl)


def train(recipe_path: str | Path, overrides=(), output_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train one recipe and write its run directory. Returns the summary (also in summary.json).
    Raises UserError for bad input (nothing written) and RunFailed when training diverged (summary.json says so)."""
    summary, _ = execute(recipe_path, overrides, output_dir, resume=resume)
    return summary


def execute(
    recipe_path: str | Path,
    overrides=(),
    output_dir: str | Path | None = None,
    callbacks: list | None = None,
    extra_metrics: tuple[str, ...] = (),
    resume: bool = False,
):
    """`train`, also returning the trainer; `callbacks` (transformers TrainerCallbacks) run before ours and
    may add held-out metrics named in `extra_metrics`. With `resume`, a run directory left by a killed run is
    continued from its last complete checkpoint (an absent or empty one starts a new run)."""
    started = time.time()
    checked = check(recipe_path, overrides, extra_metrics)
    recipe = checked.recipe
    run_dir = Path(output_dir) if output_dir else default_output_dir(recipe)
    resolved_yaml = redact(recipe.to_yaml())
    if resume:
        resuming.check(run_dir, resolved_yaml)
    lock = _claim_run_dir(run_dir, resume)
    try:
        for warning in checked.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        point = resuming.prepare(run_dir, run_dir / "checkpoints") if resume else resuming.ResumePoint(run_dir)
        for note in point.notes:
            print(f"resume: {note}", flush=True)
        changes = None  # a resumed run keeps its own record: from RUN_DIR/recipe.yaml every key would be a "change"
        if not (resume and (run_dir / "recipe_changes.json").is_file()):
            changes = {
                "recipe_file": str(Path(recipe_path).resolve()),
                "overrides": [redact(str(o)) for o in overrides],
                "changes": changes_from_base(checked.loaded),
            }
        return _run(checked, run_dir, point, resolved_yaml, changes, callbacks, started)
    finally:
        lock.release()


def _run(
    checked: CheckedRecipe, run_dir: Path, point, resolved_yaml: str, changes: dict | None, callbacks, started: float
):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from dpo.callbacks import BestCheckpointCallback, CompactProgressCallback, MetricsFileCallback
    from dpo.diagnostics import overfitting_block
    from dpo.sweep_callbacks import callback_from_env

    recipe = checked.recipe
    main = is_main_process()
    if main:  # under torchrun / accelerate launch only rank 0 writes the run directory
        atomic_write_text(run_dir / "recipe.yaml", resolved_yaml)
        if changes is not None:
            _write_json(run_dir / "recipe_changes.json", changes)
        _write_json(run_dir / "data_card.json", checked.data.card)
    _start_wandb(recipe, run_dir, _configure_wandb(recipe, run_dir) if main else None)
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
    trainer.clock_start = started
    try:
        if point.checkpoint is None:
            initial = trainer.evaluate()  # step 0: the reference model's held-out numbers, for the before/after view
            _unmark_eval_preparation(trainer)
            if best.keep_best and best.best_step == 0:
                checkpoint_0 = Path(trainer.args.output_dir) / "checkpoint-0"
                trainer.save_model(str(checkpoint_0))
                resuming.mark_complete(checkpoint_0, 0)
            train_output = trainer.train()
        else:
            initial = resuming.initial_metrics(run_dir / "metrics.jsonl")
            saved = json.loads((point.checkpoint / resuming.TRAINER_STATE).read_text(encoding="utf-8"))
            best.load_state(saved.get("stateful_callbacks", {}).get(type(best).__name__, {}))
            trainer.load_dpo_state(point.state, point.step)
            if best.stopped_at is not None or saved.get("global_step", 0) >= saved.get("max_steps", 0):
                train_output = trainer.finish_from_checkpoint(str(point.checkpoint))  # training had ended there
            else:
                train_output = trainer.train(resume_from_checkpoint=str(point.checkpoint))
    except NonFiniteError as exc:
        failed = _diverged(exc, trainer, best, run_dir, initial, started)
        if recipe.logging.wandb:
            _finish_wandb(failed.summary)  # else the wandb run stays open, and a next run in this process joins it
        write_report_or_warn(run_dir)
        raise failed from None
    stop_reason = "early_stopped" if best.stopped_at is not None else "completed"
    if sweep_trial is not None and sweep_trial.pruned_at is not None:
        stop_reason = "pruned"

    restored = _restore_best(trainer, best)
    staging = run_dir / ".final.tmp"  # final/ appears whole or not at all
    trainer.save_model(str(staging))  # writes on the main process only (all ranks take part)
    if main:
        trainer.processing_class.save_pretrained(str(staging))
        replace_dir(staging, run_dir / "final")

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
        "train_loss": train_output.metrics.get("train_loss", train_output.training_loss),  # all steps, resumed too
        "overfitting": overfitting_block(trainer.state.log_history, stopping.metric, stopping.patience, stopping.mode),
        "runtime_s": round(trainer.runtime_before + time.time() - started, 2),  # all attempts, up to their checkpoints
        "resumed_from": trainer.resumed_from,
        "run_dir": str(run_dir),
    }
    if main:
        _write_json(run_dir / "summary.json", summary)
        if recipe.logging.wandb:
            _finish_wandb(summary)
        write_report_or_warn(run_dir)
    return summary, trainer


def _diverged(exc: NonFiniteError, trainer, best, run_dir: Path, initial: dict, started: float) -> RunFailed:
    """summary.json for a run stopped by the non-finite guard; the error the caller raises (exit code 3)."""
    last_good = resuming.last_resumable(run_dir / "checkpoints")
    last_good_path = str(last_good[1]) if last_good else None
    summary = {
        "stop_reason": "non_finite",
        "error": str(exc),
        "non_finite": {"quantity": exc.quantity, "step": exc.step, "value": str(exc.value)},
        "last_good_checkpoint": last_good_path,
        "best_step": best.best_step,
        "best_metric": {"name": best.metric, "mode": best.mode, "value": best.best_value},
        "final_weights": None,  # no final/: the step that went non-finite was not applied, nothing is trusted past it
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "initial_metrics": _eval_only(initial),
        "final_metrics": _last_metrics(trainer.state.log_history),
        "runtime_s": round(trainer.runtime_before + time.time() - started, 2),
        "resumed_from": trainer.resumed_from,
        "run_dir": str(run_dir),
    }
    _write_json(run_dir / "summary.json", summary)
    where = f"the last good checkpoint is {last_good_path}" if last_good_path else "no checkpoint was saved before it"
    return RunFailed(f"{run_dir}: training stopped: {exc}; {where}", summary)


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
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith("eval_") and not k.endswith(("runtime", "per_second", "preparation_time"))
    }


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
