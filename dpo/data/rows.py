"""One row of preference data: column mapping, format detection, and the checks every row must pass.

A row is, after its source's column mapping, one of
  * a pair {prompt, chosen, rejected}: TRL's standard format (three strings) or conversational format
    (three lists of {role, content} messages), optionally with a `score_gap` (a number > 0: how much better the
    chosen answer scored; pair expansion sets it, and ODPO reads it);
  * an implicit-prompt pair {chosen, rejected}: the prompt is the part both share (the leading messages
    both conversations have, or the common leading text), as TRL's `extract_prompt` does (a row where one answer is
    a prefix of the other is refused: nothing of it would be left);
  * a multi-response row {prompt, responses, scores | ranks}: N answers with a score each (higher is
    better) or a rank each (1 is best), as in UltraFeedback; pair expansion turns it into pairs.

Every reason a row can be refused is a key of REASONS: the error message, the data card's counts under
`on_invalid: skip`, `dpo data inspect` and docs/data.md all use these keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from dpo.config.schema import TARGETS  # noqa: F401 - what `columns:` may map to, re-exported
from dpo.errors import shorten

PAIR = ("prompt", "chosen", "rejected")
SCORE_GAP = "score_gap"  # optional on a pair: score(chosen) - score(rejected), set by pair expansion
MULTI = ("prompt", "responses", "scores", "ranks")
ROLES = ("system", "user", "assistant", "tool")

REASONS: dict[str, str] = {
    "not_utf8": "the line holds bytes that are not UTF-8 text, or a text holds a lone surrogate escape (`\\ud800`)",
    "bad_json": "the line is not valid JSON (or nests deeper than Python's parser goes)",
    "truncated": "the file's last line is cut off (no newline, not valid JSON)",
    "bad_csv": "a CSV row that does not parse as the header says: more fields than the header (a comma in a value "
    "that is not quoted) or a stray quote",
    "not_object": "the row is not a JSON object",
    "missing_column": "a column the format needs is absent or null",
    "extra_column": "a column the format does not use (map it with `columns` or list it in `ignore_columns`)",
    "wrong_type": "a value has the wrong type (e.g. a number where text is expected)",
    "mixed_formats": "strings and message lists mixed within one row, or a row whose format (standard text or "
    "conversational messages) differs from the data's first valid row: train and held-out data hold one format",
    "bad_message": "a message is not {role, content} with text content",
    "bad_role": f"a message role is not one of {', '.join(ROLES)}",
    "empty": "a prompt or answer is empty or whitespace only",
    "no_shared_prompt": "implicit-prompt row: chosen and rejected share no leading prompt, or one is a prefix of the "
    "other (nothing of it would be left after the prompt they share: give the rows a `prompt` column)",
    "chosen_equals_rejected": "chosen and rejected are the same answer",
    "bad_scores": "multi-response row: fewer than 2 responses, scores/ranks not one finite number per response, or "
    "one answer given twice with different scores (which would make both A over B and B over A)",
    "too_long": "prompt + answer is longer than training.max_length tokens (TRL would cut the answer)",
}


def reasons_table() -> str:
    """The table of invalid-row reasons in docs/data.md, built from REASONS."""
    return "\n".join(["| reason | the row |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in REASONS.items())])


def share_of(share: float, count: int, round_up: bool = False, nearest: bool = False) -> int:
    """`share` of `count` items, rounded down (or up, or to the nearest with halves up): as a person reckons it, so
    that 0.29 of 100 is 29 where the float product is 28.999999999999996 (and 0.07 of 100 is 7, not 8, rounded up;
    0.15 of 10 is 1.5, so 2 to the nearest, as 0.25 of 10 is 3). The one rounding rule of the data layer."""
    exact = share * count
    slack = 1e-12 * max(1.0, exact)  # relative: a float product's error grows with it
    if nearest:
        return math.floor(exact + 0.5 + slack)
    return math.ceil(exact - slack) if round_up else math.floor(exact + slack)


def counts_text(counts: dict[str, int]) -> str:
    """Rows counted by reason, most first: 'extra_column: 6, duplicate: 4'."""
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class Problem:
    """Why a row cannot be used: `reason` is a REASONS key (counted), `detail` says what exactly (shown)."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def _pluck(row: dict, spec: str) -> Any:
    """The value at `spec` in `row`: 'a' (a column), 'a.b' (a key of a mapping column), 'a[].b' (key b of
    every element of a list column, e.g. UltraFeedback's `completions[].overall_score`). KeyError if absent."""
    head, _, rest = spec.partition(".")
    if head.endswith("[]"):
        items = row[head[:-2]]
        if not isinstance(items, list):
            raise KeyError(spec)
        return [_pluck(item, rest) if rest else item for item in items]  # a non-mapping item: TypeError
    value = row[head]
    if value is None:
        raise KeyError(spec)
    if rest:
        if not isinstance(value, dict):
            raise KeyError(spec)
        return _pluck(value, rest)
    return value


