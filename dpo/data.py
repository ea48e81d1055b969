"""Preference data: read files, validate every row, drop duplicates, split held-out by prompt.

Rows are {prompt, chosen, rejected} in TRL's standard format (three strings) or conversational
format (three lists of {role, content} messages). The held-out split is made by prompt, so no prompt
is in both splits. Every decision is counted in the data card written to the run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo import augment
from dpo.errors import UserError
from dpo.recipe import DataSection

COLUMNS = ("prompt", "chosen", "rejected")
ROLES = {"system", "user", "assistant", "tool"}


# ---- reading -------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError:
                raise UserError(f"row {number}: not UTF-8 text", where=str(path)) from None
            except json.JSONDecodeError as exc:
                raise UserError(f"row {number}: not valid JSON ({exc.msg})", where=str(path)) from None
    return rows


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON at line {exc.lineno} ({exc.msg})", where=str(path)) from None
    if not isinstance(data, list):
        raise UserError("a .json data file must hold a list of rows", where=str(path))
    return data


def _read_with_datasets(path: Path) -> list[Any]:
    import datasets

    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise UserError(f"dataset dict has no 'train' split (has {list(loaded)})", where=str(path))
                loaded = loaded["train"]
        elif path.suffix == ".parquet":
            loaded = datasets.Dataset.from_parquet(str(path))
        else:
            loaded = datasets.Dataset.from_csv(str(path))
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable files
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise UserError(f"cannot read ({reason})", where=str(path)) from None
    return loaded.to_list()


READERS: dict[str, Callable[[Path], list[Any]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_with_datasets,
    ".csv": _read_with_datasets,
}


def read_rows(path_text: str, where: str) -> list[Any]:
    """Rows of one data file; `where` names the recipe key that points at it (for a missing file)."""
    path = Path(path_text)
    if not path.exists():
        raise UserError(f"file '{path}' not found", where=where)
    if path.is_dir():
        return _read_with_datasets(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"unsupported file type '{path.suffix}' (use {', '.join(READERS)} or a save_to_disk dir)", where=str(path)
        )
    return reader(path)


# ---- validation ----------------------------------------------------------------------------------


def _is_messages(value: Any) -> bool:
    return isinstance(value, list)


def _message_problem(column: str, messages: list) -> str | None:
    if not messages:
        return f"'{column}' is an empty message list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) - {"role", "content"} or "role" not in msg or "content" not in msg:
            return f"'{column}' message {i} must be {{role, content}}"
        if msg["role"] not in ROLES:
            return f"'{column}' message {i} has role '{msg['role']}' (expected one of {sorted(ROLES)})"
        if not isinstance(msg["content"], str) or not msg["content"].strip():
            return f"'{column}' message {i} has empty content"
    return None


def row_problem(row: Any) -> str | None:
    """Why a row cannot be trained on, or None. Reasons are short and stable: they key the data card."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, not an object"
    missing = [c for c in COLUMNS if c not in row or row[c] is None]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    kinds = {_is_messages(row[c]) for c in COLUMNS}
    if len(kinds) > 1:
        return "mixes strings and message lists across prompt/chosen/rejected"
    for column in COLUMNS:
        value = row[column]
        if _is_messages(value):
            problem = _message_problem(column, value)
            if problem:
                return problem
        elif not isinstance(value, str):
            return f"'{column}' is a {type(value).__name__}, expected text or messages"
        elif not value.strip():
            return f"'{column}' is empty"
    if row["chosen"] == row["rejected"]:
        return "chosen equals rejected"
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# ---- the split and the data card -----------------------------------------------------------------


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    card: dict[str, Any] = field(default_factory=dict)

    def datasets(self):
        import datasets

        return datasets.Dataset.from_list(self.train), datasets.Dataset.from_list(self.eval)


def _clean(rows: list[Any], source: str) -> tuple[list[dict], dict[str, Any]]:
    """Validate (error on the first bad rows), drop exact duplicates, keep only the three columns."""
    bad = [(i, p) for i, row in enumerate(rows, start=1) if (p := row_problem(row))]
    if bad:
        shown = "; ".join(f"row {i}: {p}" for i, p in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(f"{shown}{more}", where=source)
    seen: set[str] = set()
    kept = []
    for row in rows:
        pair = {c: row[c] for c in COLUMNS}
        key = _canonical(pair)
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return kept, {"path": source, "rows_read": len(rows), "dropped": {"duplicate": len(rows) - len(kept)}}


def split_by_prompt(
    rows: list[dict], fraction: float, seed: int, where: Callable[[str], str] = lambda key: key
) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded `fraction` of the distinct prompts (at least one); all pairs of a prompt go together."""
    prompts = list(dict.fromkeys(_canonical(r["prompt"]) for r in rows))
    if len(prompts) < 2:
        raise UserError(
            "need at least 2 distinct prompts to split off held-out data", where=where("data.heldout_fraction")
        )
    random.Random(seed).shuffle(prompts)
    heldout = set(prompts[: max(1, min(len(prompts) - 1, math.ceil(fraction * len(prompts))))])
    train = [r for r in rows if _canonical(r["prompt"]) not in heldout]
    held = [r for r in rows if _canonical(r["prompt"]) in heldout]
    return train, held


def content_hash(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(_canonical(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def prepare_data(section: DataSection, seed: int, where: Callable[[str], str] = lambda key: key) -> PreparedData:
    """Read, check, split and augment. `where(key)` prefixes errors about a recipe key ('file: key')."""
    train_rows, train_src = _clean(read_rows(section.train, where("data.train")), section.train)
    sources = {"train": train_src}
    if section.eval:
        eval_rows, eval_src = _clean(read_rows(section.eval, where("data.eval")), section.eval)
        sources["eval"] = eval_src
        split = {"method": "file"}
    else:
        train_rows, eval_rows = split_by_prompt(train_rows, section.heldout_fraction, seed, where)
        split = {"method": "heldout_fraction", "heldout_fraction": section.heldout_fraction, "seed": seed}
    truncated = {}
    if section.max_train_pairs and len(train_rows) > section.max_train_pairs:
        truncated["train"] = len(train_rows) - section.max_train_pairs
        train_rows = train_rows[: section.max_train_pairs]
    if section.max_eval_pairs and len(eval_rows) > section.max_eval_pairs:
        truncated["eval"] = len(eval_rows) - section.max_eval_pairs
        eval_rows = eval_rows[: section.max_eval_pairs]
    train_rows, augmented = augment.apply(train_rows, section.augment, seed)  # after the split: train only
    if not train_rows or not eval_rows:
        raise UserError("no training or no held-out pairs left after validation and the split", where=section.train)
    leaked = {_canonical(r["prompt"]) for r in train_rows} & {_canonical(r["prompt"]) for r in eval_rows}
    card = {
        "sources": sources,
        "format": "conversational" if _is_messages(train_rows[0]["prompt"]) else "standard",
        "augmented": augmented,
        "cut_by_max_pairs": truncated,
        "split": {
            **split,
            "train_pairs": len(train_rows),
            "eval_pairs": len(eval_rows),
            "train_prompts": len({_canonical(r["prompt"]) for r in train_rows}),
            "eval_prompts": len({_canonical(r["prompt"]) for r in eval_rows}),
            "prompts_in_both": len(leaked),
        },
        "content_hash": {"train": content_hash(train_rows), "eval": content_hash(eval_rows)},
    }
    return PreparedData(train_rows, eval_rows, card)
