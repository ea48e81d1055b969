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
    rows = [line for line in console.export_text().splitlines() if "eval_" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == list(HEADLINE)  # in the table's order, nothing else
    for row, value in zip(rows, values.values(), strict=True):
        assert [cell.strip() for cell in row.split("│")[2:5]] == ["-", f"{value:.4f}", f"{value:.4f}"]
