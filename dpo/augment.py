"""Augmentations of the training pairs, and the one table of their names (AUGMENTATIONS).

Each augmentation is a pure function `fn(rows, rng, *, params...) -> rows`: it takes the training pairs
and a seeded `random.Random`, and returns the new list. Like the losses, its keyword-only parameters
are its recipe keys, so a key it does not take is an error. Augmentations run after the held-out split
and only on the training pairs: held-out data is never touched, and no prompt leaks across the split.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable


def label_noise(rows: list[dict], rng: random.Random, *, fraction: float) -> list[dict]:
    """Flip exactly round(fraction * N) randomly chosen pairs (chosen <-> rejected): simulated annotator
    noise, for robustness studies and the overfitting benchmark."""
    flipped = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
    return [
        {**row, "chosen": row["rejected"], "rejected": row["chosen"]} if i in flipped else dict(row)
        for i, row in enumerate(rows)
    ]


AUGMENTATIONS: dict[str, Callable[..., list[dict]]] = {
    "label_noise": label_noise,
}


def parameters(name: str) -> dict[str, object]:
    """The recipe keys an augmentation takes, with their defaults (inspect.Parameter.empty = required)."""
    signature = inspect.signature(AUGMENTATIONS[name])
    return {p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


# Allowed ranges of the augmentations' parameters: (low, high), inclusive.
RANGES: dict[tuple[str, str], tuple[float, float]] = {("label_noise", "fraction"): (0.0, 1.0)}


def check(name: str, params: dict) -> str | None:
    """Why these parameters cannot run, or None (types and ranges; unknown/missing keys are checked by name)."""
    for key, value in params.items():
        low, high = RANGES.get((name, key), (None, None))
        if low is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key} must be a number, got {value!r}"
        if not low <= value <= high:
            return f"{key} must be in [{low}, {high}], got {value}"
    return None


def apply(rows: list[dict], steps: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Run the augmentation steps in order; returns the rows and a record per step for the data card."""
    records = []
    for index, step in enumerate(steps):
        params = {k: v for k, v in step.items() if k != "type"}
        rng = random.Random(f"{seed}:{index}:{step['type']}")  # each step seeded on its own: reorderable
        before = rows
        rows = AUGMENTATIONS[step["type"]](rows, rng, **params)
        changed = sum(1 for a, b in zip(before, rows, strict=False) if a != b) + abs(len(rows) - len(before))
        records.append({"type": step["type"], **params, "before": len(before), "after": len(rows), "changed": changed})
    return rows, records
