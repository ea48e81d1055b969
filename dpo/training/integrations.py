"""The loggers a recipe can switch on besides metrics.jsonl: Weights & Biases and TensorBoard.

wandb goes online only when an API key is configured (or the recipe says online), never by surprise; its config
is the resolved recipe with secrets redacted, and the run's verdict (stop reason, best metric, the headline held-out
numbers of the best step, overfitting onset, the report's markers by step) becomes its summary; TensorBoard gets the
markers too (`write_tensorboard_markers`). transformers' own callbacks do the per-step
logging into the run opened here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dpo.analysis.report import run_markers
from dpo.config.schema import Recipe
from dpo.metrics import HEADLINE
from dpo.rundir.resume import FINISHED
from dpo.rundir.secrets import redact, redact_config
from dpo.training.secret_free import argv_redacted


def configure_loggers(recipe: Recipe, run_dir: Path, main_process: bool) -> None:
    """Environment for transformers' WandbCallback / TensorBoardCallback, and the wandb run (rank 0 only)."""
    mode = wandb_mode(recipe, run_dir)
    if mode is not None and main_process:
        _start_wandb(recipe, run_dir, mode)
    if recipe.logging.tensorboard:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")


def wandb_mode(recipe: Recipe, run_dir: Path) -> str | None:
    """offline / online (None without wandb), and the environment transformers' WandbCallback reads."""
    if not recipe.logging.wandb:
        return None
    mode = recipe.logging.wandb_mode
    if mode == "auto":
        has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read_netrc()
        mode = "online" if has_key else "offline"
    os.environ.update(
        WANDB_MODE=mode, WANDB_DIR=str(run_dir), WANDB_PROJECT=recipe.logging.wandb_project, WANDB_SILENT="true"
    )
    return mode


def _start_wandb(recipe: Recipe, run_dir: Path, mode: str) -> None:
    """Open the wandb run ourselves, so it carries the resolved recipe as its config and the sweep's group;
    transformers' WandbCallback then logs into this run (it only calls wandb.init when no run is open)."""
    import wandb

    group = recipe.logging.wandb_group
    with argv_redacted():  # wandb records the command line (a --set value may hold a secret)
        wandb.init(
            project=_wandb_name(recipe.logging.wandb_project),
            name=_wandb_name(recipe.name),
            group=_wandb_name(group) if group else group,
            dir=str(run_dir),
            mode=mode,
            config={"recipe": redact_config(recipe.model_dump(mode="json"))},
        )


def _wandb_name(name: str) -> str:
    """A run / project / group name with secrets replaced by "redacted" (wandb names are plain text, and
    `redact`'s "[redacted $NAME]" would name the variable that holds the secret in a place others read)."""
    redacted = redact(name)
    return name if redacted == name else re.sub(r"\[redacted \$[^\]]*\]", "redacted", redacted)


def finish_wandb(summary: dict) -> None:
    """The run's verdict as wandb summary values: what a person compares across runs in the wandb table."""
    import wandb

    if wandb.run is None:
        return
    best = summary["best_metric"]
    overfitting = summary.get("overfitting") or {}  # absent when the run stopped on a non-finite value
    at_best = summary.get("best_metrics") or {}  # the held-out numbers of the best step (absent when diverged)
    wandb.run.summary.update(
        {
            **{f"markers/{m.label}": m.x for m in run_markers(summary)},  # the report's vertical lines, by step
            "stop_reason": summary["stop_reason"],
            "best_step": summary["best_step"],
            "best_metric_name": best["name"],
            **{f"best/{name}": at_best[name] for name in HEADLINE if name in at_best},
            f"best/{best['name']}": best["value"],
            "overfitting_onset_step": overfitting.get("onset_step"),
            "overfitting_warnings": len(overfitting.get("warnings", [])),
        }
    )
    wandb.finish(exit_code=0 if summary["stop_reason"] in FINISHED else 1)


def write_tensorboard_markers(summary: dict, run_dir: Path) -> None:
    """The report's vertical lines (best step, early stop, overfitting onset) in TensorBoard: a scalar per marker
    at its step (markers/<what>, value = the step) and one text entry listing them, under RUN_DIR/tensorboard/markers
    (a run of its own next to transformers' events, so its steps do not mix with the metrics')."""
    from torch.utils.tensorboard import SummaryWriter

    markers = run_markers(summary)
    if not markers:
        return
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard" / "markers"))
    try:
        for m in markers:
            writer.add_scalar(f"markers/{m.label}", m.x, global_step=int(m.x))
        table = "\n".join(["| step | marker |", "|---|---|", *(f"| {m.x} | {m.label} |" for m in markers)])
        writer.add_text("markers", table, global_step=int(summary.get("steps") or 0))
    finally:
        writer.close()


def _read_netrc() -> str:
    try:
        return Path(os.path.expanduser("~/.netrc")).read_text()
    except OSError:
        return ""
