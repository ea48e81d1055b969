"""Programmatic gold rewards for the shipped datasets: score any answer to a prompt, not just pairs.

Each reward takes the prompt text and an answer text and returns a score in [0, 1], 1.0 exactly when the
answer is fully correct (arithmetic: 1 or 0; sorting: graded, the share of positions right).
The data card of a dataset names its reward (`gold_reward`) by its key in GOLD_REWARDS.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Unit conversions used by the arithmetic dataset: (from, to) -> factor.
UNIT_FACTORS: dict[tuple[str, str], int] = {
    ("m", "cm"): 100,
    ("km", "m"): 1000,
    ("cm", "mm"): 10,
    ("kg", "g"): 1000,
    ("h", "min"): 60,
    ("min", "s"): 60,
    ("L", "mL"): 1000,
    ("day", "h"): 24,
}

_ARITH = re.compile(r"What is (\d+) ([+\-*x×]) (\d+)\?")
_CONVERT = re.compile(r"Convert (\d+) (\S+) to (\S+)\.")
_LAST_INT = re.compile(r"-?\d+")


def arithmetic_answer(prompt: str) -> int:
    """The true value asked for by an arithmetic-dataset prompt."""
    if m := _ARITH.search(prompt):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return a + b if op == "+" else a - b if op == "-" else a * b
    if (m := _CONVERT.search(prompt)) and (m.group(2), m.group(3)) in UNIT_FACTORS:
        return int(m.group(1)) * UNIT_FACTORS[(m.group(2), m.group(3))]
    raise ValueError(f"not an arithmetic-dataset prompt: {prompt!r}")


def arithmetic_reward(prompt: str, answer: str) -> float:
    """1.0 when the last integer in the answer is the true value, else 0.0."""
    numbers = _LAST_INT.findall(answer.replace(",", ""))
    return float(bool(numbers) and int(numbers[-1]) == arithmetic_answer(prompt))


_SORT = re.compile(r"Sort these numbers in ascending order: ([\d, ]+)\.")


def sorting_numbers(prompt: str) -> list[int]:
    """The numbers a sorting-dataset prompt asks to sort."""
    if m := _SORT.search(prompt):
        return [int(x) for x in m.group(1).split(",")]
    raise ValueError(f"not a sorting-dataset prompt: {prompt!r}")


def sorting_reward(prompt: str, answer: str) -> float:
    """The share of positions of the sorted list that the answer's integers get right (in order, by position):
    1.0 only for the exact sorted list; a missing, extra or misplaced number costs its positions."""
    target = sorted(sorting_numbers(prompt))
    given = [int(x) for x in _LAST_INT.findall(answer)]
    right = sum(a == b for a, b in zip(given, target, strict=False))
    return right / max(len(target), len(given))


GOLD_REWARDS: dict[str, Callable[[str, str], float]] = {
    "arithmetic": arithmetic_reward,
    "sorting": sorting_reward,
}
