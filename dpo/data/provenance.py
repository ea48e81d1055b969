"""Where a prepared training pair came from: its source file and row number, numbered as data errors number rows
(dpo/data/readers.py: the JSONL line, 1-based). `dpo data audit` names suspect pairs by them.

The prepared pairs do not carry their origin (mixing, expansion and augmentation make new lists), so the sources are
read again and indexed by content: a pair is found by its prompt and its two answers, first in their order (a file
that holds a pair twice, the labels swapped in one row, names each row), then in either order (a pair augmentation
flipped is still its row), a pair expanded from a multi-response row by that row. A pair no source holds (an
augmentation wrote it) has source None and row None.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from dpo.config.schema import DataSection
from dpo.data.readers import read_source
from dpo.data.rows import Problem, canonical, is_multi, normalize


def _key(prompt: Any, a: Any, b: Any, ordered: bool) -> str:
    answers = [canonical(a), canonical(b)]
    return canonical([prompt, answers if ordered else sorted(answers)])


def locate(section: DataSection, pairs: list[dict]) -> list[tuple[str | None, int | None]]:
    """(source path, row number) of each prepared training pair; the first source row that holds it wins, a row
    with its answers in the same order before one with them swapped."""
    in_order: dict[str, tuple[str, int]] = {}
    either_order: dict[str, tuple[str, int]] = {}
    for source in section.sources("train"):
        for number, raw in read_source(source.path, "data.train", source.split, source.subset):
            row = raw if isinstance(raw, Problem) else normalize(raw, source.columns, tuple(source.ignore_columns))
            if isinstance(row, Problem):
                continue
            if is_multi(row):  # the order of an expanded pair comes from the scores: either order is this row
                answer_pairs = list(combinations(row["responses"], 2))
            else:
                answer_pairs = [(row["chosen"], row["rejected"])]
                in_order.setdefault(_key(row["prompt"], *answer_pairs[0], ordered=True), (source.path, number))
            for a, b in answer_pairs:
                either_order.setdefault(_key(row["prompt"], a, b, ordered=False), (source.path, number))
    return [
        in_order.get(_key(p["prompt"], p["chosen"], p["rejected"], ordered=True))
        or either_order.get(_key(p["prompt"], p["chosen"], p["rejected"], ordered=False), (None, None))
        for p in pairs
    ]
