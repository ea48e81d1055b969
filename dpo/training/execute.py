"""One training run: a checked recipe -> model -> trainer -> run directory (dpo/rundir/files.py names its files).

    from dpo.training.execute import execute
    summary, trainer = execute("recipes/quickstart.yaml", ["loss.beta=0.2"], "runs/b02", callbacks=[...])

Everything that can be wrong with the user's input is checked by `dpo.training.gate.check` before the run directory
is created, so a bad input never leaves a half-made run. A training run knows nothing of who started it: a sweep
passes its optuna callback in `callbacks`, and a callback that stops training early says why with a
`stop_reason` attribute (a sweep's pruner: "pruned"), which summary.json records, unless the run's own early stopping
or autopilot stopped it at the same evaluation.

Crash safety: every file is written to a temporary name and renamed (dpo/rundir/atomic.py), checkpoints are marked
complete last (dpo/rundir/resume.py), and `execute(..., resume=True)` continues a killed run from its last complete
checkpoint. A NaN/Inf loss or gradient norm stops the run before the bad step is applied: summary.json says
`stop_reason: non_finite` and RunFailed (exit code 3) is raised. Secrets never reach the run dir
(dpo/rundir/secrets.py). Under torchrun / accelerate launch only rank 0 writes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

from dpo.analysis.model_card import write_model_card
from dpo.analysis.report import write_report_or_warn
from dpo.config.loading import changes_from_base, parse_override
from dpo.errors import NonFiniteError, RunFailed, UserError, UserErrors
from dpo.rundir import resume as resuming
from dpo.rundir.atomic import atomic_write_json, atomic_write_text, replace_dir
from dpo.rundir.files import (
    CHECKPOINT_PREFIX,
    DATA_CARD,
    FINAL,
    FINAL_STAGING,
    METRICS_LOG,
    RECIPE,
    RECIPE_CHANGES,
    SUMMARY,
    TRAINER_STATE,
    is_main_process,
    is_run_recipe,
    read_json_object,
)
from dpo.rundir.lock import RunLock
from dpo.rundir.secrets import redact, redact_data, restore_redacted
from dpo.rundir.writable import check_output_dir
from dpo.training.audit_use import apply_audit
from dpo.training.gate import CheckedRecipe, check, needs_audit
from dpo.training.integrations import configure_loggers, finish_wandb, write_tensorboard_markers
from dpo.training.samples import write_samples_or_warn
from dpo.training.secret_free import use_secret_free_loggers
from dpo.training.summary import finished_summary, non_finite_summary


def execute(
    recipe_path: str | Path,
    overrides=(),
    output_dir: str | Path | None = None,
    callbacks: list | None = None,
    extra_metrics: tuple[str, ...] = (),
    resume: bool = False,
    allow_data_change: bool = False,
):
    """Train one recipe; returns (summary, trainer). `callbacks` (transformers TrainerCallbacks) run before ours
    and may add held-out metrics named in `extra_metrics`. With `resume`, a run directory left by a killed run is
    continued from its last complete loadable checkpoint (an absent or empty one starts a new run); training data
    whose content hash differs from the run's data_card.json is refused unless `allow_data_change`."""
    started = time.time()
    # resumed from the run directory's own recipe.yaml: its redacted secrets come back from the environment, in memory.
    # `dpo train RUN_DIR/recipe.yaml --resume` needs no --output-dir (the recipe's name gives runs/<name>): the file
    # is known for a run's own by the run's files beside it
    if output_dir is not None:
        own = resume and Path(recipe_path).resolve() == (Path(output_dir) / RECIPE).resolve()
    else:
        own = resume and is_run_recipe(recipe_path)
    checked = check(recipe_path, overrides, extra_metrics, output_dir, restore=restore_redacted if own else None)
    run_dir = checked.run_dir
    resolved_yaml = checked.recipe.to_yaml(redact=redact_data)
    lock = _claim_run_dir(run_dir, resume)
    try:
        # under the lock: what the check finds (not finished, the same recipe and data, which checkpoint loads) stays
        # so until prepare() acts on it; a second resume gets "in use", not a run that finished meanwhile reopened
        found = None
        if resume:
            saved = functools.partial(_saved_recipe_problem, run_dir, extra_metrics)
            found = resuming.check(run_dir, resolved_yaml, checked.data.card, allow_data_change, saved)
        for warning in checked.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if needs_audit(checked):  # data.audit or label_smoothing: auto: audit the labels before anything is written
            checked = _audited(checked, found, allow_data_change)
        point = resuming.prepare(run_dir, found) if resume else resuming.ResumePoint(run_dir)
        if is_main_process():
            for warning in point.warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            for note in point.notes:
                print(f"resume: {note}", flush=True)
        if resume:
            changed = resuming.data_change(run_dir, checked.data.card)
            if changed:  # allowed, else resuming.check() refused it
                print(f"warning: {changed}; recorded in data_card.json", file=sys.stderr, flush=True)
            checked.data.card = resuming.resumed_data_card(run_dir, checked.data.card, point.step)
        changes = None  # a resumed run keeps its own record: from RUN_DIR/recipe.yaml every key would be a "change"
        if not (resume and (run_dir / RECIPE_CHANGES).is_file()):
            changes = {
                "recipe_file": str(checked.loaded.path.resolve()),  # a shipped recipe named bare: its file
                "overrides": [_recorded_override(str(o)) for o in overrides],
                "changes": changes_from_base(checked.loaded),
            }
        return _run(checked, point, resolved_yaml, changes, callbacks or [], started)
    finally:
        lock.release()


