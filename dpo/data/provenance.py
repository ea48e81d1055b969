"""Where a prepared training pair came from: its source file and row number, numbered as data errors number rows
(dpo/data/readers.py: the JSONL line, 1-based). `dpo data audit` names suspect pairs by them.

The prepared pairs do not carry their origin (mixing, expansion and augmentation make new lists), so the sources are
read again and indexed by content: a pair is found by its prompt and its two answers in either order (a flipped
pair is the same row), a pair expanded from a multi-response row by that row. A pair no source holds (an
augmentation wrote it) has source None and row None.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from dpo.config.schema import DataSection
from dpo.data.readers import read_source
from dpo.data.rows import Problem, canonical, is_multi, normalize


def _key(prompt: Any, a: Any, b: Any) -> str:
    return canonical([prompt, sorted([canonical(a), canonical(b)])])


def locate(section: DataSection, pairs: list[dict]) -> list[tuple[str | None, int | None]]:
    """(source path, row number) of each prepared training pair; the first source row that holds it wins."""
    index: dict[str, tuple[str, int]] = {}
    for source in section.sources("train"):
        for number, raw in read_source(source.path, "data.train", source.split, source.subset):
            row = raw if isinstance(raw, Problem) else normalize(raw, source.columns, tuple(source.ignore_columns))
            if isinstance(row, Problem):
                continue
            if is_multi(row):
                keys = [_key(row["prompt"], a, b) for a, b in combinations(row["responses"], 2)]
            else:
                keys = [_key(row["prompt"], row["chosen"], row["rejected"])]
            for key in keys:
                index.setdefault(key, (source.path, number))
    return [index.get(_key(p["prompt"], p["chosen"], p["rejected"]), (None, None)) for p in pairs]
