"""The gate of a training run: load and check everything a run will read before anything is written.

`check(recipe)` loads the recipe (dpo/config), builds its LossPlan and its trl.DPOConfig (once, for the run
directory the run will use), checks the model and tokenizer can be loaded (no weights) and prepares the data
(dpo/data). `dpo validate`, `dpo train`, `dpo sweep` (its base recipe) and the sweep's trials all pass through
here, so a bad input fails the same way everywhere, with one `UserError` naming the file and the key or row,
before a run directory exists. The recipe's checks report every problem they find together (one `error:` line each).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo.config.checks import check_no_op_keys
from dpo.config.loading import LoadedRecipe, load_recipe
from dpo.config.schema import Recipe
from dpo.data.prepare import PreparedData, prepare_data
from dpo.data.rows import SCORE_GAP, share_of
from dpo.errors import Problems, UserError, did_you_mean, raise_all
from dpo.metrics import EVAL_METRICS, lookup
from dpo.rundir.writable import check_output_dir
from dpo.training.beta import BETA_SCHEDULES


def default_output_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


@dataclass
class CheckedRecipe:
    """A recipe that passed every check that needs no weights: what `dpo validate` reports on and `dpo train` runs.

    run_dir     the run directory the run will write (not created here)
    dpo_config  trl.DPOConfig as the run uses it (its output_dir is run_dir/checkpoints)
    """

    loaded: LoadedRecipe
    data: PreparedData
    loss_plan: Any
    dpo_config: Any
    run_dir: Path

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    @property
    def heldout_kl(self) -> bool:
        """Whether evaluations log eval_kl: `logging.heldout_kl`, or by default wherever a reference exists."""
        return heldout_kl_on(self.recipe, self.loss_plan, self.dpo_config)

    @property
    def warnings(self) -> list[str]:
        """Settings that are valid but risky: printed by `dpo validate` and `dpo train`."""
        found = []
        if self.recipe.model.trust_remote_code:
            found.append(
                f"{self.loaded.where('model.trust_remote_code')}: true: Python code shipped with the model "
                f"'{self.recipe.model.name_or_path}' will run on this machine; keep it false unless you trust it"
            )
        split = self.data.card["split"]
        if split["prompts_in_both"] and not self.recipe.data.allow_eval_in_train:
            # only held-out data that is all training data is an error (prepare.check_eval_is_not_train); a copy of
            # the training file plus a row would pass, with held-out metrics that measure memorisation
            found.append(
                f"{self.loaded.where('data.eval')}: {split['prompts_in_both']} of the {split['eval_prompts']} held-out "
                "prompts are also training prompts (whitespace aside): held-out metrics on them measure memorisation, "
                "not generalisation; hold out other prompts (or drop data.eval to split off data.heldout_fraction of "
                "the prompts), or set data.allow_eval_in_train: true if that is meant"
            )
        return found


def check(
    recipe_path: str | Path,
    overrides=(),
    extra_metrics: tuple[str, ...] = (),
    output_dir: str | Path | None = None,
    writes_run_dir: bool = True,
    restore=None,
) -> CheckedRecipe:
    """Load and check a recipe and its data without loading model weights. Every user error surfaces here, before a
    run directory exists, but those of a resume, which read what the run directory holds: dpo/rundir/resume.py's
    `check`, and the label audit's refusal of pairs other than those the run was made with
    (`audit.content_hash_after`, dpo/training/audit_use.py), raised in `execute` under the run's lock, before anything
    is written. `extra_metrics`: held-out metrics that user callbacks add. `output_dir`: the run directory
    (default runs/<name>), which the DPOConfig points its checkpoints into. `writes_run_dir`: False for a command
    that writes elsewhere (`dpo data audit`, `dpo sweep`: each checks its own folder), so that the run directory it
    never creates is not checked. `restore`: for the recipe.yaml of a run directory (`load_recipe`)."""
    loaded = load_recipe(recipe_path, list(overrides), restore=restore)
    run_dir = Path(output_dir) if output_dir else default_output_dir(loaded.recipe)
    problems = Problems()  # the recipe's checks each run, and every problem they find is reported together
    if writes_run_dir:
        with problems.collect():
            check_output_dir(run_dir)  # a run that could not write its directory would fail after loading everything
    plan, dpo_config = check_settings(loaded, run_dir, problems, extra_metrics)
    with problems.collect():
        _check_model(loaded)
        _check_lora_targets(loaded)
    problems.raise_all()  # the data are read only from a recipe without problems
    recipe = loaded.recipe
    data = prepare_data(
        recipe.data,
        recipe.seed,
        where=loaded.where,
        tokenizer=_check_tokenizer(loaded),
        max_length=dpo_config.max_length,  # rows longer than this would be cut by TRL: invalid rows
    )
    _check_score_gaps(loaded, plan, data)
    train_pairs = len(data.train)
    audit = recipe.data.audit
    if audit is not None and audit.share is not None and share_of(audit.share, train_pairs) == 0:
        raise UserError(  # as audit_use.suspects counts them: rounded down
            f"has no effect: {audit.share} of the {train_pairs} training pairs is no pair",
            where=loaded.where("data.audit.share"),
        )
    if audit is not None and audit.suspects == "drop" and audit.share is not None:  # a count known before the audit
        train_pairs -= share_of(audit.share, train_pairs)  # as audit_use.suspects counts them
    dropped_by_threshold = audit is not None and audit.suspects == "drop" and audit.threshold is not None
    # a drop by threshold can shorten an epoch to fit before max_steps: the count after the audit decides that
    check_pairs_counted(loaded, dpo_config, train_pairs, evaluations=not dropped_by_threshold)
    checked = CheckedRecipe(loaded, data, plan, dpo_config, run_dir)
    if needs_audit(checked):  # the audit runs once the run directory is claimed: its data requirement is checked now
        from dpo.training.flip_estimate import check_auditable

        check_auditable(loaded, data.train)
    return checked


def check_settings(loaded: LoadedRecipe, run_dir: Path, problems: Problems, extra_metrics: tuple[str, ...] = ()):
    """The recipe's checks that read neither its data nor its model: its LossPlan, its DPOConfig (for `run_dir`), the
    keys that would have no effect and the checks across them. Each problem goes into `problems`; returns (plan,
    dpo_config), None where that could not be built. `dpo convert-trl` checks a converted recipe with these."""
    from dpo.training.arguments import build_dpo_config
    from dpo.training.autopilot import check_autopilot
    from dpo.training.loss_plan import loss_plan

    plan = dpo_config = None
    with problems.collect():
        plan = loss_plan(loaded)
    with problems.collect():
        # checks the `training` keys against DPOConfig's fields, then TRL's own checks of the values
        dpo_config = build_dpo_config(loaded, run_dir)
    with problems.collect():
        check_no_op_keys(loaded)
    if dpo_config is not None:
        with problems.collect():
            _check_heldout_kl(loaded, dpo_config)
        with problems.collect():
            _check_early_stopping(loaded, dpo_config, extra_metrics)
        with problems.collect():
            check_evaluations(loaded, dpo_config)
        if plan is not None:
            with problems.collect():
                _check_watched_metric_logged(loaded, plan, dpo_config)
            with problems.collect():
                _check_reference_metrics(loaded, plan, dpo_config)
            with problems.collect():
                check_autopilot(loaded, plan, dpo_config)
            with problems.collect():
                _check_beta_filter(loaded, plan, dpo_config)
    return plan, dpo_config


def needs_audit(checked: CheckedRecipe) -> bool:
    """The run audits its labels first (dpo/training/audit_use.py): `data.audit`, or a loss key set to `auto`."""
    from dpo.training.loss_plan import AUTO

    return checked.recipe.data.audit is not None or AUTO in checked.loss_plan.hyperparameters.values()


def _check_score_gaps(loaded: LoadedRecipe, plan, data: PreparedData) -> None:
    """A loss that takes the score gap (ODPO) needs one on every pair: pairs expanded from multi-response rows with
    scores (or ranks) have it, other pairs do not, nor do the new pairs of an augmentation (off_prompt_negatives):
    that step is named."""
    from dpo.training.losses import LOSSES

    if not plan.needs_score_gaps:
        return
    takers = ", ".join(name for name, _ in plan.terms if LOSSES[name].needs_score_gaps)
    for i, step in enumerate(data.card["augmented"]):  # the data had gaps, and an augmentation made pairs without
        if step.get("without_score_gap"):
            raise UserError(
                f"adds {step['without_score_gap']} training pairs without a score gap (new pairs have no score), and "
                f"{takers} needs the score gap of every pair; drop the step, or use a loss that reads none",
                where=f"{loaded.where('data.augment')}: step {i} ({step['type']})",
            )
    for split, rows in (("training", data.train), ("held-out", data.eval)):
        missing = sum(SCORE_GAP not in row for row in rows)
        if missing:
            raise UserError(
                f"{takers} needs the score gap of every pair, and {missing} of {len(rows)} {split} pairs have none "
                "(pairs get one from multi-response rows with scores, or a score_gap column)",
                where=loaded.where("loss.type"),
            )


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
            load_config(name, loaded.recipe.model.trust_remote_code)  # a model that needs its code to be read
    except UserError as exc:
        message = str(exc).removeprefix("model.name_or_path: ")
        raise UserError(message, where=loaded.where("model.name_or_path")) from None


@functools.lru_cache(maxsize=4)
def _module_names(name_or_path: str) -> tuple[tuple[str, bool], ...]:
    """The full name of each of the model's modules, and whether LoRA can adapt it, from a model built on the meta
    device (no weights)."""
    from dpo.models import load_config
    from dpo.plan.count import meta_model

    return tuple((name, _lora_wraps(m)) for name, m in meta_model(load_config(name_or_path)).named_modules() if name)


def _lora_wraps(module) -> bool:
    """A module kind PEFT's LoRA adapts (peft/tuners/lora/model.py: its dispatchers, quantized kinds aside); any other
    matched module (a block such as `mlp`, an activation) makes PEFT raise, after the run directory is made."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.MultiheadAttention, Conv1D)  # fmt: skip
    return isinstance(module, kinds)