def _saved_recipe_problem(run_dir: Path, extra_metrics: tuple[str, ...]) -> str | None:
    """What the checks now say of the run's own recipe.yaml (the first problem), or None: it passes them. Asked only
    when a resume's recipe differs from it, to say whether `dpo train --resume RUN_DIR` would work instead."""
    try:
        check(run_dir / RECIPE, (), extra_metrics, run_dir, restore=restore_redacted)
    except UserError as exc:
        return str(exc.errors[0] if isinstance(exc, UserErrors) else exc)
    return None


def _audited(checked: CheckedRecipe, found: resuming.Survey | None, allow_data_change: bool) -> CheckedRecipe:
    """The recipe with the label audit applied, before a resume changes anything in the run directory (`prepare`):
    the audit may refuse it. Continuing trained weights (a loadable checkpoint), the audit the run was made with
    (data_card.json's, not yet rewritten) decides: its estimate, and the pairs dropped or flipped, unless the training
    data changed since (`allow_data_change`)."""
    run_dir, main = checked.run_dir, is_main_process()
    resumed = None
    if found is not None and found.resumable is not None:
        resumed = (read_json_object(run_dir / DATA_CARD) or {}).get("audit")
    changed = allow_data_change and resumed is not None and resuming.data_change(run_dir, checked.data.card) is not None
    return apply_audit(
        checked,
        run_dir,
        progress=checked.recipe.logging.progress_bar and main,
        write=main,
        resumed=resumed if isinstance(resumed, dict) else None,
        data_changed=changed,
    )


def _recorded_override(item: str) -> str:
    """A --set item as recipe_changes.json records it: as given, secrets redacted, also one its value spells escaped
    (a sweep passes its values as JSON, `\\u00e4` for a non-ASCII character): then the value is written again from
    its data, redacted."""
    text = redact(item)
    try:
        key, value = parse_override(item)
    except UserError:
        return text
    redacted = redact_data(value)
    return text if redacted == value else f"{redact(key)}={json.dumps(redacted, ensure_ascii=False)}"


def _claim_run_dir(run_dir: Path, resume: bool) -> RunLock:
    """Take the run directory's lock (one writer per run directory), before anything in it is read for a resume; a
    new run needs an empty directory."""
    check_output_dir(run_dir)  # the same check, and words, as every command that writes a directory
    lock = RunLock(run_dir)
    if not is_main_process():
        return lock  # the other processes of one multi-process run: rank 0 holds the lock for all of them
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()  # first, so that a directory in use says so rather than "not empty"
    if not resume and resuming.has_previous_attempt(run_dir):
        lock.release()
        raise UserError(
            "run directory is not empty; choose another --output-dir (or add --resume to continue it)",
            where=str(run_dir),
        )
    return lock


def trainer_inputs(checked: CheckedRecipe, callbacks: list) -> dict:
    """The keyword arguments of a (TRL or our) DPOTrainer for a checked recipe: model, tokenizer, LoRA, data."""
    from peft import LoraConfig

    from dpo.models import load_model, load_tokenizer

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
        "args": checked.dpo_config,
        "train_dataset": train_ds,
        "eval_dataset": eval_ds,
        "processing_class": load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code),
        "peft_config": peft_config,
        "callbacks": callbacks,
    }


