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


def validate(recipe: str | Path, overrides=()):
    """Check a recipe and its data without loading weights; returns the CheckedRecipe (dpo/training/gate.py)."""
    from dpo.training.gate import check

    return check(recipe, overrides)


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


def plan(source: str, options=None):
    """Count a model's parameters and plan DPO memory from its config (no weights); returns a Plan."""
    from dpo.plan.planner import build_plan

    return build_plan(source, options)


def inspect_data(target: str | Path, overrides=(), **options) -> dict:
    """Counts, token lengths, invalid rows and samples of a data file or a recipe's data.

    A recipe is checked whole, as loading it always did: the `loss` section's keys come from the loss table
    (dpo/training/loss_plan.py), which the data layer cannot read, so they are checked here."""
    from dpo.data.inspect import inspect_data as inspect

    if Path(target).suffix.lower() in (".yaml", ".yml"):
        from dpo.config.loading import load_recipe
        from dpo.training.loss_plan import loss_plan

        loss_plan(load_recipe(target, list(overrides)))
    return inspect(target, list(overrides), **options)
