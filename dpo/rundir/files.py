"""The run and sweep directories' file names, who may write them, and the one reader of each kind of file.

Run directory (`dpo train`):
    recipe.yaml          the fully resolved recipe (a plain recipe `dpo train` accepts)
    recipe_changes.json  the recipe file, the --set overrides, and each key they changed vs the base chain
    data_card.json       rows read, dropped and why, split sizes, content hashes
    metrics.jsonl        one JSON object per log event, with `step`; TRL's metric names, eval ones eval_-prefixed;
                         NaN/Inf stored as the strings "nan"/"inf" (JSON has no such numbers)
    summary.json         stop_reason, best_step, best_metric, initial/final metrics, runtime_s, steps, which
                         implicit reward rewards/* hold (implicit_reward, dpo/metrics.py IMPLICIT_REWARDS) and the
                         beta that scales it for the final weights (reward_beta)
    final/               the trained adapter (LoRA) or model, plus the tokenizer (written as .final.tmp/, renamed;
                         a final/ it replaces is .final.old/ for a moment, which resume removes after a kill)
    checkpoints/         a complete checkpoint at every evaluation (the last two and the best are kept), for resume;
                         ours adds dpo_state.json and, written last, checkpoint_complete.json (dpo/rundir/resume.py);
                         a checkpoint being deleted is first renamed .deleting-checkpoint-N/ (resume removes those)
    .lock                while a `dpo train` writes the directory (dpo/rundir/lock.py)
    report.html          the dashboard (dpo/analysis/report.py); `dpo report RUN_DIR` rebuilds it
    eval.json            `dpo eval RUN_DIR` (dpo/analysis/evaluate.py)
    samples.json         a few held-out prompts with the trained and the reference model's answers, written at the
                         end of training (dpo/training/samples.py; logging.samples) for the report
    audit.json           the label audit, when the recipe asks for one (dpo/training/audit.py)
    tensorboard/         with logging.tensorboard: transformers' events and the run's markers (integrations.py)

Sweep directory (`dpo sweep`, dpo/sweep/driver.py):
    sweep.yaml          the spec as given (secrets redacted), plus base_recipe resolved to an absolute path
    study.db            optuna's SQLite storage (absent when --storage names another database)
    trials/trial-NNNN/  one run directory per trial, plus trial.json and train.log (the trial's output)
    sweep_summary.json  objective, sampler, pruner, every trial, best trial/value/params, importance, steps
    best.yaml           the best trial's resolved recipe
    .lock               while a `dpo sweep` with SQLite storage runs on the directory

Every file is written whole or not at all (dpo/rundir/atomic.py), except metrics.jsonl, which grows by one line
per event (`append_metrics`): a kill can leave at most its last line torn, and every reader here skips that line.
Under torchrun / accelerate launch every process runs the same code; only rank 0 writes (`is_main_process`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from dpo.errors import UserError
from dpo.rundir.secrets import redact_data

# ---- the run directory
RECIPE = "recipe.yaml"
RECIPE_CHANGES = "recipe_changes.json"
DATA_CARD = "data_card.json"
METRICS_LOG = "metrics.jsonl"
SUMMARY = "summary.json"
FINAL = "final"
FINAL_STAGING = ".final.tmp"
FINAL_OLD = ".final.old"  # the final/ being replaced, while replace_dir swaps in the new one (dpo/rundir/atomic.py)
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
REPORT = "report.html"
EVAL = "eval.json"
SAMPLES = "samples.json"
# ---- checkpoints/checkpoint-N (transformers' names), and in each
CHECKPOINT_PREFIX = "checkpoint-"
DELETING_PREFIX = ".deleting-"  # a checkpoint folder renamed before it is deleted (resume.delete_checkpoint)
COMPLETE_MARK = "checkpoint_complete.json"
DPO_STATE = "dpo_state.json"
REFERENCE_LOGPS = "reference_logps.safetensors"  # the trainer's cached reference log-probs (single process)
TRAINER_STATE = "trainer_state.json"  # transformers' name
# ---- the sweep directory
SWEEP_SPEC = "sweep.yaml"
STUDY_DB = "study.db"
TRIALS = "trials"
SWEEP_SUMMARY = "sweep_summary.json"
BEST_RECIPE = "best.yaml"
TRIAL_DIR = "trial-{number:04d}"  # under trials/: one run directory per trial
TRIAL = "trial.json"  # in each trial's run directory
TRAIN_LOG = "train.log"  # in each trial's run directory


def is_run_recipe(path: str | Path) -> bool:
    """Whether `path` is a run directory's own recipe.yaml (its secrets redacted): so named, beside the
    data_card.json that `dpo train` writes with it."""
    path = Path(path)
    return path.name == RECIPE and (path.parent / DATA_CARD).is_file()


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (both set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


# ---- reading -------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A text file of a run or sweep directory ("" when absent; undecodable bytes replaced)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_recipe_text(run_dir: Path) -> str:
    """RUN_DIR/recipe.yaml's text ("" when absent), as a model card or a report quotes it: with its secrets redacted
    however YAML wrote them. recipe.yaml is written redacted, but a run made before secrets were redacted ahead of
    dumping may hold one that YAML escaped (\\xE4, a doubled '), which the text redaction of what quotes it misses:
    such a file is parsed, redacted and dumped again."""
    import yaml

    from dpo.config.yaml_loader import UNFOLDED, dump_yaml

    text = read_text(Path(run_dir) / RECIPE)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # edited into something that is not YAML: shown as it is
        return text
    redacted = redact_data(data)
    return text if redacted == data else dump_yaml(redacted, sort_keys=False, width=UNFOLDED)


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep directory, or None when it is absent; a broken one is a UserError."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON ({exc})", where=str(path)) from None


def read_json_object(path: Path) -> dict | None:
    """A JSON file that must hold an object (summary.json, data_card.json, trainer_state.json), or None when it is
    absent. Broken JSON, or valid JSON of another kind (`[1]`, `null`: a file edited by hand), is a UserError
    naming the file, where a caller's `.get` would otherwise fail with a traceback."""
    path = Path(path)
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"not a JSON object (it holds {_json_kind(data)})", where=str(path))
    return data