def _check_lora_targets(loaded: LoadedRecipe) -> None:
    """Every name in peft.target_modules must match a module of the model as PEFT matches it (the full name, or its
    end after a '.'). PEFT fails only when none matches, and then after the run directory is made; a name among
    others that matches nothing (a typo) would be skipped silently, one layer less adapted than the recipe says."""
    peft, model = loaded.recipe.peft, loaded.recipe.model
    if peft is None or peft.target_modules == "all-linear":
        return
    where = loaded.where("peft.target_modules")
    if "all-linear" in peft.target_modules:
        raise UserError("all-linear is a value of its own: `target_modules: all-linear`, not in a list", where=where)
    if model.trust_remote_code:
        return  # its modules come from code we do not run before training
    try:
        names = _module_names(model.name_or_path)
    except (UserError, OSError, ValueError):
        return  # a model that cannot be built is _check_model's error, or training's
    matched = {t: [wraps for n, wraps in names if n == t or n.endswith(f".{t}")] for t in peft.target_modules}
    adaptable = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, wraps in names if wraps}))
    if missing := [t for t, kinds in matched.items() if not kinds]:
        raise UserError(
            f"{', '.join(missing)}: no module of {model.name_or_path} has that name (the layers LoRA adapts: "
            f"{adaptable})",
            where=where,
        )
    if blocks := [t for t, kinds in matched.items() if not all(kinds)]:
        raise UserError(
            f"{', '.join(blocks)}: not a layer LoRA adapts (Linear, Embedding, Conv, MultiheadAttention; those of "
            f"{model.name_or_path}: {adaptable})",
            where=where,
        )


