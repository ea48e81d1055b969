"""What a run directory says: overfitting diagnostics, the HTML report, `dpo eval`, the end-of-run console table.

Reads run directories and never imports the trainer or TRL (an import-linter contract), so it works on any
finished or killed run.
"""