def build_trainer(checked: CheckedRecipe, callbacks: list):
    """Our Trainer for a checked recipe."""
    from dpo.training.trainer import Trainer

    return Trainer(
        **trainer_inputs(checked, callbacks),
        loss_plan=checked.loss_plan,
        heldout_kl=checked.heldout_kl,
        noise_sigmas=checked.recipe.early_stopping.noise_sigmas,
        share_prompt=checked.recipe.model.share_prompt,
        heldout_kl_pairs=checked.recipe.logging.heldout_kl_pairs,
    )


def _print_plan(checked: CheckedRecipe) -> None:
    import torch

    from dpo.plan.recipe_options import plan_line

    try:
        reference_free = not checked.loss_plan.needs_reference
        print(plan_line(checked.recipe, checked.dpo_config, torch.cuda.is_available(), reference_free), flush=True)
    except UserError as exc:  # a model family the planner cannot count is no reason not to train
        print(f"plan: not available ({exc})", flush=True)


def _run(checked: CheckedRecipe, point, resolved_yaml: str, changes: dict | None, callbacks: list, started: float):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from dpo.training.autopilot import EVENT, autopilot_for
    from dpo.training.callbacks import (
        BestCheckpointCallback,
        CompactProgressCallback,
        MetricsFileCallback,
        ModelCardCallback,
    )

    recipe, run_dir = checked.recipe, checked.run_dir
    main = is_main_process()
    if main:
        atomic_write_text(run_dir / RECIPE, resolved_yaml)
        if changes is not None:
            atomic_write_json(run_dir / RECIPE_CHANGES, changes)
        atomic_write_json(run_dir / DATA_CARD, checked.data.card)
        _print_plan(checked)
    configure_loggers(recipe, run_dir, main)

    stopping = recipe.early_stopping
    best = BestCheckpointCallback(
        metric=stopping.metric,
        mode=stopping.mode,
        patience=stopping.patience,
        min_delta=stopping.min_delta,
        warmup_steps=stopping.warmup_steps,
        keep_best=stopping.patience is not None or recipe.autopilot.enabled,  # the autopilot may stop: keep the best
        noise_sigmas=stopping.noise_sigmas,
    )
    autopilot = autopilot_for(checked, run_dir / METRICS_LOG)  # None unless autopilot.enabled
    own = [
        MetricsFileCallback(run_dir / METRICS_LOG),
        best,
        ModelCardCallback(run_dir),
        *([autopilot] if autopilot else []),
    ]
    trainer = build_trainer(checked, [*callbacks, *own])
    if autopilot:
        autopilot.bind(trainer)
    use_secret_free_loggers(trainer)  # what transformers' wandb and TensorBoard callbacks write, scrubbed of secrets
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
    initial: dict = {}
    try:
        if point.checkpoint is None:
            initial = trainer.evaluate_untrained()  # step 0: the reference model's numbers, the before/after view
            if best.keep_best and best.best_step == 0:
                checkpoint_0 = Path(trainer.args.output_dir) / f"{CHECKPOINT_PREFIX}0"
                trainer.save_model(str(checkpoint_0))
                trainer.accelerator.wait_for_everyone()  # every process's part saved before the mark says complete
                if main:
                    write_model_card(checkpoint_0, run_dir, checkpoint_step=0)
                    resuming.mark_complete(checkpoint_0, 0)
            train_output = trainer.train()
        else:
            initial = resuming.initial_metrics(run_dir)
            saved = read_json_object(point.checkpoint / TRAINER_STATE) or {}
            best.load_state(saved.get("stateful_callbacks", {}).get(type(best).__name__, {}))
            if autopilot:  # its decisions up to the checkpoint, and the loss controls they set
                autopilot.load_state(saved.get("stateful_callbacks", {}).get(type(autopilot).__name__, {}))
            trainer.load_dpo_state(point.state, point.step)
            trainer.load_reference_cache(point.checkpoint)
            if resuming.training_ended(saved):  # the last step, or early stopping / the autopilot stopped it there
                train_output = trainer.finish_from_checkpoint(str(point.checkpoint))  # training had ended there
            else:
                train_output = trainer.train(resume_from_checkpoint=str(point.checkpoint))
    except NonFiniteError as exc:
        summary = non_finite_summary(exc, trainer, best, run_dir, initial, started)
        if autopilot:
            summary[EVENT] = autopilot.summary()
        if main:  # every process raises; one writes
            atomic_write_json(run_dir / SUMMARY, summary)
            if recipe.logging.wandb:
                finish_wandb(summary)  # else the wandb run stays open, and a next run in this process joins it
            write_report_or_warn(run_dir)
        # The others wait for it: a launcher (torchrun) stops every process of a run as soon as one exits with an
        # error, which would cut rank 0 off mid-write.
        trainer.accelerator.wait_for_everyone()
        last_good = summary["last_good_checkpoint"]
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
        raise RunFailed(f"{run_dir}: training stopped: {exc}; {where}", summary) from None

    restored = _restore_best(trainer, best)
    staging = run_dir / FINAL_STAGING  # final/ appears whole or not at all
    trainer.save_model(str(staging))  # writes on the main process only (all ranks take part)
    if main:
        trainer.processing_class.save_pretrained(str(staging))
        replace_dir(staging, run_dir / FINAL)
    loss_since = autopilot.loss_changed_at() if autopilot else -1  # the end-of-run warnings read the loss after it
    stop_reason = _stop_reason(best, autopilot, callbacks)
    summary = finished_summary(
        trainer, best, stopping, stop_reason, restored, initial, train_output, run_dir, started, loss_since
    )
    if autopilot:
        summary[EVENT] = autopilot.summary()
    if main:
        atomic_write_json(run_dir / SUMMARY, summary)
        write_model_card(run_dir / FINAL, run_dir)  # over peft's empty template, with the summary's numbers
        write_samples_or_warn(trainer, checked, run_dir, best.best_step if restored else trainer.state.global_step)
        if recipe.logging.tensorboard:
            write_tensorboard_markers(summary, run_dir)
        if recipe.logging.wandb:
            finish_wandb(summary)
        write_report_or_warn(run_dir)
    return summary, trainer


