"""Resuming a killed run: complete checkpoints, the metrics file cut back to them, the same recipe.

Checkpoints (RUN_DIR/checkpoints/checkpoint-N) are written by transformers file by file; ours adds
`dpo_state.json` (state transformers does not keep: the beta controller, our train-vs-held-out
accumulators, run time), `reference_logps.safetensors` (the cached reference log-probs, in a single process)
and then COMPLETE_MARK, written last and atomically. A checkpoint without the mark was cut off mid-save: resume
never picks it and deletes it. Early stopping's state (best value, patience counter) travels in transformers'
trainer_state.json (BestCheckpointCallback is an ExportableState).

`dpo train --resume` (see `prepare`) continues from the newest complete checkpoint to the recipe's total
number of steps: it drops metrics.jsonl lines logged after that checkpoint, so the file ends with each step
once; transformers restores the weights, optimizer, scheduler and RNG states from the checkpoint.

A complete checkpoint can still be damaged afterwards (a disk that lost the end of a file, a file edited or removed
by hand). Resume requires every file it will load (`missing_file`) and reads each (`unloadable`): the JSON files
parse, each safetensors file's header covers the file exactly, each torch file's zip CRCs hold; `check` does this
once per checkpoint, newest first, and `prepare` acts on what it found (`Survey`). A damaged newest checkpoint is
skipped with a warning and deleted, and the previous loadable one is used; when complete checkpoints exist but none
is loadable, resume refuses (UserError) rather than silently start over. A checkpoint is deleted mark first
(`delete_checkpoint`), so that a deletion cut off midway never leaves a complete-looking checkpoint with files
missing. The best checkpoint early stopping keeps for final/ is
checked too (`unrestorable`): when it cannot be loaded, a warning, and final/ gets the last weights. A checkpoint saved
with training.save_only_model (no optimizer, scheduler or RNG state) is not trained on from (`check`). The training
data must be what the run was made with (the content hashes of data_card.json), unless the caller allows a change,
which data_card.json then records and every later resume carries over (`resumed_data_card`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dpo.config.loading import absolute_local_model
from dpo.config.yaml_loader import read_yaml_mapping, safe_load
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_json, atomic_write_text, sync_folder
from dpo.rundir.files import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    COMPLETE_MARK,
    DATA_CARD,
    DELETING_PREFIX,
    DPO_STATE,
    FINAL_OLD,
    FINAL_STAGING,
    LOCK,
    METRICS_LOG,
    RECIPE,
    REFERENCE_LOGPS,
    SUMMARY,
    TRAINER_STATE,
    is_main_process,
    metrics_rows,
    read_json_object,
    read_metrics,
)
from dpo.rundir.secrets import REDACTED, redact_data, set_it_again

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


def delete_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint folder so that no kill along the way leaves what looks like a complete checkpoint.

    rmtree unlinks in directory order, which puts the weights before COMPLETE_MARK: cut off midway, a plain rmtree
    left a marked checkpoint without its weights (or optimizer), which resume then trusted. So the folder is renamed
    first (one atomic step, flushed to disk) to DELETING_PREFIX + its name, which no checkpoint listing matches, and
    only then removed; a kill in between leaves the renamed folder, which the next resume removes
    (`_remove_leftovers`)."""
    doomed = checkpoint.with_name(f"{DELETING_PREFIX}{checkpoint.name}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by an earlier kill: a rename cannot replace a full folder
    try:
        os.replace(checkpoint, doomed)
    except FileNotFoundError:
        return
    sync_folder(checkpoint.parent)  # the rename reaches the disk before any file of the folder goes
    shutil.rmtree(doomed, ignore_errors=True)


def candidates(folder: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints a resume may continue from, oldest first: all but checkpoint-0 (the untrained weights
    early stopping keeps, weights only). One of them without trainer state is damaged (`unloadable`), not skipped: a
    run whose checkpoints all lack it must be refused, not started again from step 0 over them."""
    return [(s, p) for s, p in checkpoints(folder) if is_complete(p) and (s > 0 or (p / TRAINER_STATE).is_file())]


@dataclass
class Survey:
    """What resume found among the complete checkpoints (`survey`), read once per resume: `check` works it out and
    `prepare` acts on it (reading a checkpoint means a checksum pass over its optimizer state, gigabytes for a big
    model)."""

    complete: list[tuple[int, Path]]  # `candidates`, oldest first
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer than `resumable`, newest first: and why
    resumable: tuple[int, Path] | None = None  # the newest one that can be loaded


def survey(folder: Path, save_only_model: bool = False) -> Survey:
    """Read the complete checkpoints under `folder` from the newest back, until one can be loaded (`unloadable`;
    `save_only_model`: the run's training.save_only_model)."""
    found = Survey(candidates(folder))
    for step, path in reversed(found.complete):
        reason = unloadable(path, save_only_model=save_only_model)
        if reason is None:
            found.resumable = (step, path)
            break
        found.damaged.append((path, reason))
    return found


def last_resumable(folder: Path, save_only_model: bool = False) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files are all there and can be loaded."""
    return survey(folder, save_only_model).resumable


# Files of a checkpoint that transformers pickles but never loads on resume (training_args.bin: the arguments).
_NOT_LOADED = ("training_args.bin",)
# Files and folders of a checkpoint that only a resume reads, besides the weights (transformers' optimizer,
# scheduler, scaler and RNG states and its trainer state, FSDP's optimizer_N/, ours): restoring a best checkpoint
# into final/ needs none. Not DeepSpeed's global_stepN/*optim_states files: under ZeRO its load of the best
# checkpoint reads them, and rebuilds the weights from the fp32 master copy they hold.
_STATE_FILES = "|".join(map(re.escape, (TRAINER_STATE, DPO_STATE, REFERENCE_LOGPS)))
_RESUME_STATE = re.compile(rf"^(optimizer|scheduler|scaler|rng_state|{_STATE_FILES})")
# The weights files transformers' _load_best_model reads in a single process, for a PEFT adapter and for a full
# model. With none of them there it only logs a warning and keeps the weights it has.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_WEIGHTS_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # each names its shard files
# What FSDP and DeepSpeed save in a layout of their own (transformers' _save_optimizer_and_scheduler, through
# accelerate): FSDP's pytorch_model_fsdp*.bin or pytorch_model_fsdp_N/ beside its optimizer*.bin or optimizer_N/, and
# DeepSpeed's global_stepN/ (weights and optimizer, and its own scheduler). Their loaders read those, and fail loudly
# when one is missing; the weights, optimizer.pt and scheduler.pt a single process needs may be absent there.
_FSDP_OR_DEEPSPEED = re.compile(r"^(pytorch_model_fsdp|global_step\d)")
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")  # rng_state.pth, or rng_state_N.pth per process


def missing_file(checkpoint: Path, save_only_model: bool = False) -> str | None:
    """The first file that a resume from `checkpoint` loads and that is not there, or None.

    Every checkpoint has trainer_state.json and dpo_state.json, and a weights file: the adapter (with its
    adapter_config.json) or the model (with every shard its index names). Unless the run saved with
    training.save_only_model (`save_only_model`, the recipe's key), also the RNG state, and optimizer.pt and
    scheduler.pt. Saved by FSDP or DeepSpeed (`_FSDP_OR_DEEPSPEED`), the weights and optimizer are in their own files,
    not required here. transformers skips a missing optimizer, scheduler or RNG file without a word (the run would go
    on with fresh AdamW moments, the schedule at step 0), and a missing dpo_state.json would reset the beta
    controller and the run's sums; missing weights fail the resume with a traceback."""
    names = {p.name for p in checkpoint.iterdir()}
    sharded = any(_FSDP_OR_DEEPSPEED.match(name) for name in names)
    required = []
    if not sharded:
        weights = weights_files(checkpoint) or (ADAPTER_WEIGHTS if "adapter_config.json" in names else MODEL_WEIGHTS)
        if not names & set(weights):
            return weights[0]
        required += ["adapter_config.json"] if weights == ADAPTER_WEIGHTS else _shards(checkpoint, names)
    required += [TRAINER_STATE, DPO_STATE]
    if not save_only_model:
        if not sharded:
            required += ["optimizer.pt", "scheduler.pt"]
        if not any(_RNG_STATE.match(name) for name in names):
            required.append("rng_state.pth")
    return next((name for name in required if name not in names), None)


def _shards(checkpoint: Path, names: set[str]) -> list[str]:
    """The shard files the weights index of `checkpoint` names (none for a model in one file, or an index that does
    not parse: `unloadable` reports that)."""
    shards = []
    for index in _WEIGHTS_INDEXES:
        if index in names:
            try:
                weight_map = json.loads((checkpoint / index).read_text(encoding="utf-8")).get("weight_map", {})
                shards += sorted({str(name) for name in weight_map.values()})
            except (ValueError, UnicodeDecodeError, AttributeError, OSError):
                pass
    return shards


def unloadable(checkpoint: Path, weights_only: bool = False, save_only_model: bool = False) -> str | None:
    """Why a complete checkpoint cannot be resumed from ("trainer_state.json: not valid JSON", "optimizer.pt:
    missing"), or None.

    Every file a resume loads must be there (`missing_file`; `save_only_model`: the run's training.save_only_model,
    whose checkpoints hold no optimizer, scheduler or RNG state). Then it reads what resume loads, without
    unpickling: JSON files parse (trainer_state.json and dpo_state.json are objects), safetensors headers cover their
    files exactly (a truncated file fails), torch files (optimizer, scheduler, RNG states: zip archives) pass their
    CRC check. Damage that keeps every file's structure and checksum (bytes flipped inside safetensors tensor data,
    which carries no checksum) is not detected. With `weights_only`, only what restoring the weights reads (a best
    checkpoint's, into final/): not the state only a resume needs, and no file is required (`unrestorable` asks for
    the weights file)."""
    from safetensors import SafetensorError, safe_open

    missing = None if weights_only else missing_file(checkpoint, save_only_model)
    if missing is not None:
        return f"{missing}: missing"
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        name = str(path.relative_to(checkpoint))
        if weights_only and _RESUME_STATE.search(name):
            continue
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                if path.name in (TRAINER_STATE, DPO_STATE) and not isinstance(data, dict):
                    return f"{name}: not a JSON object"
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as handle:
                    handle.keys()
            elif path.suffix in (".pt", ".pth", ".bin") and path.name not in _NOT_LOADED:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{name}: damaged ({bad} fails its checksum)"
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            return f"{name}: not valid JSON ({_first_line(exc)})"
        except (SafetensorError, zipfile.BadZipFile, EOFError, OSError) as exc:
            return f"{name}: cannot be read ({_first_line(exc)})"
    return None


def weights_files(checkpoint: Path) -> tuple[str, ...]:
    """The kind of weights files `checkpoint` holds (ADAPTER_WEIGHTS or MODEL_WEIGHTS), or () for neither (FSDP and
    DeepSpeed keep the weights in folders of their own, and their loaders fail loudly when a file is missing)."""
    for names in (ADAPTER_WEIGHTS, MODEL_WEIGHTS):
        if any((checkpoint / name).is_file() for name in names):
            return names
    return ()


def unrestorable(checkpoint: Path, weights: tuple[str, ...] = ()) -> str | None:
    """Why the weights of `checkpoint` (the best one, restored into final/ at the end) cannot be loaded, or None: it is
    gone, its save was cut off, it has none of `weights` (one of which the loader needs), or a weights file is damaged
    (`unloadable`). Its optimizer, scheduler and trainer state are not needed and not read."""
    if not checkpoint.is_dir():
        return "it is gone"
    if not is_complete(checkpoint):
        return f"it has no {COMPLETE_MARK}: its save was cut off"
    if weights and not any((checkpoint / name).is_file() for name in weights):
        return f"it has no weights file ({' or '.join(weights)})"
    return unloadable(checkpoint, weights_only=True)


def best_checkpoint_named(checkpoint_dir: Path, saved: dict) -> Path | None:
    """The best checkpoint (kept by early stopping, restored into final/ at the end) that a checkpoint's
    trainer_state.json (`saved`) names, under `checkpoint_dir`, or None.

    transformers' best_model_checkpoint is taken by its folder name: it holds the path as spelled when it was saved
    (relative to another working directory, or absolute). Where transformers dropped it (it does on a resume when
    that path does not exist from where it runs) the early-stopping bookkeeping that keeps the best checkpoint still
    has its step (a stateful callback's `keep_best` and `best_step`, as BestCheckpointCallback saves them)."""
    recorded = saved.get("best_model_checkpoint")
    if isinstance(recorded, str) and _CHECKPOINT.match(Path(recorded).name):
        return checkpoint_dir / Path(recorded).name
    for state in _callback_states(saved):
        step = state.get("attributes", {}).get("best_step")
        if state.get("args", {}).get("keep_best") and type(step) is int:
            return checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    return None


def training_ended(saved: dict) -> bool:
    """Had training ended at the checkpoint whose trainer_state.json is `saved`: its last step, or a callback (early
    stopping, the autopilot) recorded where it stopped the run? Resuming there trains no further step."""
    if any(state.get("attributes", {}).get("stopped_at") is not None for state in _callback_states(saved)):
        return True
    step, total = saved.get("global_step", 0), saved.get("max_steps", 0)
    return isinstance(step, int) and isinstance(total, int) and step >= total


def _callback_states(saved: dict) -> list[dict]:
    """The states of the stateful callbacks in a trainer_state.json, each {"args": {...}, "attributes": {...}}
    (transformers keeps a list for a class it holds several of); anything else there is left out."""
    callbacks = saved.get("stateful_callbacks")
    if not isinstance(callbacks, dict):
        return []
    states = [state for value in callbacks.values() for state in (value if isinstance(value, list) else [value])]
    return [
        state
        for state in states
        if isinstance(state, dict)
        and isinstance(state.get("args", {}), dict)
        and isinstance(state.get("attributes", {}), dict)
    ]


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def rotate(folder: Path, keep_last: int | None, protect: str | Path | None) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, never the protected (best) one."""
    if not keep_last or keep_last <= 0:
        return
    complete = [p for _, p in checkpoints(folder) if is_complete(p)]
    # compared resolved: the protected path may be spelled relative and the folder absolute, or the reverse
    protected = {p.resolve() for p in complete[-keep_last:]} | ({Path(protect).resolve()} if protect else set())
    for path in complete:
        if path.resolve() not in protected:
            delete_checkpoint(path)


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


def _first_difference(old, new, prefix: str = "") -> tuple[str, object, object] | None:
    """The first key whose value differs between the run's recipe (`old`) and the one given now (`new`): (key, old
    value, new value), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else (prefix.rstrip("."), old, new)


def _recipe_changed(run_dir: Path, key: str, old, new, saved_problem: Callable[[], str | None] | None = None) -> str:
    """Why resume refuses the recipe given now: its value of `key` is `new` where the run's was `old`.

    Where the run's value held a secret (recipe.yaml holds it as "[redacted $NAME]"), the recipe need not have
    changed: the value given now is compared redacted with the variables set now, so with NAME unset the secret shows
    as written. Then the message names the variable, and shows neither value (an unset variable's secret cannot be
    redacted from the output).

    Else the advice is to resume with the run's own recipe, unless that fails the checks now (`saved_problem`: the
    first error, or None; the caller runs the checks, which live above this layer). Worded for any failure, not only
    a check added since the run was made: a data file moved, a model folder gone, a redacted secret's variable unset
    fail them too. Then the change may be the one the check asks for, and it belongs in RUN_DIR/recipe.yaml too."""
    names = list(dict.fromkeys(REDACTED.findall(str(old))))
    unset = [name for name in names if not os.environ.get(name)]
    if unset:
        return (
            f"{key}: the run was made with the value of ${unset[0]} in it (recipe.yaml holds it redacted), and "
            f"{set_it_again(unset[0])}"
        )
    if names:
        return (
            f"{key}: differs from the run's, which held the value of ${names[0]} (recipe.yaml holds it redacted; "
            f"values not shown): {names[0]} may hold another value now than when the run was made, or the recipe "
            f"changed; resume with the recipe and {names[0]} the run was made with"
        )
    changed = f"{key}: the run was made with {old!r}, the recipe now gives {new!r}"
    problem = saved_problem() if saved_problem is not None else None
    if problem:
        return (
            f"{changed}; the run's {RECIPE} now fails a check ({problem}): if this change is what that check asks "
            f"for, make the same change in {run_dir / RECIPE} and resume again"
        )
    return f"{changed}; resume with the recipe the run was made with (or just `dpo train --resume {run_dir}`)"


@dataclass
class ResumePoint:
    """Where `dpo train --resume` continues: `checkpoint` (None: from step 0, nothing usable was saved)."""

    run_dir: Path
    checkpoint: Path | None = None
    step: int = 0
    fresh: bool = False  # nothing of a previous attempt in the run directory: an ordinary new run
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # damaged checkpoints skipped (printed as `warning:` lines)
    state: dict = field(default_factory=dict)  # dpo_state.json of the checkpoint


def has_previous_attempt(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(not p.name.startswith(LOCK) for p in run_dir.iterdir())


def check(
    run_dir: Path,
    resolved_recipe_yaml: str,
    data_card: dict | None = None,
    allow_data_change: bool = False,
    saved_problem: Callable[[], str | None] | None = None,
) -> Survey | None:
    """The user errors of a resume, raised before anything in the run directory changes: not a run directory, a
    finished run, a different recipe, training data that changed (`data_card`: the new data card; refused unless
    `allow_data_change`), a run file that is not the JSON object it should be, complete checkpoints none of which
    can be loaded, and a checkpoint without optimizer and scheduler state to continue from (save_only_model).
    Returns the checkpoints' `survey` for `prepare` (None: nothing to resume, a new run). `saved_problem`: what the
    checks say of RUN_DIR/recipe.yaml (`_recipe_changed`), asked only when the recipe differs."""
    if not has_previous_attempt(run_dir):
        return None
    recipe_file = run_dir / RECIPE
    if not recipe_file.is_file():
        raise UserError(f"has no {RECIPE}: not a run directory of dpo train; nothing to resume", where=str(run_dir))
    reason = (read_json_object(run_dir / SUMMARY) or {}).get("stop_reason")
    if reason in FINISHED:
        raise UserError(f"the run already finished (stop_reason {reason}); nothing to resume", where=str(run_dir))
    metrics_rows(run_dir / METRICS_LOG)  # a broken metrics file is reported now, before anything is changed
    read_json_object(run_dir / DATA_CARD)  # and a data card that is no JSON object (read with or without a change)
    recorded = read_yaml_mapping(recipe_file, what="run recipe")  # hand-edited into bad YAML: one error line
    absolute_local_model(recorded)  # a run made when a relative model folder was recorded as written
    resolved = safe_load(resolved_recipe_yaml)
    # the recipe.yaml of a run made before secrets were redacted ahead of dumping may hold one that YAML escaped
    difference = _first_difference(redact_data(recorded), resolved)
    if difference:
        raise UserError(_recipe_changed(run_dir, *difference, saved_problem), where=str(recipe_file))
    if data_card is not None and not allow_data_change:
        changed = data_change(run_dir, data_card)
        if changed:
            raise UserError(
                f"{changed}; resume with the data the run was made with, or add --allow-data-change "
                f"(data_card.json then records the change)",
                where=str(run_dir / DATA_CARD),
            )
    found = survey(run_dir / CHECKPOINTS, saves_only_model(resolved))
    if found.complete and found.resumable is None:
        newest, reason = found.damaged[0]
        raise UserError(
            f"no checkpoint can be loaded: {len(found.complete)} complete, all damaged (newest {newest.name}: "
            f"{reason}); start a new run in another --output-dir",
            where=str(run_dir / CHECKPOINTS),
        )
    _check_optimizer_state(run_dir, resolved, found.resumable)
    return found


def _check_optimizer_state(run_dir: Path, recipe: dict, resumable: tuple[int, Path] | None) -> None:
    """Refuse to continue training from a checkpoint saved with training.save_only_model: true. It has no optimizer,
    scheduler or RNG state, and transformers skips what is missing without a word: the resumed run would go on from
    step N with fresh AdamW moments and the learning-rate schedule back at step 0, not as the run would have gone.

    Keyed on the recipe, not on which files are there: FSDP and DeepSpeed store the optimizer (and DeepSpeed's own
    scheduler) in folders of their own, so a missing optimizer.pt or scheduler.pt proves nothing there. A checkpoint
    at which training had ended still resumes (it needs no optimizer: only final/ and summary.json are written), and
    so does a run with no such checkpoint (it starts again from step 0)."""
    if resumable is None or not saves_only_model(recipe):
        return
    step, checkpoint = resumable
    if training_ended(read_json_object(checkpoint / TRAINER_STATE) or {}):
        return
    raise UserError(
        f"{checkpoint.name} was saved with training.save_only_model: true and has no optimizer, scheduler or RNG "
        f"state: training on from it would restart the optimizer and the learning-rate schedule at step {step}, not "
        f"continue the run; start a new run in another --output-dir (training.save_only_model: false to resume one)",
        where=str(run_dir / RECIPE),
    )


def saves_only_model(recipe: dict) -> bool:
    """Whether a resolved recipe (a mapping) saves checkpoints with training.save_only_model: no optimizer, scheduler
    or RNG state."""
    training = recipe.get("training")
    return isinstance(training, dict) and training.get("save_only_model") is True


def data_change(run_dir: Path, data_card: dict) -> str | None:
    """What changed in the training data since the run was made ("the train data's content hash ..."), or None.
    A run directory without a data card (or a card without hashes) has nothing to compare."""
    old = (read_json_object(run_dir / DATA_CARD) or {}).get("content_hash")
    new = data_card.get("content_hash") or {}
    if not isinstance(old, dict):
        return None
    changed = [split for split in ("train", "eval") if split in old and old[split] != new.get(split)]
    if not changed:
        return None
    hashes = ", ".join(f"{s} {str(old[s])[:12]}... now {str(new.get(s))[:12]}..." for s in changed)
    return f"the {' and '.join(changed)} data changed since the run was made (content hash {hashes})"


def resumed_data_card(run_dir: Path, data_card: dict, step: int) -> dict:
    """The data card a resumed run writes: the new card (`data_card`), with the run's `data_changes` carried over and,
    when the data changed since (`data_change`), one more entry: the previous content hash and the step at which the
    data was replaced. Every resume rewrites the card, so each must carry the list: an earlier change is never lost."""
    old = read_json_object(run_dir / DATA_CARD) or {}
    history = old.get("data_changes") if isinstance(old.get("data_changes"), list) else []
    if data_change(run_dir, data_card):
        history = [*history, {"resumed_at_step": step, "previous_content_hash": old.get("content_hash")}]
    return {**data_card, "data_changes": history} if history else data_card


def prepare(run_dir: Path, found: Survey | None) -> ResumePoint:
    """Clean up what a killed attempt left half-done (rank 0 only), and find where to continue (every rank: each
    loads the checkpoint). `found`: what `check` returned (None: nothing to resume); rank 0 holds the run
    directory's lock for both.

    Every rank surveys the checkpoints in its `check`, possibly while rank 0 cleans up: the clean-up deletes only
    incomplete checkpoints and damaged ones newer than the loadable one, so every rank finds the same one."""
    point = ResumePoint(run_dir)
    if found is None:
        point.fresh = True
        point.notes.append(f"nothing to resume in {run_dir}; starting a new run")
        return point
    checkpoint_dir, writer = run_dir / CHECKPOINTS, is_main_process()
    if writer:
        point.notes += _remove_leftovers(run_dir)
        point.warnings += _remove_damaged(found.damaged)
    if found.resumable is None:
        # killed before the first checkpoint: start over in place (keeps nothing that would be redone anyway)
        if writer:
            for _, path in checkpoints(checkpoint_dir):  # a weights-only checkpoint-0: its mark goes first
                delete_checkpoint(path)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            (run_dir / METRICS_LOG).unlink(missing_ok=True)
        point.notes.append("no complete checkpoint yet: training again from step 0")
        return point
    point.step, point.checkpoint = found.resumable
    point.state = read_json_object(point.checkpoint / DPO_STATE) or {}
    if writer:
        point.warnings += _damaged_best(checkpoint_dir, point.checkpoint)
    dropped = truncate_metrics(run_dir / METRICS_LOG, point.step) if writer else 0
    point.notes.append(
        f"resuming from {point.checkpoint.name} (step {point.step}); dropped {dropped} metrics line(s) logged after it"
    )
    return point


def _damaged_best(checkpoint_dir: Path, resumed_from: Path) -> list[str]:
    """A warning when the best checkpoint that the one resumed from names (kept by early stopping, to be restored into
    final/) is gone or cannot be loaded (`unrestorable`, expecting the kind of weights files `resumed_from` has).

    A warning, not an error: what training continues from is intact, and the best weights are lost whatever the
    user does, so refusing would only leave a run that no resume can finish. The run goes on; at the end
    `_restore_best` (dpo/training/execute.py) finds the same problem and keeps the last weights (summary.json says
    final_weights: last), unless a later evaluation has found a new best. Like the older damaged checkpoints that
    `_remove_damaged` leaves alone, it stays in place: resume does not load it, and nothing is deleted on a guess."""
    best = best_checkpoint_named(checkpoint_dir, read_json_object(resumed_from / TRAINER_STATE) or {})
    if best is None or best.name == resumed_from.name:
        return []
    problem = unrestorable(best, weights_files(resumed_from))
    if problem is None:
        return []
    return [
        f"{best}: the best checkpoint cannot be loaded ({problem}); final/ will hold the last weights unless a later "
        f"evaluation finds a new best"
    ]


def _remove_damaged(damaged: list[tuple[Path, str]]) -> list[str]:
    """Delete the complete but damaged checkpoints newer than the newest loadable one (`Survey.damaged`; a warning
    each): training continues from the loadable one and saves those steps again. Older damaged ones are left alone:
    resume never reads them."""
    warnings = []
    for path, reason in damaged:
        delete_checkpoint(path)
        warnings.append(f"{path}: cannot be loaded ({reason}); deleted it, resuming from the previous complete one")
    return warnings


def _remove_leftovers(run_dir: Path) -> list[str]:
    """Checkpoints whose save was cut off, checkpoints whose deletion was (`delete_checkpoint`), a half-written
    final/ and the one a kill inside replace_dir left renamed aside (a whole model, for full fine-tuning), the
    previous attempt's summary.json."""
    notes = []
    for _, path in checkpoints(run_dir / CHECKPOINTS):
        if not is_complete(path):
            shutil.rmtree(path)
            notes.append(f"deleted {path.name}: its save was cut off")
    for path in sorted((run_dir / CHECKPOINTS).glob(f"{DELETING_PREFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(run_dir / FINAL_STAGING, ignore_errors=True)
    shutil.rmtree(run_dir / FINAL_OLD, ignore_errors=True)
    (run_dir / SUMMARY).unlink(missing_ok=True)
    return notes
