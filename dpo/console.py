"""Terminal output for a finished run: the numbers a person checks first."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

HEADLINE_METRICS = ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/accuracies", "eval_loss")


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    best = summary["best_metric"]
    table = Table(title=f"held-out metrics ({summary['run_dir']})")
    table.add_column("metric")
    table.add_column("start (step 0)", justify="right")
    table.add_column(f"best (step {summary['best_step']})", justify="right")
    table.add_column(f"end (step {summary['final_metrics'].get('eval_step')})", justify="right")
    for name in HEADLINE_METRICS:
        cells = [summary[k].get(name) for k in ("initial_metrics", "best_metrics", "final_metrics")]
        table.add_row(name, *(f"{v:.4f}" if isinstance(v, int | float) else "-" for v in cells))
    console.print(table)
    console.print(
        f"{summary['steps']}/{summary['max_steps']} steps in {summary['runtime_s']:.0f} s, "
        f"stop reason: {summary['stop_reason']}, best {best['name']} = {best['value']} ({best['mode']}), "
        f"final weights: {summary['final_weights']}"
    )
    overfitting = summary.get("overfitting") or {}
    if overfitting.get("onset_step") is not None:
        console.print(f"overfitting onset at step {overfitting['onset_step']} ({overfitting['metric']})")
    for warning in overfitting.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
