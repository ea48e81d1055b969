"""Recipe -> trl.DPOConfig, built once per run (dpo/training/gate.py), with the checks that need TRL's field list.

* `training:` keys are fields of DPOConfig/TrainingArguments with values of the right type, and keys that
  have a home elsewhere in the recipe (beta under `loss`, seed at the top, ...) say so;
* our defaults where DPOConfig's do not suit a CPU or our run directory (checkpoints at each evaluation);
* reduce-on-plateau watches early stopping's metric in early stopping's direction.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from dpo.config.loading import LoadedRecipe
from dpo.config.schema import Recipe
from dpo.config.signatures import annotation_words, enum_values, show_value
from dpo.errors import UserError, did_you_mean, raise_all
from dpo.metrics import EVAL_METRICS, direction
from dpo.rundir.files import CHECKPOINTS

# DPOConfig fields set through another recipe key. Setting them under `training:` is an error that
# points to the right key, so there is exactly one place for each knob.
TRAINING_KEYS_ELSEWHERE: dict[str, str] = {
    "beta": "loss.beta",
    "loss_type": "loss.type",
    "loss_weights": "loss.weights",
    "label_smoothing": "loss.label_smoothing",
    "discopop_tau": "loss.discopop_tau",
    "seed": "seed (top level)",
    "output_dir": "the --output-dir option",
    "report_to": "logging.wandb / logging.tensorboard",
    "logging_dir": "logging.tensorboard (events go to RUN_DIR/tensorboard)",
    "disable_tqdm": "logging.progress_bar",
    "run_name": "name (top level)",
    "metric_for_best_model": "early_stopping.metric",
    "greater_is_better": "early_stopping.mode",
    "load_best_model_at_end": "early_stopping.patience (the best checkpoint is restored when it is set)",
    "model_init_kwargs": "model.dtype / model.trust_remote_code",
    "trust_remote_code": "model.trust_remote_code",
    "label_smoothing_factor": "loss.label_smoothing (DPO computes its own loss; this one would be ignored)",
    "resume_from_checkpoint": "the --resume option of dpo train (it picks the last complete checkpoint)",
    "hub_token": "the HF_TOKEN environment variable (a token in a recipe would be copied into the run directory)",
    "use_weighting": "regularizers.wpo",
    "ld_alpha": "regularizers.ld_alpha",
    "f_divergence_type": "regularizers.f_divergence",
    "f_alpha_divergence_coef": "regularizers.f_alpha",
    "sync_ref_model": "regularizers.sync_ref",
    "ref_model_sync_steps": "regularizers.sync_ref.every",
    "ref_model_mixup_alpha": "regularizers.sync_ref.mixup",
    "neftune_noise_alpha": "regularizers.neftune_alpha (ours perturbs the policy only, never the reference)",
}
# DPOConfig fields for what every run already does its own way: transformers' version would run beside ours.
# Setting them is an error that says so.
TRAINING_KEYS_BUILT_IN: dict[str, str] = {
    "eval_on_start": "every run evaluates the untrained model at step 0 (this would evaluate it a second time, and "
    "again at the checkpoint's step on --resume: one evaluation counted twice by early stopping and the autopilot)",
    "restore_callback_states_from_checkpoint": "dpo train --resume already restores early stopping's and the "
    "autopilot's state (transformers would rebuild those callbacks from their saved arguments and break the resume)",
}


def _cpu_friendly_defaults() -> dict[str, Any]:
    """Where our defaults differ from DPOConfig's, and why."""
    import torch

    bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "bf16": bf16_ok,  # DPOConfig defaults to bf16=True, which on CPU is slow and changes numerics
        "gradient_checkpointing": False,  # DPOConfig defaults to True; small models on CPU run ~30% faster without
        "logging_steps": 1,  # one metrics.jsonl line per step: the curves the report draws
        "eval_strategy": "steps",
        "eval_steps": 0.1,  # evaluate at every tenth of training (a fraction of max steps, as transformers allows)
        # save_strategy / save_steps: at every evaluation unless set (see build_dpo_config), so a killed run can resume
        "save_total_limit": 2,  # the last two complete checkpoints, plus the best one when early stopping is on
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning is a no-op (and a warning) on CPU
        # torchrun / accelerate launch on a machine without CUDA: without use_cpu, accelerate sets up no process
        # group and every process trains alone, each believing it is rank 0; with it, DDP over gloo
        "use_cpu": not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    }


