"""Preference data for a run: read the sources, check every row, drop duplicates, mix, split held-out by
prompt, expand multi-response rows into pairs, augment the training pairs, and count it all in a data card.

The order matters and is fixed:
  1. each source is read and every row checked (dpo/data/rows.py: REASONS); `on_invalid: error` stops at the
     first bad rows (file and row numbers named), `skip` drops them and counts them by reason;
  2. exact duplicates are dropped (within and across the sources of a split, first one kept);
  3. several sources are mixed by weight or count (seeded) and shuffled together;
  4. without `data.eval`, a seeded share of the prompts is held out, all rows of a prompt on one side;
  5. multi-response rows become pairs in both splits (dpo/data/expand.py), which cannot move a prompt across;
  6. `max_train_pairs` / `max_eval_pairs` cut; then the augmentations run on the training pairs only.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpo.config.schema import DataSection, DataSource
from dpo.data import augment
from dpo.data.expand import expand_pairs
from dpo.data.readers import read_source
from dpo.data.rows import (
    Problem,
    canonical,
    counts_text,
    is_multi,
    length_problems,
    normalize,
    prompt_key,
    row_format,
    share_of,
)
from dpo.errors import UserError

SHOWN_PROBLEMS = 3  # bad rows named in an error message; the card keeps a few more examples
CARD_EXAMPLES = 5


@dataclass
class RowChecker:
    """Checks rows: the row checks of dpo/data/rows.py; with a tokenizer, the length check against `max_length` as
    TRL will tokenize; one format for all the rows it sees (train and held-out alike: TRL batches one format, and
    fails inside Arrow on a mix), the format of the first row that passes the other checks (a first row dropped as
    bad under `on_invalid: skip`, too long included, does not decide it); then, with a tokenizer, that it can render
    conversational rows (a chat template). Without a tokenizer neither tokenizer check is run (the card says so for
    the length check)."""

    tokenizer: Any = None
    max_length: int | None = None
    first_format: tuple[str, int, str] | None = None  # (format, row, source) of the first valid row: the data's

    def __call__(
        self, raw_rows: list[Any], columns=None, ignore=(), numbers=None, source: str = "generated rows"
    ) -> list[dict | Problem]:
        """Each row in canonical form, or its Problem. `numbers`: the rows' numbers in `source` (for messages)."""
        out = [raw if isinstance(raw, Problem) else normalize(raw, columns, ignore) for raw in raw_rows]
        numbers = list(numbers) if numbers is not None else list(range(1, len(out) + 1))
        if self.tokenizer is not None and self.max_length:
            # before the format is decided, so that a row too long to train on does not decide it; conversational
            # rows need a chat template to be measured: without one, _renderable refuses them below
            templated = bool(getattr(self.tokenizer, "chat_template", None))
            ok = [
                i
                for i, r in enumerate(out)
                if not isinstance(r, Problem) and (templated or row_format(r) == "standard")
            ]
            too_long = length_problems([out[i] for i in ok], self.tokenizer, self.max_length)
            for i, problem in zip(ok, too_long, strict=True):
                if problem is not None:
                    out[i] = problem
        self._one_format(out, numbers, source)
        self._renderable(out, numbers, source)
        return out

    def _one_format(self, rows: list[dict | Problem], numbers: list[int], source: str) -> None:
        for i, (n, row) in enumerate(zip(numbers, rows, strict=True)):
            if isinstance(row, Problem):
                continue
            fmt = row_format(row)
            if self.first_format is None:
                self.first_format = (fmt, n, source)
            elif fmt != self.first_format[0]:
                first, first_n, first_source = self.first_format
                where = f"row {first_n}" + (f" of {first_source}" if first_source != source else "")
                rows[i] = Problem("mixed_formats", f"a {fmt} row, but the data's first valid row ({where}) is {first}")

    def _renderable(self, rows: list[dict | Problem], numbers: list[int], source: str) -> None:
        """Conversational rows need the tokenizer's chat template (TRL renders them with it): checked here, at the
        gate, where the tokenizer is loaded anyway, rather than as a traceback once training starts."""
        if self.tokenizer is None or getattr(self.tokenizer, "chat_template", None):
            return
        for n, row in zip(numbers, rows, strict=True):
            if not isinstance(row, Problem) and row_format(row) == "conversational":
                name = getattr(self.tokenizer, "name_or_path", "") or "the model"
                raise UserError(
                    f"row {n}: conversational rows (message lists) need a chat template, and the tokenizer of "
                    f"'{name}' has none; use standard rows (prompt, chosen, rejected as text) or a chat model",
                    where=source,
                )

    def pairs_only(self, raw_rows: list[Any]) -> list[dict | Problem]:
        """For rows an augmentation made: they must be pairs."""
        multi = Problem("extra_column", "an augmentation must return pairs, not multi-response rows")
        return [multi if isinstance(r, dict) and is_multi(r) else r for r in self(raw_rows)]

    def card(self) -> dict:
        if self.tokenizer is None or not self.max_length:
            return {"run": False, "why": "no tokenizer or no max_length given"}
        return {"run": True, "max_length": self.max_length, "tokenizer": getattr(self.tokenizer, "name_or_path", None)}