def heldout_kl_on(recipe: Recipe, plan, dpo_config) -> bool:
    """Whether the run's evaluations log eval_kl: `logging.heldout_kl`, or by default wherever a reference exists."""
    wanted = recipe.logging.heldout_kl
    if wanted is None:  # a reference-free loss plan keeps no reference to measure the KL to
        return heldout_kl_available(recipe, dpo_config) and plan.needs_reference
    return wanted


def heldout_kl_available(recipe: Recipe, dpo_config) -> bool:
    """The held-out KL needs a reference model at evaluation: the adapter-disabled policy under LoRA, or TRL's
    reference copy; full fine-tuning with precomputed reference log-probs keeps neither."""
    return recipe.peft is not None or not dpo_config.precompute_ref_log_probs


def _check_heldout_kl(loaded: LoadedRecipe, dpo_config) -> None:
    logging = loaded.recipe.logging
    if heldout_kl_available(loaded.recipe, dpo_config):
        return
    if logging.heldout_kl:
        raise UserError(
            "needs a reference model at evaluation, which full fine-tuning (peft: null) with "
            "training.precompute_ref_log_probs: true does not keep; set one of them otherwise, or heldout_kl: false",
            where=loaded.where("logging.heldout_kl"),
        )
    # heldout_kl false is dpo/config/checks.py's; null (the default) is off here, which needs the DPOConfig to see
    default_pairs = type(logging).model_fields["heldout_kl_pairs"].default
    if logging.heldout_kl is None and logging.heldout_kl_pairs != default_pairs:
        raise UserError(
            "has no effect: the held-out KL is off, with no reference model at evaluation (full fine-tuning, peft: "
            "null, with training.precompute_ref_log_probs: true)",
            where=loaded.where("logging.heldout_kl_pairs"),
        )