def without_nulls(mapping: dict) -> dict:
    """The mapping without its null-valued keys. Columnar formats (Parquet, save_to_disk, hub data: Arrow) give
    every row every column, and every message of a column every field of the column's struct, and fill the
    missing ones with null: a `name` on one message is `name: None` on all the others."""
    return {key: value for key, value in mapping.items() if value is not None}


def _messages_without_nulls(value: Any) -> Any:
    """A column's value with the null fields of its messages dropped (a message list, or a list of them: the
    responses of a conversational multi-response row); any other value as it is."""
    if not isinstance(value, list):
        return value
    return [without_nulls(item) if isinstance(item, dict) else _messages_without_nulls(item) for item in value]


def map_columns(row: Any, columns: dict[str, str], ignore: tuple[str, ...] = ()) -> dict | Problem:
    """Rename the source's columns to ours (`columns`: our name -> their column or path) and drop `ignore`d ones.
    Null values count as absent (columnar formats fill missing cells with null), but for the prompt: a row with a
    null prompt is a Problem, not an implicit-prompt row. So do null fields of messages (without_nulls): the
    messages go on without them."""
    if not isinstance(row, dict):
        return Problem("not_object", f"row is a {type(row).__name__}, not an object")
    mapped = {}
    for target, spec in columns.items():
        try:
            mapped[target] = _pluck(row, spec)
        except (KeyError, TypeError):
            return Problem("missing_column", f"missing column '{spec}' (mapped to {target})")
    if row.get("prompt", "") is None and "prompt" not in columns and "prompt" not in ignore:
        # a prompt column with an empty cell: guessing the prompt from the answers' shared start (an implicit-prompt
        # row, which has no prompt column) would train on a prompt nobody wrote
        return Problem("missing_column", "'prompt' is null")
    consumed = {spec.partition(".")[0].removesuffix("[]") for spec in columns.values()}
    out = {k: v for k, v in without_nulls(row).items() if k not in ignore and k not in consumed}
    return {k: _messages_without_nulls(v) for k, v in {**out, **mapped}.items()}


