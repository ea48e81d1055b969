"""The Python entry points: one function per `dpo` subcommand, each returning what the command prints.

    import dpo.api as dpo
    summary = dpo.train("recipes/quickstart.yaml", overrides=["loss.beta=0.2"], output_dir="runs/b02")
    checked = dpo.validate("recipes/quickstart.yaml")

Every function raises `dpo.errors.UserError` for bad input (nothing written) and `RunFailed` for a training run
that started but could not finish; dpo/cli.py turns them into one `error:` line and exit codes 2 and 3.
"""

from __future__ import annotations

from pathlib import Path

from dpo.errors import UserError


def train(
    recipe: str | Path,
    overrides=(),
    output_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: list | None = None,
    extra_metrics: tuple[str, ...] = (),
    allow_data_change: bool = False,
) -> dict:
    """Train one recipe and write its run directory; returns the summary (also in summary.json).

    With `resume`, `recipe` may be the run directory itself (its recipe.yaml is used). `callbacks`: transformers
    TrainerCallbacks run before ours, which may log held-out metrics named in `extra_metrics` (early stopping on
    one of those needs early_stopping.mode max or min: dpo's metric table cannot say which way is better).
    `allow_data_change`: resume even though the training data's content hash differs from the run's data card
    (refused otherwise); data_card.json records the change."""
    from dpo.training.execute import execute

    if allow_data_change and not resume:  # a flag that would change nothing: said, not ignored
        raise UserError("applies only with --resume (a run that starts reads its data as it is)",
                        where="--allow-data-change")  # fmt: skip
    recipe = Path(recipe)
    if resume and recipe.is_dir():
        if output_dir is not None and Path(output_dir).resolve() != recipe.resolve():
            raise UserError("give either a run directory or --output-dir, not both", where=str(recipe))
        output_dir, recipe = recipe, recipe / "recipe.yaml"
        if not recipe.is_file():
            raise UserError("has no recipe.yaml: not a run directory; nothing to resume", where=str(output_dir))
    summary, _ = execute(
        recipe, overrides, output_dir, callbacks, extra_metrics, resume=resume, allow_data_change=allow_data_change
    )
    return summary


def validate(recipe: str | Path, overrides=(), output_dir: str | Path | None = None):
    """Check a recipe and its data without loading weights; returns the CheckedRecipe (dpo/training/gate.py).
    The same gate `train` passes first (with the same `output_dir`), so what validate accepts, train accepts."""
    from dpo.training.gate import check

    return check(recipe, overrides, output_dir=output_dir)


def sweep(spec: str | Path, workers: int = 1, storage: str | None = None, output_dir=None, resume: bool = False):
    """Run, join or resume a sweep; returns its summary (also in SWEEP_DIR/sweep_summary.json)."""
    from dpo.sweep.driver import run_sweep

    return run_sweep(spec, workers=workers, storage=storage, output_dir=output_dir, resume=resume)


def report(path: str | Path) -> Path:
    """Write PATH/report.html for a run or a sweep directory; returns its path."""
    from dpo.analysis.report import write_report

    return write_report(path)


def evaluate(run_dir: str | Path, options=None) -> dict:
    """Evaluate a finished run against its reference; writes and returns RUN_DIR/eval.json."""
    from dpo.analysis.evaluate import evaluate_run

    return evaluate_run(run_dir, options)


def plan(source: str, options=None, given=()):
    """Count a model's parameters and plan DPO memory from its config (no weights); returns a Plan.

    SOURCE is a config.json, a model directory or alias, or a recipe (a .yaml file or a shipped recipe name): the
    plan then reads the model, LoRA, batch, gradient accumulation, length, dtype, gradient checkpointing and
    reference from the recipe and the trl.DPOConfig it builds, and the PlanOptions fields named in `given` (those
    set on the command line) replace what the recipe says."""
    import dataclasses

    from dpo.config.shipped import RECIPE_SUFFIXES, resolve_recipe_path
    from dpo.plan.options import PlanOptions
    from dpo.plan.planner import build_plan

    options = options or PlanOptions()
    recipe_file = resolve_recipe_path(source)
    if recipe_file.suffix not in RECIPE_SUFFIXES:
        _lora_targets_apply(options, given)
        return build_plan(source, options)
    from dpo.config.loading import load_recipe
    from dpo.plan.recipe_options import options_for_recipe
    from dpo.training.arguments import build_dpo_config
    from dpo.training.gate import default_output_dir
    from dpo.training.loss_plan import loss_plan

    loaded = load_recipe(recipe_file)
    losses = loss_plan(loaded)  # the recipe is checked whole, as `dpo validate` checks it, less data and tokenizer
    args = build_dpo_config(loaded, default_output_dir(loaded.recipe))  # its defaults: TRL's, as the run gets them
    from_recipe = options_for_recipe(
        loaded.recipe, args, cuda=options.device == "cuda", reference_free=not losses.needs_reference
    )
    chosen = dataclasses.replace(from_recipe, **{name: getattr(options, name) for name in given})
    if "dtype" in given and "autocast" not in given and chosen.dtype != "float32":
        chosen = dataclasses.replace(chosen, autocast=None)  # the recipe's autocast is over float32 weights only
    if chosen.reference == "synced" and chosen.lora_rank is not None and "reference" not in given:
        raise UserError(
            "TR-DPO moves a full copy of the model towards the policy: plan it with full fine-tuning (no --lora-rank),"
            " or give --reference for another setup",
            where=loaded.where("regularizers.sync_ref"),
        )
    _lora_targets_apply(chosen, given)
    planned = build_plan(loaded.recipe.model.name_or_path, chosen)
    planned.recipe = str(source)
    return planned