def watched_direction(loaded: LoadedRecipe) -> str:
    """'max' or 'min': the direction early stopping and reduce-on-plateau watch early_stopping.metric in."""
    stopping = loaded.recipe.early_stopping
    try:
        return direction(stopping.metric, stopping.mode)
    except ValueError:
        if stopping.metric in EVAL_METRICS:
            reason = f"{stopping.metric} has no better direction"
        else:
            hint = did_you_mean(stopping.metric, EVAL_METRICS)
            reason = f"{stopping.metric} is not one of dpo's metrics{hint}"
        raise UserError(
            f"auto cannot tell whether higher or lower is better: {reason}; set max or min",
            where=loaded.where("early_stopping.mode"),
        ) from None


def steps_per_epoch(dpo_config, train_pairs: int) -> int:
    """Optimizer steps in one epoch over `train_pairs`, as transformers counts them: each process gets
    ceil(pairs / (batch x processes)) batches (floor with dataloader_drop_last; accelerate's BatchSamplerShard),
    and an epoch is those batches over gradient accumulation, rounded up (Trainer.set_initial_training_values).
    `train_batch_size` is the per-device batch times the GPUs one process drives. Not modelled: split_batches,
    sequence or tensor parallelism, auto_find_batch_size."""
    per_batch = dpo_config.train_batch_size * dpo_config.world_size
    batches = train_pairs // per_batch if dpo_config.dataloader_drop_last else math.ceil(train_pairs / per_batch)
    return max(math.ceil(batches / dpo_config.gradient_accumulation_steps), 1)


def _pairs_per_step(dpo_config, train_pairs: int) -> str:
    """How the pairs make steps, for a message: '100 training pairs at 16 a step on 2 processes'."""
    per_step = dpo_config.train_batch_size * dpo_config.world_size * dpo_config.gradient_accumulation_steps
    processes = f" on {dpo_config.world_size} processes" if dpo_config.world_size > 1 else ""
    return f"{train_pairs} training pairs at {per_step} a step{processes}"


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """When a run evaluates, as transformers schedules it (see no_evaluation_during_training): at `first` and every
    `interval` steps after it, and at the last of its `steps`. `interval` None: no evaluation point before the end
    (the steps strategy without eval_steps, or a run of no steps). `epoch`: an epoch's steps, where counted."""

    steps: int
    first: int
    interval: int | None
    epoch: int | None


def _evaluation_schedule(dpo_config, train_pairs: int | None) -> _Schedule | None:
    """The evaluation schedule of a run of this DPOConfig whose strategy is not 'no'; None where it needs the number
    of training pairs (a run measured in epochs, the epoch strategy) and `train_pairs` is not given."""
    steps, every, delay = dpo_config.max_steps, dpo_config.eval_steps, dpo_config.eval_delay or 0
    epoch = None
    if steps < 0 or dpo_config.eval_strategy == "epoch":
        if train_pairs is None:
            return None
        epoch = steps_per_epoch(dpo_config, train_pairs)
        if steps < 0:  # transformers' run length in epochs
            steps = math.ceil(dpo_config.num_train_epochs * epoch)
        if dpo_config.eval_strategy == "epoch":  # eval_delay counts epochs here
            return _Schedule(steps, epoch * max(1, math.ceil(delay)), epoch, epoch)
    if dpo_config.eval_strategy != "steps" or not every or steps <= 0:  # no steps (max_steps 0): nothing to evaluate
        return _Schedule(steps, steps, None, epoch)
    interval = math.ceil(steps * every) if every < 1 else int(every)
    return _Schedule(steps, interval * max(1, math.ceil(delay / interval)), interval, epoch)