def _check_watched_metric_logged(loaded: LoadedRecipe, plan, dpo_config) -> None:
    """early_stopping.metric must be logged at the evaluations that early stopping and the autopilot compare:
    `unlogged_metric`, the one list of what a metric needs, which a sweep's objective is checked with too."""
    metric = loaded.recipe.early_stopping.metric
    why = unlogged_metric(loaded.recipe, plan, dpo_config, metric)
    if why:
        raise UserError(f"{metric} is not logged: {why}", where=loaded.where("early_stopping.metric"))


def _check_reference_metrics(loaded: LoadedRecipe, plan, dpo_config) -> None:
    """A reference-free loss plan keeps no held-out KL: sizing the KL's subsample would be a knob that does nothing
    (watching a metric that needs a reference: `_check_watched_metric_logged`)."""
    if plan.needs_reference:
        return
    losses = [name for name, _ in plan.terms]
    logging = loaded.recipe.logging
    if logging.heldout_kl_pairs != type(logging).model_fields["heldout_kl_pairs"].default:
        raise UserError(
            f"has no effect: loss.type {losses} uses no reference model, so there is no held-out KL",
            where=loaded.where("logging.heldout_kl_pairs"),
        )


def _check_beta_filter(loaded: LoadedRecipe, plan, dpo_config) -> None:
    """beta-DPO's keep_fraction filters each training micro-batch on its own (dpo/training/beta.py): a fraction that
    keeps every pair of a micro-batch this size (0.95 of 8 rounds to 8, any fraction of 1) would filter nothing."""
    from dpo.training.beta import pairs_kept, smallest_filtered_batch

    keep_fraction = plan.beta_schedule.get("keep_fraction")
    batch, per_device = dpo_config.train_batch_size, dpo_config.per_device_train_batch_size
    if keep_fraction is None or keep_fraction >= 1 or pairs_kept(keep_fraction, batch) < batch:
        return
    size = f"training.per_device_train_batch_size {per_device}" + (
        f" x {batch // per_device} GPUs" if batch != per_device else ""
    )
    smallest = smallest_filtered_batch(keep_fraction)
    raise UserError(
        f"has no effect: keeping {keep_fraction:g} of each training micro-batch ({size}) rounds to keeping every "
        f"pair, so the filter drops none; it drops pairs from a micro-batch of {smallest} or more",
        where=loaded.where("loss.beta_schedule.keep_fraction"),
    )


def _check_early_stopping(loaded: LoadedRecipe, dpo_config, extra_metrics: tuple[str, ...]) -> None:
    from dpo.training.arguments import watched_direction

    stopping = loaded.recipe.early_stopping
    known = [*EVAL_METRICS, *extra_metrics]
    if stopping.metric not in known:  # whether a known one is logged: _check_watched_metric_logged
        raise UserError(
            f"unknown held-out metric '{stopping.metric}'{did_you_mean(stopping.metric, known)} "
            f"(valid: {', '.join(known)})",
            where=loaded.where("early_stopping.metric"),
        )
    watched_direction(loaded)  # a metric without a known better direction needs mode max or min
    watched = lookup(stopping.metric)
    schedule = BETA_SCHEDULES.get(loaded.recipe.loss.beta_schedule.type)
    users = [key for key, _ in _evaluation_users(loaded.recipe, dpo_config)]
    if watched is not None and watched.scales_with_beta and schedule is not None and schedule.moves and users:
        # a rising beta makes every evaluation a new best of the margin (early stopping never fires); the adaptive
        # beta evaluates with the last training batch's beta, so the comparisons follow one batch's noise
        raise UserError(
            f"{stopping.metric} is scaled by beta, which loss.beta_schedule ({loaded.recipe.loss.beta_schedule.type}) "
            f"moves during training: its values at two evaluations are not comparable, and {', '.join(users)} "
            "compares them; watch a metric beta does not scale, such as eval_rewards/accuracies",
            where=loaded.where("early_stopping.metric"),
        )


