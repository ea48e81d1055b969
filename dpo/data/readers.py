"""Reading one data source into numbered raw rows: local files by suffix (READERS), save_to_disk
directories, and hub datasets (`hub:owner/name`, only when the network allows it).

Each reader returns [(row_number, row)], where a row that could not even be decoded (bad bytes, bad JSON)
is a `Problem` in place of the row, so that `on_invalid: skip` can count it like any other bad row.
Row numbers are what a person finds in the file: the line number in JSONL (blank lines count), the
1-based position in a JSON list, the 1-based data row in CSV/Parquet/datasets (the header is not a row).

A local file is checked before it is read (dpo/config/input_files.py): a regular file (never a FIFO, which
would block, or a device), at most MAX_DATA_BYTES, readable. JSON that nests deeper than Python's parser
goes, or holds an integer of more digits than Python converts, is a bad row (JSONL) or a bad file (JSON).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo.config.input_files import MAX_DATA_BYTES, check_input_file, read_input_bytes
from dpo.config.schema import HUB_PREFIX
from dpo.data.rows import SCORE_GAP, Problem
from dpo.errors import UserError

Numbered = list[tuple[int, Any]]


def read_jsonl(path: Path) -> Numbered:
    """Numbered rows of a JSONL file; a line that is not UTF-8 or not JSON is a `Problem` saying why."""
    rows: Numbered = []
    raw = read_input_bytes(path, MAX_DATA_BYTES, what="data file")
    lines = raw.removeprefix(codecs.BOM_UTF8).split(b"\n")  # a BOM (Windows editors write one) is not row 1's text
    last = len(lines) - 1  # after the final newline split() leaves b"" (a complete file) or the cut-off tail
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rows.append((number, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as exc:
            rows.append((number, Problem("not_utf8", f"not UTF-8 text (byte {exc.start + 1} of the line)")))
        except json.JSONDecodeError as exc:
            if number - 1 == last:
                rows.append((number, Problem("truncated", f"last line is cut off ({exc.msg}; no newline at the end)")))
            else:
                rows.append((number, Problem("bad_json", f"not valid JSON ({exc.msg} at column {exc.colno})")))
        except (RecursionError, ValueError) as exc:  # 100,000 nested lists; an integer of 5,000 digits
            rows.append((number, Problem("bad_json", f"not valid JSON ({_too_much(exc)})")))
    return rows


def _too_much(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested deeper than Python's JSON parser goes"
    return str(exc).splitlines()[0][:200]


def _read_json(path: Path) -> Numbered:
    raw = read_input_bytes(path, MAX_DATA_BYTES, what="data file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # a BOM is no part of the JSON
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON at line {exc.lineno} ({exc.msg})", where=str(path)) from None
    except (RecursionError, ValueError) as exc:
        raise UserError(f"not valid JSON ({_too_much(exc)})", where=str(path)) from None
    if not isinstance(data, list):
        raise UserError("a .json data file must hold a list of rows", where=str(path))
    return list(enumerate(data, start=1))


def _load_datasets(path: Path, split: str):
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"dataset dict has no '{split}' split (has {list(loaded)})", where=str(path))
            loaded = loaded[split]
        elif split != "train":
            raise UserError(
                f"split '{split}' has no effect: this directory holds one dataset, not a dict", where=str(path)
            )
        return loaded
    return datasets.Dataset.from_parquet(str(path))  # the one file type read through datasets (CSV: _read_csv)


def _read_csv(path: Path) -> Numbered:
    """A CSV file with every cell read as the text it holds, with Python's csv module. Type guessing (what pandas and
    datasets' CSV reader do) would make a column of answers that are all numbers (`4`, `12`) integers, which the row
    checks refuse, and `NA`, `None` or `null` missing cells. An empty cell is still a missing one; `score_gap`, the
    one number a pair row holds, is read as a number where it is one (the row check says what is wrong with one that
    is not). Blank lines are skipped; a repeated header name gets a suffix, as pandas names it (`chosen.1`).

    A row that does not parse as the header says (more fields than the header: a comma in a value that is not
    quoted; a stray quote) is a `bad_csv` Problem at its data-row number, as a bad JSONL line is; a quoted value that
    is never closed would swallow the rest of the file, so the file is refused."""
    raw = read_input_bytes(path, MAX_DATA_BYTES, what="data file")
    try:
        text = raw.decode("utf-8-sig")  # a BOM is no part of the first column's name
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text (byte {exc.start + 1})", where=str(path)) from None
    limit = csv.field_size_limit()
    csv.field_size_limit(min(MAX_DATA_BYTES, 2**31 - 1))  # a long answer is a cell, not an error (default 128 KiB)
    try:
        records = _csv_records(text)
    finally:
        csv.field_size_limit(limit)
    header: list[str] | None = None
    rows: Numbered = []
    for fields in records:
        if isinstance(fields, list) and not any(field.strip() for field in fields) and len(fields) <= 1:
            continue  # a blank line
        if header is None:
            if not isinstance(fields, list):
                raise UserError(
                    f"cannot read the header: {fields or 'a quoted value is never closed'}", where=str(path)
                )
            header = _column_names(fields)
            continue
        number = len(rows) + 1
        if fields is None:
            raise UserError(
                f"cannot read: row {number}: a quoted value is never closed (the file ends in it)", where=str(path)
            )
        if isinstance(fields, str):
            rows.append((number, Problem("bad_csv", f"does not parse as CSV ({fields})")))
        elif len(fields) > len(header):
            detail = f"{len(fields)} fields, but the header has {len(header)} (a comma in a value that is not quoted?)"
            rows.append((number, Problem("bad_csv", detail)))
        else:  # a short row's missing cells are empty ones, as pandas reads them
            cells = fields + [""] * (len(header) - len(fields))
            rows.append((number, _typed_csv_cells(dict(zip(header, cells, strict=True)))))
    return rows


def _csv_records(text: str) -> list[list[str] | str | None]:
    """Each record's fields, or the csv module's complaint about it (text), or None for a quoted value the file ends
    in. Strict parsing, so that a stray quote is reported rather than read as part of a value."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str] | str | None] = []
    while True:
        try:
            records.append(next(reader))
        except StopIteration:
            return records
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                records.append(None)
                return records
            records.append(str(exc))  # the reader goes on with the next line


