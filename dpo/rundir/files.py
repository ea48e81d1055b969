"""The run directory's file names, and who may write them.

    recipe.yaml          the fully resolved recipe (a plain recipe `dpo train` accepts)
    recipe_changes.json  the recipe file, the --set overrides, and each key they changed vs the base chain
    data_card.json       rows read, dropped and why, split sizes, content hashes
    metrics.jsonl        one JSON object per log event, with `step`; TRL's metric names, eval ones eval_-prefixed
    summary.json         stop_reason, best_step, best_metric, initial/final metrics, runtime_s, steps
    final/               the trained adapter (LoRA) or model, plus the tokenizer
    checkpoints/         a complete checkpoint at every evaluation (the last two and the best are kept), for resume
    .lock                while a `dpo train` writes the directory (dpo/rundir/lock.py)
    report.html          the dashboard (dpo/analysis/report.py); `dpo report RUN_DIR` rebuilds it
    eval.json            `dpo eval RUN_DIR` (dpo/analysis/evaluate.py)

Under torchrun / accelerate launch every process runs the same code; only rank 0 writes (`is_main_process`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECIPE = "recipe.yaml"
RECIPE_CHANGES = "recipe_changes.json"
DATA_CARD = "data_card.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FINAL = "final"
CHECKPOINTS = "checkpoints"
REPORT = "report.html"
EVAL = "eval.json"


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (both set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep directory, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
