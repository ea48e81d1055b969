"""Terminal output for a finished run: the numbers a person checks first.

Every value from a run (paths, reasons, warnings, parameters) is escaped before rich reads it: rich takes text in
square brackets for markup, so `runs/[exp1]` or a reason holding `[redacted $HF_TOKEN]` would lose that text, and
`[/data/x.jsonl]` would raise an error after the run or sweep had finished."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dpo.metrics import headline_values


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    best = summary["best_metric"]
    table = Table(title=f"held-out metrics ({escape(str(summary['run_dir']))})")
    table.add_column("metric")
    table.add_column("start (step 0)", justify="right")
    table.add_column(f"best (step {summary['best_step']})", justify="right")
    table.add_column(f"end (step {summary['final_metrics'].get('eval_step')})", justify="right")
    for name, cells in headline_values(summary):
        table.add_row(name, *(_number(v) for v in cells))
    console.print(table)
    console.print(
        escape(
            f"{summary['steps']}/{summary['max_steps']} steps in {summary['runtime_s']:.0f} s, "
            f"stop reason: {summary['stop_reason']}, best {best['name']} = {_number(best['value'])} ({best['mode']}), "
            f"final weights: {summary['final_weights']}"
        )
    )
    overfitting = summary.get("overfitting") or {}
    if overfitting.get("onset_step") is not None:
        console.print(escape(f"overfitting onset at step {overfitting['onset_step']} ({overfitting['metric']})"))
    for warning in overfitting.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}")


def print_sweep_summary(summary: dict, console: Console | None = None) -> None:
    """The trials sorted by the objective (best first), the best parameters and their importance."""
    console = console or Console()
    objective = summary["objective"]
    table = Table(title=escape(f"sweep {summary['name']}: {objective['metric']} ({objective['direction']})"))
    for column in ("trial", "state", objective["metric"], "steps", "parameters", "reason"):
        table.add_column(escape(column), justify="right" if column in ("trial", "steps") else "left")
    for row in sorted_trials(summary):
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in row["params"].items())
        cells = (str(row["number"]), row["state"], value, str(row["steps"] or 0), params, row["reason"] or "")
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
    console.print(
        f"{summary['steps_total']} training steps in all, {summary['steps_saved_by_pruning']} saved by pruning"
    )
    if summary["best_trial"] is None:
        console.print("[yellow]no trial completed[/yellow]")
        return
    console.print(escape(f"best: trial {summary['best_trial']}, {objective['metric']} = {summary['best_value']:.4f}"))
    if summary["importance"]:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items())
        console.print(escape(f"parameter importance: {shown}"))


def sorted_trials(summary: dict) -> list[dict]:
    """Complete trials best first, then pruned, failed and running ones by number."""
    sign = -1 if summary["objective"]["direction"] == "maximize" else 1
    order = {"complete": 0, "pruned": 1, "failed": 2, "running": 3}
    return sorted(
        summary["trials"],
        key=lambda r: (order[r["state"]], sign * r["value"] if r["value"] is not None else 0, r["number"]),
    )


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value) -> str:
    """A held-out value as the summary table prints it: 4 decimals, "-" where there was none (no evaluation)."""
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"
