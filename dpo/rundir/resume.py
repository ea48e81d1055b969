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

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dpo.config.yaml_loader import safe_load
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_json, atomic_write_text
from dpo.rundir.lock import LOCK_NAME

COMPLETE_MARK = "checkpoint_complete.json"
DPO_STATE = "dpo_state.json"
TRAINER_STATE = "trainer_state.json"  # transformers' name
FINISHED = ("completed", "early_stopped")  # stop reasons of a run that has nothing left to do
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
END_OF_TRAINING_KEY = "train_runtime"  # transformers' last log line of a train() call


def mark_complete(folder: Path, step: int) -> None:
    atomic_write_json(folder / COMPLETE_MARK, {"step": step})


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """All checkpoint-N folders under `folder`, oldest first (complete or not)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


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
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += bool(line.strip())
            continue
        if not isinstance(record, dict) or record.get("step", 0) > step or END_OF_TRAINING_KEY in record:
            dropped += 1
            continue
        kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def initial_metrics(path: Path) -> dict:
    """The step-0 evaluation (the reference model's held-out numbers) from metrics.jsonl."""
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step") == 0 and "eval_loss" in record:
                return record
    return {}


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
    return run_dir.is_dir() and any(not p.name.startswith(LOCK_NAME) for p in run_dir.iterdir())


def check(run_dir: Path, resolved_recipe_yaml: str) -> None:
    """The user errors of a resume, raised before anything in the run directory changes."""
    if not has_previous_attempt(run_dir):
        return
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise UserError("has no recipe.yaml: not a run directory of dpo train; nothing to resume", where=str(run_dir))
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        try:
            reason = json.loads(summary_file.read_text(encoding="utf-8")).get("stop_reason")
        except ValueError:
            reason = None
        if reason in FINISHED:
            raise UserError(f"the run already finished (stop_reason {reason}); nothing to resume", where=str(run_dir))
    difference = _first_difference(safe_load(recipe_file.read_text(encoding="utf-8")), safe_load(resolved_recipe_yaml))
    if difference:
        raise UserError(
            f"{difference}; resume with the recipe the run was made with (or just `dpo train --resume {run_dir}`)",
            where=str(recipe_file),
        )


def prepare(run_dir: Path, checkpoint_dir: Path) -> ResumePoint:
    """Clean up what a killed attempt left half-done, and find where to continue. Call `check` first, and hold
    the run directory's lock."""
    point = ResumePoint(run_dir)
    if not has_previous_attempt(run_dir):
        point.fresh = True
        point.notes.append(f"nothing to resume in {run_dir}; starting a new run")
        return point
    for _, path in checkpoints(checkpoint_dir):
        if not is_complete(path):
            shutil.rmtree(path)
            point.notes.append(f"deleted {path.name}: its save was cut off")
    for leftover in (run_dir / ".final.tmp", run_dir / "summary.json"):  # a previous attempt's, now superseded
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    found = last_resumable(checkpoint_dir)
    if found is None:
        # killed before the first checkpoint: start over in place (keeps nothing that would be redone anyway)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        point.notes.append("no complete checkpoint yet: training again from step 0")
        return point
    point.step, point.checkpoint = found
    state_file = point.checkpoint / DPO_STATE
    point.state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    dropped = truncate_metrics(run_dir / "metrics.jsonl", point.step)
    point.notes.append(
        f"resuming from {point.checkpoint.name} (step {point.step}); dropped {dropped} metrics line(s) logged after it"
    )
    return point
