"""The console summary of a finished run: the headline held-out numbers at step 0, the best step and the end."""

from __future__ import annotations

from rich.console import Console

from dpo.analysis.console import print_summary
from dpo.metrics import HEADLINE


def test_the_summary_table_has_one_row_per_headline_number():
    values = {name: 0.1 * (i + 1) for i, name in enumerate(HEADLINE)}
    summary = {
        "run_dir": "runs/x",
        "best_step": 4,
        "best_metric": {"name": "eval_loss", "mode": "min", "value": 0.1},
        "initial_metrics": {},
        "best_metrics": values,
        "final_metrics": {**values, "eval_step": 6, "eval_entropy": 9.0},
        "steps": 6,
        "max_steps": 6,
        "runtime_s": 12.0,
        "stop_reason": "completed",
        "final_weights": "last",
    }
    console = Console(record=True, width=200)
    print_summary(summary, console)
    text = console.export_text()
    rows = [line for line in text.splitlines() if "eval_" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == list(HEADLINE)  # in the table's order, nothing else
    for row, value in zip(rows, values.values(), strict=True):
        assert [cell.strip() for cell in row.split("│")[2:5]] == ["-", f"{value:.4f}", f"{value:.4f}"]
    assert "best eval_loss = 0.1000 (min)" in text  # as in the table, not 0.1000000000000001
    summary["best_metric"]["value"] = None  # no evaluation ran
    console = Console(record=True, width=200)
    print_summary(summary, console)
    assert "best eval_loss = - (min)" in console.export_text()


def test_square_brackets_from_a_run_or_a_sweep_are_shown_as_written():
    """rich reads [..] as markup: a run directory `runs/[exp1]` lost its name, a reason `[redacted $HF_TOKEN]` went
    blank and `[/data/x.jsonl]` raised an error after the sweep had finished."""
    from dpo.analysis.console import print_sweep_summary

    summary = {
        "run_dir": "runs/[exp1]", "best_step": 0, "best_metric": {"name": "eval_loss", "mode": "min", "value": 0.1},
        "initial_metrics": {}, "best_metrics": {}, "final_metrics": {}, "steps": 1, "max_steps": 1, "runtime_s": 1.0,
        "stop_reason": "completed", "final_weights": "runs/[exp1]/final",
        "overfitting": {"warnings": ["chosen log-prob fell [bold]"]},
    }  # fmt: skip
    console = Console(record=True, width=300)
    print_summary(summary, console)
    text = console.export_text()
    assert "(runs/[exp1])" in text and "final weights: runs/[exp1]/final" in text and "fell [bold]" in text
    sweep = {
        "name": "s[1]", "objective": {"metric": "eval_loss", "direction": "minimize"}, "steps_total": 2,
        "steps_saved_by_pruning": 0, "best_trial": None, "importance": {},
        "trials": [{"number": 0, "state": "failed", "value": None, "steps": 1, "params": {"data.train": "[a]"},
                    "reason": "cannot read [/data/x.jsonl] with [redacted $HF_TOKEN]"}],
    }  # fmt: skip
    console = Console(record=True, width=300)
    print_sweep_summary(sweep, console)
    text = console.export_text()
    assert "sweep s[1]" in text and "data.train=[a]" in text
    assert "cannot read [/data/x.jsonl] with [redacted $HF_TOKEN]" in text