def no_train_logs_before_the_last_step(dpo_config) -> str | None:
    """Why a run of this DPOConfig logs no train values before its last step, or None: the train-minus-held-out
    gaps (eval_gap/*) are logged only at an evaluation with train values logged since the previous one."""
    steps, every = dpo_config.max_steps, dpo_config.logging_steps
    if dpo_config.logging_strategy == "no":
        return "training.logging_strategy 'no' logs none"
    if dpo_config.logging_strategy == "steps" and every >= 1 and 0 < steps <= every:
        return f"training.logging_steps {every} logs none before the last step (max_steps {steps})"
    return None


def unlogged_metric(recipe: Recipe, plan, dpo_config, metric: str) -> str | None:
    """Why the run's evaluations never log held-out `metric` (None: they log it, or it is not in the metric table):
    a metric that needs a reference model under a reference-free loss plan, the held-out KL off, a gap without train
    values logged between evaluations (a gap is logged only at an evaluation with train values logged since the
    previous one: early stopping and the autopilot would skip every evaluation). Early stopping's metric is checked
    with it (`_check_watched_metric_logged`), and a sweep's objective (dpo/sweep/driver.py), whose trials would
    otherwise each train to the end and then fail without it."""
    row = lookup(metric)
    if row is None:
        return None
    if row.needs_reference and not plan.needs_reference:
        return f"loss.type {[name for name, _ in plan.terms]} uses no reference model"
    if metric == "eval_kl" and not heldout_kl_on(recipe, plan, dpo_config):
        return (
            "the held-out KL is off (it needs logging.heldout_kl and a reference model at evaluation: LoRA, or "
            "training.precompute_ref_log_probs: false)"
        )
    if row.gap_of and (why := no_train_logs_before_the_last_step(dpo_config)):
        return f"it needs train values logged between evaluations, and {why}"
    return None


def check_pairs_counted(loaded: LoadedRecipe, dpo_config, train_pairs: int, evaluations: bool = True) -> None:
    """The checks that need the number of training pairs: after the data are read, and after the label audit
    drops pairs (dpo/training/audit_use.py). `evaluations`: check_evaluations too."""
    per_batch = dpo_config.train_batch_size * dpo_config.world_size
    if dpo_config.dataloader_drop_last and train_pairs < per_batch:  # an epoch of no full batch: nothing to train on
        across = f" ({dpo_config.train_batch_size} on each of {dpo_config.world_size} processes)"
        raise UserError(
            f"drops every training pair: {train_pairs} training pairs make no full batch of {per_batch}"
            f"{across if dpo_config.world_size > 1 else ''}",
            where=loaded.where("training.dataloader_drop_last"),
        )
    if evaluations:
        check_evaluations(loaded, dpo_config, train_pairs)


def check_evaluations(loaded: LoadedRecipe, dpo_config, train_pairs: int | None = None) -> None:
    """Early stopping, reduce-on-plateau and the autopilot act only on evaluations made during training: each one
    a recipe uses is an error when its run has none before the last step. Checked with the recipe alone first; a
    run measured in epochs, or evaluated at each epoch's end, has its evaluation steps set by the number of training
    pairs, so again once they are counted (`train_pairs`: after the data are read, and after the label audit drops
    pairs, dpo/training/audit_use.py)."""
    from dpo.training.arguments import no_evaluation_during_training

    reason = no_evaluation_during_training(dpo_config, train_pairs)
    if reason is None:
        return
    raise_all(
        [
            UserError(f"needs evaluations during training ({reason}): {consequence}", where=loaded.where(key))
            for key, consequence in _evaluation_users(loaded.recipe, dpo_config)
        ]
    )


def _evaluation_users(recipe: Recipe, dpo_config) -> list[tuple[str, str]]:
    """The controls of this recipe that act on held-out evaluations of early_stopping.metric: (the key that turns it
    on, what happens to it without evaluations)."""
    users = (  # (whether the recipe uses it, its key, what happens without evaluations)
        (recipe.early_stopping.patience is not None, "early_stopping.patience",
         "without them the untrained model would be kept as the best"),
        (dpo_config.lr_scheduler_type == "reduce_lr_on_plateau", "training.lr_scheduler_type",
         "reduce_lr_on_plateau would never cut the learning rate"),
        (recipe.autopilot.enabled, "autopilot",
         "turn it off with --set autopilot.enabled=false, or train plain.yaml (the quickstart without the autopilot)"),
    )  # fmt: skip
    return [(key, consequence) for used, key, consequence in users if used]