def _lora_targets_apply(options, given) -> None:
    """--lora-targets on a plan of full fine-tuning (--full, or a recipe without LoRA) would be ignored."""
    if "lora_targets" in given and options.lora_rank is None:
        raise UserError("applies only with LoRA: this plan is of full fine-tuning", where="--lora-targets")


def convert_trl(config: str | Path, output: str | Path | None = None):
    """Turn a `trl dpo` config file into a recipe; returns (the recipe's text, the Converted record with the keys
    that could not be mapped). With `output`, also writes the recipe there (an existing file is an error)."""
    from dpo.rundir.atomic import atomic_write_text
    from dpo.rundir.writable import check_output_dir
    from dpo.training.convert_trl import convert_trl as convert
    from dpo.training.convert_trl import recipe_yaml

    output = Path(output) if output is not None else None
    if output is not None:
        if output.exists() or output.is_symlink():
            raise UserError("already exists; choose another --output or remove it", where=str(output))
        check_output_dir(output.parent)  # before converting: a folder that cannot be written is one error line
    converted = convert(config)
    text = recipe_yaml(converted, Path(config), output)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, text)  # a killed write leaves no half recipe
    return text, converted


def recipes():
    """The shipped recipes and sweep specs (name, file, first comment line); a name runs as `dpo train NAME`."""
    from dpo.config.shipped import shipped_recipes

    return shipped_recipes()


def inspect_data(target: str | Path, overrides=(), **options) -> dict:
    """Counts, token lengths, invalid rows and samples of a data file or a recipe's data.

    A recipe's keys are checked as `dpo validate` checks them before it reads data (gate.check_settings: the loss
    table, the DPOConfig, the keys that would have no effect and the checks across them); every problem found is
    reported together. The run directory is not checked: inspecting writes none."""
    from dpo.config.shipped import RECIPE_SUFFIXES, resolve_recipe_path
    from dpo.data.inspect import inspect_data as inspect

    if resolve_recipe_path(target).suffix.lower() in RECIPE_SUFFIXES:  # a recipe file, or a shipped recipe's name
        target = resolve_recipe_path(target)
        from dpo.config.loading import load_recipe
        from dpo.errors import Problems
        from dpo.training.gate import check_settings, default_output_dir

        loaded = load_recipe(target, list(overrides))
        problems = Problems()
        check_settings(loaded, default_output_dir(loaded.recipe), problems)
        problems.raise_all()
    return inspect(target, list(overrides), **options)


def export(run_dir: str | Path, output: str | Path, merge: bool = False, push_to_hub: str | None = None) -> dict:
    """Write a run's adapter (or with `merge` the merged model), tokenizer and model card to `output`; optionally
    push it to the hub. Returns {output, weights, pushed_to}."""
    from dpo.serve.export import export_run

    return export_run(run_dir, output, merge=merge, push_to_hub=push_to_hub)


def generate(run_dir: str | Path, prompt: str | None = None, file: str | Path | None = None, n: int | None = None,
             options=None) -> list[dict]:  # fmt: skip
    """The trained model's and the reference's answers to `prompt` or to the prompts of a JSONL `file` (the first
    `n`); returns [{prompt, trained, reference}]."""
    from dpo.serve.generate import generate_for_run

    return generate_for_run(run_dir, prompt=prompt, file=file, n=n, options=options)


def compare(run_dirs, output: str | Path = "compare.html") -> Path:
    """One self-contained HTML page comparing runs: held-out curves overlaid and a table of their summaries."""
    from dpo.analysis.compare import write_comparison

    return write_comparison(run_dirs, output)


def audit_data(recipe: str | Path, overrides=(), output_dir: str | Path | None = None, progress: bool = True):
    """Audit a recipe's training labels with its model; writes OUTPUT_DIR/audit.json (default audits/<name>).
    Returns (AuditResult, path of audit.json)."""
    from dpo.training.audit import audit_recipe

    return audit_recipe(recipe, list(overrides), output_dir, progress)