def no_evaluation_during_training(dpo_config, train_pairs: int | None = None) -> str | None:
    """Why a run of this DPOConfig has no evaluation before its last step, or None: early stopping,
    reduce-on-plateau and the autopilot act only on evaluations made during training. transformers
    (TrainerState.compute_steps, DefaultFlowCallback) turns a fractional eval_steps into ceil(max_steps x
    eval_steps), evaluates at every multiple of it from eval_delay on, and once more at the last step; the epoch
    strategy evaluates at each epoch's end from epoch eval_delay on, and at the last step (the end of an epoch cut
    short by max_steps). So a run has no evaluation before its last step when the strategy is 'no', or when the
    first of those points is its last step or later. A run measured in epochs (max_steps -1) and the epoch strategy
    need the epoch's length in steps, so the number of training pairs: without `train_pairs` they pass (the gate
    checks again once the data are read). The count is for the processes this one runs with: `dpo validate` is
    one; `dpo train` under torchrun counts them all."""
    if dpo_config.eval_strategy == "no":
        return "training.eval_strategy is 'no'"
    schedule = _evaluation_schedule(dpo_config, train_pairs)
    if schedule is None or schedule.interval is None or schedule.first < schedule.steps:
        return None
    steps, every, delay = schedule.steps, dpo_config.eval_steps, dpo_config.eval_delay or 0
    length = f"training.max_steps {steps}"
    if schedule.epoch is not None:
        pairs = _pairs_per_step(dpo_config, train_pairs)
        epochs = f"training.num_train_epochs {dpo_config.num_train_epochs:g}"
        if dpo_config.eval_strategy == "epoch":
            if dpo_config.max_steps < 0:
                length = f"the run's {_steps(steps)} ({epochs})"
            if schedule.epoch >= steps:
                epoch = _steps(schedule.epoch)
                return f"training.eval_strategy 'epoch': an epoch is {epoch} ({pairs}), not fewer than {length}"
            first_end = f"the first epoch from training.eval_delay {delay:g} ends at step {schedule.first} ({pairs})"
            return f"training.eval_strategy 'epoch': {first_end}, not before {length}"
        length = f"the run's {_steps(steps)} ({epochs} over {pairs})"
    if schedule.interval >= steps:  # no evaluation before the last step, whatever the delay
        shown = f"{every:g} (every {_steps(schedule.interval)})" if every < 1 else f"{every:g}"
        return f"training.eval_steps {shown} >= {length}"
    return f"training.eval_delay {delay:g} leaves no evaluation before {length}"


def last_evaluation_before_the_end(dpo_config, train_pairs: int | None = None) -> int | None:
    """The step of the run's last evaluation before its last step (0: none), on the schedule
    no_evaluation_during_training judges (`_evaluation_schedule`): every multiple of the interval (eval_steps, or an
    epoch's steps under 'epoch') from the first one on. None where that needs the number of training pairs (a run
    measured in epochs, the epoch strategy) and it is not given. A sweep's median pruner prunes only from its
    n_warmup_steps on, and never at the last step."""
    if dpo_config.eval_strategy == "no":
        return 0
    schedule = _evaluation_schedule(dpo_config, train_pairs)
    if schedule is None:
        return None
    if schedule.interval is None or schedule.first >= schedule.steps:
        return 0
    first, interval = schedule.first, schedule.interval
    return first + (schedule.steps - 1 - first) // interval * interval


def _plateau_settings(loaded: LoadedRecipe, scheduler_kwargs: dict) -> dict:
    """Reduce-on-plateau watches the same held-out metric, in the same direction, as early stopping."""
    stopping = loaded.recipe.early_stopping
    mode = watched_direction(loaded)
    if scheduler_kwargs.get("mode", mode) != mode:
        raise UserError(
            f"mode {scheduler_kwargs['mode']!r} contradicts early_stopping ({stopping.metric} is '{mode}'); drop it",
            where=loaded.where("training.lr_scheduler_kwargs"),
        )
    return {
        "metric_for_best_model": stopping.metric,
        "greater_is_better": mode == "max",
        "lr_scheduler_kwargs": {**scheduler_kwargs, "mode": mode},
    }


def _dpo_config_fields() -> dict[str, dataclasses.Field]:
    from trl import DPOConfig

    return {f.name: f for f in dataclasses.fields(DPOConfig) if f.init}


def _type_ok(value: Any, annotation: Any) -> bool:
    """A check of YAML values against a dataclass annotation: ints count as floats, a bool is only true or false
    (`gradient_checkpointing: no` is the text 'no' in YAML 1.2, which Python would take as true), and a string enum
    (`SchedulerType | str`: transformers reads the text as the enum) takes only its members' values."""
    if annotation is Any or isinstance(annotation, str):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = enum_values(annotation)
        if members is not None and isinstance(value, str):
            return value in members
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    base = origin or annotation
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(base, type):
        if base in (list, tuple):
            return isinstance(value, list | tuple)
        if base is dict:
            return isinstance(value, dict)
        if issubclass(base, enum.Enum):  # str-valued enums (IntervalStrategy, ...) accept their members' values
            return value in {m.value for m in base}
        if issubclass(base, str):
            return isinstance(value, str)
        if base is bool:
            return isinstance(value, bool)
        return isinstance(value, base) or isinstance(value, dict)  # a config object (ParallelismConfig) as a mapping
    return True