def _raise_bad(bad: list[tuple[int, Problem]], where: str) -> None:
    shown = "; ".join(f"row {n}: {p}" for n, p in bad[:SHOWN_PROBLEMS])
    more = f" (and {len(bad) - SHOWN_PROBLEMS} more)" if len(bad) > SHOWN_PROBLEMS else ""
    raise UserError(f"{shown}{more}; data.on_invalid: skip drops bad rows and counts them", where=where)


def _check_ignored_columns_exist(source: DataSource, raw_rows: list[Any], key: str) -> None:
    """A column `ignore_columns` lists that no row of the source has (a typo, or a list left from other data) drops
    nothing: a knob that does nothing is an error, naming the source's file and the column. A row counts as having
    a column whatever its value (columnar formats give every row every column, null where it is empty); rows that
    could not be decoded have none. When no row decoded at all, nothing is said here: the source's real problem is
    that every row was dropped, which the caller reports (removing the column, as this error would advise, led only
    to that one)."""
    decoded = [raw for raw in raw_rows if isinstance(raw, dict)]
    if not decoded:
        return
    present: set[str] = set()
    for raw in decoded:
        present.update(raw)
    missing = [name for name in dict.fromkeys(source.ignore_columns) if name not in present]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise UserError(
            f"ignore_columns lists {listed}, which no row has ({key}); remove {'it' if len(missing) == 1 else 'them'}",
            where=source.path,
        )


def load_source(
    source: DataSource, key: str, checker: RowChecker, on_invalid: str, seen: set[str]
) -> tuple[list[dict], dict]:
    """The valid, new (not in `seen`) rows of one source in canonical form, and its card entry. `key` names
    the recipe key for errors about the source as a whole (a missing file)."""
    numbered = read_source(source.path, key, source.split, source.subset)
    if not numbered:
        raise UserError("no rows: the source is empty", where=source.path)
    numbers, raw_rows = [n for n, _ in numbered], [raw for _, raw in numbered]
    checked = checker(raw_rows, source.columns, tuple(source.ignore_columns), numbers, source.path)
    bad = [(n, r) for (n, _), r in zip(numbered, checked, strict=True) if isinstance(r, Problem)]
    if bad and on_invalid == "error":
        _raise_bad(bad, source.path)
    _check_ignored_columns_exist(source, raw_rows, key)
    dropped = Counter(p.reason for _, p in bad)
    rows = []
    for row in checked:
        if isinstance(row, Problem):
            continue
        text = canonical(row)
        if text in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(text)
        rows.append(row)
    card = {
        "path": source.path,
        "rows_read": len(numbered),
        "dropped": dict(sorted(dropped.items())),
        "kept": len(rows),
        "multi_response_rows": sum(map(is_multi, rows)),
    }
    if bad:
        card["first_invalid"] = [{"row": n, "reason": p.reason, "detail": p.detail} for n, p in bad[:CARD_EXAMPLES]]
    for name in ("weight", "count", "split", "subset"):
        value = getattr(source, name)
        if value is not None and not (name == "split" and value == "train"):
            card[name] = value
    if source.columns:
        card["columns"] = dict(source.columns)
    return rows, card