def _column_names(header: list[str]) -> list[str]:
    """The header's names as pandas makes them: an empty one is 'Unnamed: i', a repeated one gets '.1', '.2'."""
    names: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, k = name, 0
        while name in names:
            k += 1
            name = f"{base}.{k}"
        names.append(name)
    return names


def _typed_csv_cells(row: dict) -> dict:
    typed = {column: (None if value == "" else value) for column, value in row.items()}
    gap = typed.get(SCORE_GAP)
    if gap is not None:
        with contextlib.suppress(ValueError):
            typed[SCORE_GAP] = float(gap)
    return typed


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bar ("Generating train split") and no logged error ("Failed to read file ...") from datasets
    while it reads: the one line the user sees is ours."""
    import datasets

    bars_were_on, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _read_with_datasets(path: Path, split: str = "train") -> Numbered:
    if not path.is_dir():
        check_input_file(path, MAX_DATA_BYTES, what="data file")
    try:
        with _quiet_datasets():
            loaded = _load_datasets(path, split)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable files
        while exc.__cause__ is not None:  # DatasetGenerationError wraps what the parser said (line, column)
            exc = exc.__cause__
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
        raise UserError(f"cannot read ({reason})", where=str(path)) from None
    return list(enumerate(loaded.to_list(), start=1))


READERS: dict[str, Callable[[Path], Numbered]] = {
    ".jsonl": read_jsonl,
    ".json": _read_json,
    ".parquet": _read_with_datasets,
    ".csv": _read_csv,
}


def read_hub(name: str, subset: str | None, split: str) -> Numbered:
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # offline, unknown id, unknown split: one line, not a traceback
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise UserError(
            f"cannot load hub dataset '{name}' split '{split}' ({type(exc).__name__}: {first}); "
            "the hub needs the network (HF_DATASETS_OFFLINE must be unset)",
            where=f"{HUB_PREFIX}{name}",
        ) from None
    return list(enumerate(loaded.to_list(), start=1))


def read_source(path_text: str, where: str, split: str = "train", subset: str | None = None) -> Numbered:
    """Numbered rows of one source; `where` names the recipe key that points at it (for a missing file)."""
    if path_text.startswith(HUB_PREFIX):
        return read_hub(path_text.removeprefix(HUB_PREFIX), subset, split)
    path = Path(path_text)
    if not path.exists():
        raise UserError(f"file '{path}' not found", where=where)
    if subset is not None:
        raise UserError(f"subset '{subset}' has no effect: it applies to {HUB_PREFIX} datasets only", where=where)
    if path.is_dir():
        return _read_with_datasets(path, split)
    if split != "train":
        raise UserError(
            f"split '{split}' has no effect on a file: it applies to {HUB_PREFIX} datasets and save_to_disk dirs",
            where=where,
        )
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"unsupported file type '{path.suffix}' (use {', '.join(READERS)}, a save_to_disk directory "
            f"or {HUB_PREFIX}owner/name)",
            where=str(path),
        )
    return reader(path)