def _stop_reason(best, autopilot, callbacks: list) -> str:
    """Why training ended. The run's own rules first: where the autopilot or early stopping ended it, a caller's
    callback that stopped it at the same evaluation (a sweep's pruner) changed nothing, and the run ended as its
    recipe says (a sweep records the trial complete, with its value). Else a caller's callback that stopped it says
    so (`stop_reason`)."""
    if autopilot is not None and autopilot.stop_reason:
        return autopilot.stop_reason
    if best.stopped_at is not None:
        return "early_stopped"
    for callback in callbacks:
        reason = getattr(callback, "stop_reason", None)
        if reason:
            return reason
    return "completed"


def _restore_best(trainer, best) -> bool:
    """Load the best checkpoint's weights into the trainer's model when it is not the last step. True only when they
    were loaded: a best checkpoint that is gone, cut off, without its weights file or damaged (resume.unrestorable)
    leaves the last weights, with a warning, and summary.json says final_weights: last."""
    if not best.keep_best or best.best_step is None or best.best_step == trainer.state.global_step:
        return False
    checkpoint = Path(trainer.args.output_dir) / f"{CHECKPOINT_PREFIX}{best.best_step}"
    # transformers' loader only logs a warning when the weights file is missing (and raises on a damaged one)
    problem = resuming.unrestorable(checkpoint, _weights_files(trainer))
    if problem:
        if is_main_process():  # every process keeps its last weights; one says so
            why = f"the best checkpoint {checkpoint} cannot be loaded ({problem})"
            print(f"warning: {why}; final/ holds the last weights", file=sys.stderr, flush=True)
        return False
    trainer.state.best_model_checkpoint = str(checkpoint)
    trainer._load_best_model()  # transformers' own loader: handles PEFT adapters and full models
    return True


def _weights_files(trainer) -> tuple[str, ...]:
    """The files one of which transformers' best-model loader reads for this trainer's model; () under FSDP and
    DeepSpeed, whose loaders read folders of their own and fail loudly when something is missing."""
    from peft import PeftModel

    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return ()
    return resuming.ADAPTER_WEIGHTS if isinstance(trainer.model, PeftModel) else resuming.MODEL_WEIGHTS