def _not_utf8(label: str, text: str) -> Problem | None:
    """A JSON `\\ud800` escape decodes to a lone surrogate: text no tokenizer or UTF-8 file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return Problem("not_utf8", f"{label} holds a lone surrogate escape ({shorten(exc.object[exc.start])})")
    return None


def _text_or_messages(column: str, value: Any) -> Problem | None:
    if isinstance(value, str):
        return _not_utf8(f"'{column}'", value) or (None if value.strip() else Problem("empty", f"'{column}' is empty"))
    if not isinstance(value, list):
        return Problem("wrong_type", f"'{column}' is a {type(value).__name__}, expected text or messages")
    if not value:
        return Problem("empty", f"'{column}' is an empty message list")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            return Problem("bad_message", f"'{column}' message {i} must be {{role, content}}")
        if not isinstance(msg["role"], str) or msg["role"] not in ROLES:
            role = shorten(msg["role"])
            return Problem("bad_role", f"'{column}' message {i} has role {role} (expected one of {ROLES})")
        if not isinstance(msg["content"], str):
            return Problem("bad_message", f"'{column}' message {i} content is not text")
        if problem := _not_utf8(f"'{column}' message {i}", msg["content"]):
            return problem
        if not msg["content"].strip():
            return Problem("empty", f"'{column}' message {i} has empty content")
    return None


def _same_kind(row: dict, columns: list[str]) -> Problem | None:
    kinds = {isinstance(row[c], list) for c in columns}
    return Problem("mixed_formats", "mixes strings and message lists") if len(kinds) > 1 else None


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) from an implicit-prompt pair, as TRL's `extract_prompt`: the shared leading
    messages, or the shared leading text (a space before the split point goes with the answers). Where one answer
    is a prefix of the other, all of it is the prompt here (TRL leaves its last item as the answer): _pair refuses
    such a row."""
    idx = 0
    limit = min(len(chosen), len(rejected))
    while idx < limit and chosen[idx] == rejected[idx]:
        idx += 1
    if isinstance(chosen, str) and 0 < idx < limit and chosen[idx - 1] == " ":
        idx -= 1
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _extra(row: dict, allowed: tuple[str, ...]) -> Problem | None:
    extra = sorted(set(row) - set(allowed))
    if not extra:
        return None
    shown = ", ".join(name if name.isprintable() and len(name) <= 80 else shorten(name) for name in extra[:8])
    more = f" (and {len(extra) - 8} more)" if len(extra) > 8 else ""
    return Problem("extra_column", f"unexpected column(s) {shown}{more}")


def _pair(row: dict) -> dict | Problem:
    if extra := _extra(row, (*PAIR, SCORE_GAP)):
        return extra
    gap = row.get(SCORE_GAP)
    if gap is not None and not (_number(gap) and gap > 0):
        return Problem("wrong_type", f"'{SCORE_GAP}' is {gap!r}, expected a number > 0")
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing:
        return Problem("missing_column", f"missing column(s) {', '.join(missing)}")
    if "prompt" not in row:  # implicit prompt
        for column in ("chosen", "rejected"):
            if problem := _text_or_messages(column, row[column]):
                return problem
        if problem := _same_kind(row, ["chosen", "rejected"]):
            return problem
        if row["chosen"] == row["rejected"]:
            return Problem("chosen_equals_rejected", "chosen equals rejected")
        prompt, chosen, rejected = extract_prompt(row["chosen"], row["rejected"])
        if not (prompt.strip() if isinstance(prompt, str) else prompt):
            return Problem("no_shared_prompt", "no 'prompt' column, and chosen and rejected share no leading prompt")
        for column, rest, other in (("chosen", chosen, "rejected"), ("rejected", rejected, "chosen")):
            if not (rest.strip() if isinstance(rest, str) else rest):  # the shared start took all of this answer
                return Problem(
                    "no_shared_prompt",
                    f"'{column}' is a prefix of '{other}': nothing of it is left after the prompt they share; give "
                    "the rows a 'prompt' column",
                )
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for column in PAIR:
        if problem := _text_or_messages(column, row[column]):
            return problem
    if problem := _same_kind(row, list(PAIR)):
        return problem
    if row["chosen"] == row["rejected"]:
        return Problem("chosen_equals_rejected", "chosen equals rejected")
    return {c: row[c] for c in PAIR} | ({SCORE_GAP: float(gap)} if gap is not None else {})