def training_key_problem(key: str, value: Any = None) -> tuple[str, bool] | None:
    """Why `training.<key>` cannot be set, or None: (message, whether it names the key itself, i.e. the key has a
    home elsewhere, rather than being unknown). Shared by the recipe check, the sweep spec's key check and the TRL
    config converter. `value`, where known: a built-in key set to False is the default spelled out (a recipe
    converted from TRL's arguments) and changes nothing."""
    if key in TRAINING_KEYS_BUILT_IN and value is False:
        return None
    if key in TRAINING_KEYS_ELSEWHERE:
        return f"belongs elsewhere: use {TRAINING_KEYS_ELSEWHERE[key]}", True
    if key in TRAINING_KEYS_BUILT_IN:
        return f"is built in: {TRAINING_KEYS_BUILT_IN[key]}", True
    fields = _dpo_config_fields()
    if key not in fields:
        hint = did_you_mean(key, fields, prefix="training.")
        return f"unknown key 'training.{key}'{hint} (not a trl.DPOConfig field)", False
    return None


# Counts transformers and TRL divide by or size batches and tensors with, which DPOConfig takes at 0 or below: the
# step count per epoch divides by the batch and the accumulation (ZeroDivisionError in `dpo validate`), torch's
# DataLoader refuses a batch of 0 once the run directory exists, and every row is longer than a max_length of 0
POSITIVE_COUNTS: dict[str, str] = {
    "per_device_train_batch_size": "training pairs in a batch on each device",
    "per_device_eval_batch_size": "held-out pairs in a batch on each device",
    "gradient_accumulation_steps": "batches per optimizer step",
    "eval_accumulation_steps": "evaluation batches kept before they are gathered; null: all",
    "precompute_ref_batch_size": "pairs in a batch of the up-front reference pass; null: the batch sizes",
    "max_length": "tokens of prompt and answer in a row; null: no limit",
}

# Values DPOConfig takes without a word that fail only once the run directory exists (torch's DataLoader refuses a
# negative worker count, torch's Adam-family optimizers a negative rate, decay or epsilon and a beta outside [0, 1)),
# or that make a run with no steps (epochs at 0 or below): (lowest, above it only, below this, what the key counts)
BOUNDED: dict[str, tuple[float, bool, float | None, str]] = {
    "dataloader_num_workers": (0, False, None, "processes loading batches; 0: the training process loads them"),
    "learning_rate": (0, False, None, "the optimizer's step size"),
    "weight_decay": (0, False, None, "the optimizer's decay of the weights"),
    "adam_epsilon": (0, False, None, "Adam's denominator term"),
    "adam_beta1": (0, False, 1, "Adam's decay of its gradient average"),
    "adam_beta2": (0, False, 1, "Adam's decay of its squared-gradient average"),
    "num_train_epochs": (0, True, None, "passes over the training pairs when max_steps is not set"),
    "eval_delay": (0, False, None, "steps, or under eval_strategy 'epoch' epochs, before the first evaluation"),
}


def _bound_problem(key: str, value: float) -> str | None:
    """Why a number is outside BOUNDED[key]'s range, or None."""
    low, above, below, counts = BOUNDED[key]
    if (value > low if above else value >= low) and (below is None or value < below):
        return None
    wanted = f"above {low:g}" if above else f"{low:g} or more"
    if below is not None:
        wanted = f"from {low:g} to below {below:g}"
    return f"must be {wanted} ({counts}), got {value:g}"


def _max_steps_set(training: dict[str, Any]) -> bool:
    max_steps = training.get("max_steps")
    return isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0


def check_training(loaded: LoadedRecipe) -> dict[str, Any]:
    fields = _dpo_config_fields()
    problems = []  # every training key's problem, not only the first
    for key, value in loaded.recipe.training.items():
        where = loaded.where(f"training.{key}")
        problem = training_key_problem(key, value)
        if problem:
            message, names_the_key = problem
            problems.append(UserError(message, where=where if names_the_key else loaded.source(f"training.{key}")))
        elif not _type_ok(value, fields[key].type):
            wanted = annotation_words(fields[key].type)
            problems.append(UserError(f"expected {wanted}, got {show_value(value)}", where=where))
        elif key in POSITIVE_COUNTS and value is not None and value < 1:
            problems.append(UserError(f"must be 1 or more ({POSITIVE_COUNTS[key]}), got {value}", where=where))
        elif key in BOUNDED and value is not None and (problem := _bound_problem(key, value)):
            if key != "num_train_epochs" or not _max_steps_set(loaded.recipe.training):  # else a no-op (checks.py)
                problems.append(UserError(problem, where=where))
    raise_all(problems)
    return dict(loaded.recipe.training)


