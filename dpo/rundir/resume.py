"""Resuming a killed run: complete checkpoints, the metrics file cut back to them, the same recipe.

Checkpoints (RUN_DIR/checkpoints/checkpoint-N) are written by transformers file by file; ours adds
`dpo_state.json` (state transformers does not keep: the beta controller, our train-vs-held-out
accumulators, run time) and then COMPLETE_MARK, written last and atomically. A checkpoint without the
mark was cut off mid-save: resume never picks it and deletes it. Early stopping's state (best value,
patience counter) travels in transformers' trainer_state.json (BestCheckpointCallback is an ExportableState).

`dpo train --resume` (see `prepare`) continues from the newest complete checkpoint to the recipe's total
number of steps: it drops metrics.jsonl lines logged after that checkpoint, so the file ends with each step
once; transformers restores the weights, optimizer, scheduler and RNG states from the checkpoint.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dpo.config.yaml_loader import safe_load
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_json, atomic_write_text
from dpo.rundir.files import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    COMPLETE_MARK,
    DPO_STATE,
    FINAL_STAGING,
    LOCK,
    METRICS_LOG,
    RECIPE,
    SUMMARY,
    TRAINER_STATE,
    is_main_process,
    metrics_rows,
    read_json,
    read_json_or_none,
    read_metrics,
)

FINISHED = ("completed", "early_stopped", "autopilot")  # stop reasons of a run that has nothing left to do
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
END_OF_TRAINING = "train_runtime"  # transformers' last log line of a train() call


def mark_complete(folder: Path, step: int) -> None:
    atomic_write_json(folder / COMPLETE_MARK, {"step": step})


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """All checkpoint-N folders under `folder`, oldest first (complete or not)."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # none yet, or removed by rank 0 while another rank looks
        return []
    return sorted((int(m.group(1)), p) for p in entries if p.is_dir() and (m := _CHECKPOINT.match(p.name)))


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARK).is_file()


def last_resumable(folder: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint that has trainer state (checkpoint-0, weights only, has none)."""
    usable = [(s, p) for s, p in checkpoints(folder) if is_complete(p) and (p / TRAINER_STATE).is_file()]
    return usable[-1] if usable else None


def rotate(folder: Path, keep_last: int | None, protect: str | Path | None) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, never the protected (best) one."""
    if not keep_last or keep_last <= 0:
        return
    complete = [p for _, p in checkpoints(folder) if is_complete(p)]
    protected = {p for p in complete[-keep_last:]} | ({Path(protect)} if protect else set())
    for path in complete:
        if path not in protected:
            shutil.rmtree(path, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the metrics.jsonl lines logged up to `step`; drop later ones, a torn last line, and the end-of-training
    line of an earlier attempt. Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    written = sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    kept = [line for line, event in metrics_rows(path) if event.get("step", 0) <= step and END_OF_TRAINING not in event]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return written - len(kept)


def initial_metrics(run_dir: Path) -> dict:
    """The step-0 evaluation (the reference model's held-out numbers) from RUN_DIR/metrics.jsonl."""
    return next((e for e in read_metrics(run_dir) if e.get("step") == 0 and "eval_loss" in e), {})


def _first_difference(old, new, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else f"{prefix.rstrip('.')}: the run was made with {old!r}, the recipe now gives {new!r}"


@dataclass
class ResumePoint:
    """Where `dpo train --resume` continues: `checkpoint` (None: from step 0, nothing usable was saved)."""

    run_dir: Path
    checkpoint: Path | None = None
    step: int = 0
    fresh: bool = False  # nothing of a previous attempt in the run directory: an ordinary new run
    notes: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # dpo_state.json of the checkpoint


def has_previous_attempt(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(not p.name.startswith(LOCK) for p in run_dir.iterdir())


def check(run_dir: Path, resolved_recipe_yaml: str) -> None:
    """The user errors of a resume, raised before anything in the run directory changes."""
    if not has_previous_attempt(run_dir):
        return
    recipe_file = run_dir / RECIPE
    if not recipe_file.is_file():
        raise UserError(f"has no {RECIPE}: not a run directory of dpo train; nothing to resume", where=str(run_dir))
    reason = (read_json_or_none(run_dir / SUMMARY) or {}).get("stop_reason")
    if reason in FINISHED:
        raise UserError(f"the run already finished (stop_reason {reason}); nothing to resume", where=str(run_dir))
    metrics_rows(run_dir / METRICS_LOG)  # a broken metrics file is reported now, before anything is changed
    difference = _first_difference(safe_load(recipe_file.read_text(encoding="utf-8")), safe_load(resolved_recipe_yaml))
    if difference:
        raise UserError(
            f"{difference}; resume with the recipe the run was made with (or just `dpo train --resume {run_dir}`)",
            where=str(recipe_file),
        )


def prepare(run_dir: Path) -> ResumePoint:
    """Clean up what a killed attempt left half-done (rank 0 only), and find where to continue (every rank: each
    loads the checkpoint). Call `check` first; rank 0 holds the run directory's lock.

    The other ranks may look while rank 0 cleans up: they only read complete checkpoints, which the clean-up never
    touches, so every rank finds the same one."""
    point = ResumePoint(run_dir)
    if not has_previous_attempt(run_dir):
        point.fresh = True
        point.notes.append(f"nothing to resume in {run_dir}; starting a new run")
        return point
    checkpoint_dir, writer = run_dir / CHECKPOINTS, is_main_process()
    if writer:
        point.notes += _remove_leftovers(run_dir)
    found = last_resumable(checkpoint_dir)
    if found is None:
        # killed before the first checkpoint: start over in place (keeps nothing that would be redone anyway)
        if writer:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            (run_dir / METRICS_LOG).unlink(missing_ok=True)
        point.notes.append("no complete checkpoint yet: training again from step 0")
        return point
    point.step, point.checkpoint = found
    point.state = read_json(point.checkpoint / DPO_STATE) or {}
    dropped = truncate_metrics(run_dir / METRICS_LOG, point.step) if writer else 0
    point.notes.append(
        f"resuming from {point.checkpoint.name} (step {point.step}); dropped {dropped} metrics line(s) logged after it"
    )
    return point


def _remove_leftovers(run_dir: Path) -> list[str]:
    """Checkpoints whose save was cut off, a half-written final/, the previous attempt's summary.json."""
    notes = []
    for _, path in checkpoints(run_dir / CHECKPOINTS):
        if not is_complete(path):
            shutil.rmtree(path)
            notes.append(f"deleted {path.name}: its save was cut off")
    shutil.rmtree(run_dir / FINAL_STAGING, ignore_errors=True)
    (run_dir / SUMMARY).unlink(missing_ok=True)
    return notes