def _number(value: Any) -> bool:
    """A finite number that fits a float (JSON allows a 400-digit integer; math.isfinite overflows on it)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _multi(row: dict) -> dict | Problem:
    if extra := _extra(row, MULTI):
        return extra
    if "prompt" not in row:
        return Problem("missing_column", "missing column(s) prompt")
    if ("scores" in row) == ("ranks" in row):
        return Problem("missing_column", "a multi-response row needs exactly one of 'scores' or 'ranks'")
    if problem := _text_or_messages("prompt", row["prompt"]):
        return problem
    responses, key = row["responses"], "scores" if "scores" in row else "ranks"
    values = row[key]
    if not isinstance(responses, list) or not isinstance(values, list):
        return Problem("wrong_type", f"'responses' and '{key}' must be lists")
    if len(responses) < 2 or len(values) != len(responses) or not all(_number(v) for v in values):
        return Problem(
            "bad_scores", f"{len(responses)} responses with {key} {shorten(values)}: need >= 2, one finite number each"
        )
    for i, response in enumerate(responses):
        if problem := _text_or_messages(f"responses[{i}]", response):
            return problem
        if isinstance(response, list) != isinstance(row["prompt"], list):
            return Problem("mixed_formats", "mixes strings and message lists")
    first: dict[str, int] = {}  # an answer given twice with two scores would make both (A, B) and (B, A)
    for i, response in enumerate(responses):
        j = first.setdefault(canonical(response), i)
        if values[j] != values[i]:
            return Problem(
                "bad_scores",
                f"responses[{j}] and responses[{i}] are the same answer with {key} {values[j]} and {values[i]}",
            )
    scores = [float(v) for v in values] if key == "scores" else [-float(v) for v in values]
    return {"prompt": row["prompt"], "responses": list(responses), "scores": scores}


def normalize(row: Any, columns: dict[str, str] | None = None, ignore: tuple[str, ...] = ()) -> dict | Problem:
    """The row in our canonical form ({prompt, chosen, rejected} or {prompt, responses, scores}), or its Problem."""
    mapped = map_columns(row, columns or {}, ignore)
    if isinstance(mapped, Problem):
        return mapped
    return _multi(mapped) if "responses" in mapped else _pair(mapped)


def is_multi(row: dict) -> bool:
    return "responses" in row


def canonical(value: Any) -> str:
    """A stable text key for a row or a prompt (duplicates, the split, hashes)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def prompt_key(prompt: Any) -> str:
    """The key prompts are compared by for the held-out split and leakage counts: runs of whitespace count as
    one space and ends are stripped, so 'What is 2+2?' and 'What  is 2+2?\\n' are one prompt, on one side."""
    if isinstance(prompt, str):
        return canonical(_squeeze(prompt))
    return canonical([{**m, "content": _squeeze(m["content"])} for m in prompt])


def row_format(row: dict) -> str:
    """'conversational' (message lists) or 'standard' (text), as TRL names the two formats."""
    return "conversational" if isinstance(row["prompt"], list) else "standard"


# ---- length in tokens, as TRL 1.16's DPOTrainer tokenizes (see DPOTrainer._prepare_dataset) -------------


def sequence_texts(prompt: Any, answer: Any, tokenizer) -> tuple[str, bool]:
    """The text TRL tokenizes for prompt + answer, and whether it adds special tokens (plain text) or not
    (a rendered chat template already holds them). Plain text gets the EOS TRL appends to answers."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + answer, tokenize=False), False
    eos = tokenizer.eos_token or ""
    return prompt + (answer if answer.endswith(eos) else answer + eos), True


def token_lengths(texts: list[tuple[str, bool]], tokenizer) -> list[int]:
    """Token counts of (text, add_special_tokens) items, batched by the flag."""
    lengths = [0] * len(texts)
    for flag in (True, False):
        idx = [i for i, (_, f) in enumerate(texts) if f is flag]
        if idx:
            encoded = tokenizer([texts[i][0] for i in idx], add_special_tokens=flag)["input_ids"]
            for i, ids in zip(idx, encoded, strict=True):
                lengths[i] = len(ids)
    return lengths


def answers(row: dict) -> list[tuple[str, Any]]:
    """(label, answer) of every answer in a canonical row."""
    if is_multi(row):
        return [(f"responses[{i}]", r) for i, r in enumerate(row["responses"])]
    return [("chosen", row["chosen"]), ("rejected", row["rejected"])]


def length_problems(rows: list[dict], tokenizer, max_length: int) -> list[Problem | None]:
    """For each canonical row, a `too_long` Problem when prompt + any answer exceeds max_length tokens."""
    items = [
        (i, label, sequence_texts(row["prompt"], answer, tokenizer))
        for i, row in enumerate(rows)
        for label, answer in answers(row)
    ]
    lengths = token_lengths([text for _, _, text in items], tokenizer)
    problems: list[Problem | None] = [None] * len(rows)
    for (i, label, _), n in zip(items, lengths, strict=True):
        if n > max_length and problems[i] is None:
            problems[i] = Problem("too_long", f"prompt + {label} is {n} tokens, over training.max_length {max_length}")
    return problems