def _json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words ("an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def read_json_or_none(path: Path) -> Any:
    """A JSON file, or None when it is absent or broken: for a file that a failed process may have left
    (a trial's summary.json), where a broken file means the same as no file."""
    try:
        return read_json(path)
    except (UserError, OSError):
        return None


def json_object_or_empty(path: Path) -> dict:
    """A JSON file's object, or {} when the file is absent, broken or holds something else (`[1]`): for what a
    card or a page shows, where a part it cannot read is left out rather than ending the command."""
    data = read_json_or_none(path)
    return data if isinstance(data, dict) else {}


def metrics_rows(path: Path, skip_bad: bool = False) -> list[tuple[str, dict]]:
    """The events of a metrics.jsonl file as written: (the line, its JSON object); [] when the file is absent.

    A torn last line (the process was killed while appending it) is left out. Any other line that is not a JSON
    object with a whole-number `step` >= 0 (nothing we write produces one: a file damaged or edited by hand) is a
    UserError naming the file and the row, or, with `skip_bad` (readers that only show the file: reports, sweep
    summaries), left out with one `warning:` line on stderr naming the file, the first bad row and how many more."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem, record = _metrics_row_problem(line)
        if problem is None:
            rows.append((line, record))
        elif number == len(lines) and problem.startswith("not valid JSON"):
            break  # torn by a kill mid-append
        elif not skip_bad:
            raise UserError(f"row {number}: {problem}", where=str(path))
        else:
            bad.append(f"row {number}: {problem}")
    if bad:
        more = f" (and {len(bad) - 1} more bad row(s))" if len(bad) > 1 else ""
        print(f"warning: {path}: {bad[0]}; skipped it{more}", file=sys.stderr, flush=True)
    return rows


def _metrics_row_problem(line: str) -> tuple[str | None, dict]:
    """(why a metrics.jsonl line is not an event, or None; the event)."""
    if "\ufffd" in line:  # a byte that is not UTF-8 (read with errors="replace")
        return "not UTF-8 text", {}
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        return f"not valid JSON ({getattr(exc, 'msg', 'nested too deep')})", {}
    if not isinstance(record, dict):
        return "not a JSON object", {}
    step = record.get("step")
    if not (type(step) is int and step >= 0):  # bool is an int subclass; 1e400 parses as inf
        return "no whole-number step >= 0", {}
    return None, record


def kept_weights(summary: dict) -> tuple[int | None, dict]:
    """(step, held-out metrics) of the weights a run left in final/, from its summary.json: the restored best
    checkpoint's, or the last step's; (None, {}) for a run that left none (the non-finite guard stopped it)."""
    kept = summary.get("final_weights")
    if kept == "best":
        return summary.get("best_step"), summary.get("best_metrics") or {}
    if kept == "last":
        return summary.get("steps"), summary.get("final_metrics") or {}
    return None, {}


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN_DIR/metrics.jsonl as a list of events; non-finite values (stored as strings) become floats again.
    Damaged rows are skipped with a warning (see `metrics_rows`): what can be shown is shown."""
    return [
        {k: _number(v) for k, v in record.items()}
        for _, record in metrics_rows(Path(run_dir) / METRICS_LOG, skip_bad=True)
    ]


_NON_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")


def _number(value):
    if isinstance(value, str) and value.lower() in _NON_FINITE:
        return float(value)
    return value


# ---- writing (everything else goes through dpo/rundir/atomic.py) ---------------------------------


def append_metrics(path: Path, record: dict) -> None:
    """One event as one line of metrics.jsonl, secrets redacted, NaN/Inf as strings (JSON has no such numbers).
    One write per line: a kill leaves at most one torn line, which `metrics_rows` skips."""
    line = json.dumps(redact_data({k: _jsonable(v) for k, v in record.items()})) + "\n"
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