def _take(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n rows: a seeded sample when n <= len(rows) (in file order), else whole copies plus a sample."""
    copies, rest = divmod(n, len(rows)) if rows else (0, 0)
    picked = sorted(rng.sample(range(len(rows)), rest))
    return rows * copies + [rows[i] for i in picked]


def _weighted_shares(sources: list[tuple[float, int]]) -> list[int]:
    """Each (weight, rows) source's share of their total row count, in proportion to the weights and adding up to
    the total (largest remainders round up: 1:1:1 of 10 rows is 4, 3, 3, not 3, 3, 3)."""
    total, weights = sum(rows for _, rows in sources), sum(weight for weight, _ in sources)
    exact = [total * weight / weights for weight, _ in sources]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])  # largest remainder first, stable
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def mix(parts: list[tuple[DataSource, list[dict]]], rng: random.Random) -> tuple[list[dict], list[int]]:
    """Rows of several sources: a source with `count` gives exactly that many; sources with `weight` share their
    total row count in proportion to their weights (a source repeats when its share exceeds its rows); a source
    with neither gives all its rows once. One source is used as is; several are shuffled together."""
    if len(parts) == 1 and parts[0][0].weight is None and parts[0][0].count is None:
        return list(parts[0][1]), [len(parts[0][1])]
    shares = _weighted_shares([(s.weight, len(r)) for s, r in parts if s.weight is not None])
    out, used = [], []
    for source, rows in parts:
        if source.count is not None:
            n = source.count
        elif source.weight is not None:
            n = shares.pop(0)
        else:
            n = len(rows)
        taken = _take(rows, n, rng)
        used.append(len(taken))
        out.extend(taken)
    rng.shuffle(out)
    return out, used


def load_split(
    section: DataSection, split: str, seed: int, checker: RowChecker, where: Callable[[str], str]
) -> tuple[list[dict], list[dict]]:
    """All rows of `train` or `eval` (checked, deduplicated, mixed) and the card entries of its sources."""
    key = where(f"data.{split}")
    seen: set[str] = set()
    parts, cards = [], []
    for i, source in enumerate(section.sources(split)):
        rows, card = load_source(source, key, checker, section.on_invalid, seen)
        if not rows and (source.count or source.weight):
            read, dropped = card["rows_read"], card["dropped"]
            if set(dropped) == {"duplicate"}:
                why = f"all {read} rows of {source.path} duplicate earlier rows (the same data listed twice?)"
            else:
                why = f"the {read} rows of {source.path} were all dropped ({counts_text(dropped)})"
            what = "count" if source.count else "weight"
            raise UserError(f"no rows to take a {what} from: {why}", where=f"{key}: source {i}")
        parts.append((source, rows))
        cards.append(card)
    if not any(rows for _, rows in parts):  # every row invalid (under on_invalid: skip) or a duplicate
        dropped: Counter[str] = Counter()
        for card in cards:
            dropped.update(card["dropped"])
        read = sum(card["rows_read"] for card in cards)
        raise UserError(f"no rows left: the {read} rows read were all dropped ({counts_text(dropped)})", where=key)
    rows, used = mix(parts, random.Random(f"{seed}:mix:{split}"))
    for card, n in zip(cards, used, strict=True):
        card["used"] = n
    return rows, cards


# ---- the split and the data card -----------------------------------------------------------------


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    card: dict[str, Any] = field(default_factory=dict)

    def datasets(self):
        import datasets

        return datasets.Dataset.from_list(self.train), datasets.Dataset.from_list(self.eval)


def split_by_prompt(
    rows: list[dict], fraction: float, seed: int, where: Callable[[str], str] = lambda key: key
) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded `fraction` of the distinct prompts (at least one); all rows of a prompt go together."""
    prompts = list(dict.fromkeys(prompt_key(r["prompt"]) for r in rows))
    if len(prompts) < 2:
        raise UserError(
            "need at least 2 distinct prompts to split off held-out data", where=where("data.heldout_fraction")
        )
    random.Random(seed).shuffle(prompts)
    heldout = set(prompts[: max(1, min(len(prompts) - 1, share_of(fraction, len(prompts), round_up=True)))])
    train = [r for r in rows if prompt_key(r["prompt"]) not in heldout]
    held = [r for r in rows if prompt_key(r["prompt"]) in heldout]
    return train, held


def content_hash(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _prompts(rows: list[dict]) -> set[str]:
    return {prompt_key(r["prompt"]) for r in rows}


def check_eval_is_not_train(
    train_rows: list[dict], eval_rows: list[dict], allowed: bool, where: Callable[[str], str]
) -> None:
    """Held-out data that is the training data (the same file twice, a copy, or a subset of it) measures
    memorisation, not generalisation: an error unless `data.allow_eval_in_train` says it is meant."""
    if allowed or not eval_rows:
        return
    train = {canonical(r) for r in train_rows}
    if all(canonical(r) in train for r in eval_rows):
        raise UserError(
            f"every one of the {len(eval_rows)} held-out rows is also a training row (is data.eval the same data "
            "as data.train?): held-out metrics would measure memorisation; use other data, drop data.eval to "
            "hold out data.heldout_fraction of the prompts, or set data.allow_eval_in_train: true",
            where=where("data.eval"),
        )


def prepare_data(
    section: DataSection,
    seed: int,
    where: Callable[[str], str] = lambda key: key,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> PreparedData:
    """Read, check, mix, split, expand and augment. `where(key)` prefixes errors about a recipe key ('file: key').
    With a tokenizer, rows whose prompt + answer exceed `max_length` tokens are invalid rows too."""
    problem = augment.step_problem(section.augment)  # before any file is read: a bad step fails fast
    if problem:
        raise UserError(problem, where=where("data.augment"))
    checker = RowChecker(tokenizer, max_length)
    train_rows, train_cards = load_split(section, "train", seed, checker, where)
    sources = {"train": train_cards}
    if section.eval is not None:
        eval_rows, sources["eval"] = load_split(section, "eval", seed, checker, where)
        check_eval_is_not_train(train_rows, eval_rows, section.allow_eval_in_train, where)
        split = {"method": "file"}
    else:
        train_rows, eval_rows = split_by_prompt(train_rows, section.heldout_fraction, seed, where)
        split = {"method": "heldout_fraction", "heldout_fraction": section.heldout_fraction, "seed": seed}
    expansion, parts = {}, {"train": train_rows, "eval": eval_rows}
    expand = section.expand_pairs.model_dump()
    for name, rows in parts.items():
        if any(map(is_multi, rows)):
            parts[name], counts = expand_pairs(rows, random.Random(f"{seed}:expand:{name}"), **expand)
            expansion[name] = {**expand, "rows_before": len(rows), **counts, "rows_after": len(parts[name])}
    for name, rows in parts.items():
        if not rows:  # every multi-response row made no pair, and the split holds no pair row
            counts = expansion[name]
            why = {"ties": "ties", "identical_answers": "identical answers",
                   "below_min_gap": "below data.expand_pairs.min_gap"}  # fmt: skip
            reasons = ", ".join(f"{why[k]}: {counts[k]}" for k in why if counts[k])
            raise UserError(
                f"no pairs left after pair expansion: its {counts['multi_response_rows']} multi-response rows made no "
                f"pair ({reasons})",
                where=where(f"data.{name}"),
            )
    train_rows, eval_rows = parts["train"], parts["eval"]
    if not expansion and section.expand_pairs != type(section.expand_pairs)():
        raise UserError("has no effect: the data hold no multi-response rows", where=where("data.expand_pairs"))
    truncated = {}
    if section.max_train_pairs and len(train_rows) > section.max_train_pairs:
        truncated["train"] = len(train_rows) - section.max_train_pairs
        train_rows = train_rows[: section.max_train_pairs]
    if section.max_eval_pairs and len(eval_rows) > section.max_eval_pairs:
        truncated["eval"] = len(eval_rows) - section.max_eval_pairs
        eval_rows = eval_rows[: section.max_eval_pairs]
    train_rows, augmented = augment.apply(  # after the split and the expansion: training pairs only
        train_rows, section.augment, seed, checker.pairs_only, section.on_invalid, where("data.augment")
    )
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        if not rows:  # each step above that can empty a split says why; this is the last guard before TRL
            raise UserError(
                f"no {'training' if name == 'train' else 'held-out'} pairs left", where=where(f"data.{name}")
            )
    card = {
        "sources": sources,
        "on_invalid": section.on_invalid,
        "length_check": checker.card(),
        "format": "conversational" if isinstance(train_rows[0]["prompt"], list) else "standard",
        "expanded": expansion,
        "augmented": augmented,
        "cut_by_max_pairs": truncated,
        "split": {
            **split,
            "train_pairs": len(train_rows),
            "eval_pairs": len(eval_rows),
            "train_prompts": len(_prompts(train_rows)),
            "eval_prompts": len(_prompts(eval_rows)),
            "prompts_in_both": len(_prompts(train_rows) & _prompts(eval_rows)),
        },
        "content_hash": {"train": content_hash(train_rows), "eval": content_hash(eval_rows)},
    }
    return PreparedData(train_rows, eval_rows, card)