def build_dpo_config(loaded: LoadedRecipe, run_dir: Path):
    """The DPOConfig for a run in `run_dir`; raises UserError naming the recipe key when TRL rejects it."""
    from trl import DPOConfig

    recipe: Recipe = loaded.recipe
    user = check_training(loaded)
    kwargs = {**_cpu_friendly_defaults(), **user}
    if "save_strategy" not in user and "save_steps" not in user:
        # a checkpoint at each evaluation: what `dpo train --resume` continues from (dpo/rundir/resume.py)
        if kwargs["eval_strategy"] == "no":
            kwargs.update(save_strategy="steps", save_steps=0.1)
        else:
            every = kwargs.get("eval_steps") or kwargs["logging_steps"]  # transformers' fallback for eval_steps
            kwargs.update(save_strategy=kwargs["eval_strategy"], save_steps=every)
    report_to = (["wandb"] if recipe.logging.wandb else []) + (["tensorboard"] if recipe.logging.tensorboard else [])
    reg = recipe.regularizers
    kwargs.update(
        use_weighting=reg.wpo,
        ld_alpha=reg.ld_alpha,
        sync_ref_model=reg.sync_ref is not None,
        **(
            {"ref_model_sync_steps": reg.sync_ref.every, "ref_model_mixup_alpha": reg.sync_ref.mixup}
            if reg.sync_ref
            else {}
        ),
        output_dir=str(run_dir / CHECKPOINTS),
        seed=recipe.seed,
        # TRL loads a second copy of the model itself (the reference under full fine-tuning, FSDP's temporary copy)
        # with this flag: without it a model that exists only as custom code would fail to load there, and one whose
        # model_type transformers also knows would be built from transformers' class, not the policy's code
        trust_remote_code=recipe.model.trust_remote_code,
        run_name=recipe.name,
        beta=recipe.loss.beta,
        report_to=report_to or "none",
        disable_tqdm=not recipe.logging.progress_bar,
    )
    if kwargs.get("lr_scheduler_type") == "reduce_lr_on_plateau":
        kwargs.update(_plateau_settings(loaded, kwargs.get("lr_scheduler_kwargs") or {}))
    for key in ("eval_steps", "logging_steps", "save_steps"):  # transformers takes the step modulo these: not 0
        value = kwargs.get(key)
        if value is not None and value <= 0:
            raise UserError(
                f"must be above 0 (a number of steps, or below 1 a fraction of the run), got {value:g}",
                where=loaded.where(f"training.{key}"),
            )
    if str(getattr(kwargs.get("save_strategy"), "value", kwargs.get("save_strategy"))) == "best":
        # transformers saves under "best" only when its own metric_for_best_model improves, which dpo leaves unset
        # (early_stopping.metric is watched by our callback): no checkpoint would be written, nothing to resume or
        # restore
        raise UserError(
            "'best' saves only when transformers' metric_for_best_model improves, which dpo does not use: no "
            "checkpoint would be written; early_stopping.patience keeps and restores the best checkpoint "
            "(early_stopping.metric), and the default saves at every evaluation",
            where=loaded.where("training.save_strategy"),
        )
    try:
        with warnings.catch_warnings():
            # transformers 5 renames gradient_checkpointing (TRL still sets it): a FutureWarning users can't act on
            warnings.simplefilter("ignore", FutureWarning)
            return DPOConfig(**kwargs)
    except (ValueError, TypeError, OSError, ImportError) as exc:  # a file it reads is missing, a package it needs
        message = str(exc).splitlines()[0]
        key = _key_named(message, user)
        if key is not None:
            raise UserError(f"DPOConfig rejected it: {message}", where=loaded.where(f"training.{key}")) from None
        # blamed on the file that set the training keys, or on --set when it set one of them
        raise UserError(f"DPOConfig rejected the settings: {message}", where=loaded.where("training")) from None


def _key_named(message: str, training: dict[str, Any]) -> str | None:
    """The `training` key a DPOConfig error is about, where its message tells: the first key it names (transformers
    and TRL name the argument: "Got warmup_steps = -1", "--dataloader_prefetch_factor can only be set when ..."), or
    else the key whose text value it quotes ("No such file or directory: 'ds.json'"); None when it names neither."""
    named = [(found.start(), key) for key in training
             if (found := re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", message))]  # fmt: skip
    if named:
        return min(named)[1]
    quoted = [key for key, value in training.items()
              if isinstance(value, str) and value and any(f"{q}{value}{q}" in message for q in "'\"`")]  # fmt: skip
    return quoted[0] if len(quoted) == 1 else None
