"""Pair expansion: multi-response rows (a prompt with N scored or ranked answers) -> preference pairs.

A format conversion, not an augmentation: it runs on both splits (held-out multi-response data must become
pairs to be evaluated), after the split by prompt, so all pairs of a prompt stay on its side. Pair rows pass
through unchanged. For each prompt, every two answers whose scores differ by at least `min_gap` (and by more
than 0: a tie is no preference) give the pair (better, worse); with `max_pairs_per_prompt` the pairs with
the largest gaps are kept, ties between equal gaps broken by the seeded generator. An answer given twice (with one
score: a row that gives it two is refused by the row check) makes no pair with itself, counted as
`identical_answers`. Each pair keeps its score gap (`score_gap`), which travels with it into the training batches
for losses that read it (ODPO's offset). Ranks count as scores (negated), so a pair from ranked answers carries its
rank difference.
"""

from __future__ import annotations

import random

from dpo.data.rows import SCORE_GAP, canonical, is_multi


def expand_pairs(
    rows: list[dict], rng: random.Random, *, min_gap: float = 0.0, max_pairs_per_prompt: int | None = None
) -> tuple[list[dict], dict]:
    """The rows with every multi-response row replaced by its pairs (in the position of the prompt's first
    multi-response row), and counts for the data card."""
    candidates: dict[str, list[tuple[float, float, dict]]] = {}
    counts = {"multi_response_rows": 0, "pairs_made": 0, "below_min_gap": 0, "ties": 0, "identical_answers": 0,
              "cut_by_cap": 0, "already_a_pair_row": 0}  # fmt: skip
    # a pair that a pair row of these data already holds is not made again (duplicates were dropped before this)
    pair_rows = {canonical([r["prompt"], r["chosen"], r["rejected"]]) for r in rows if not is_multi(r)}
    for row in rows:
        if not is_multi(row):
            continue
        counts["multi_response_rows"] += 1
        pairs = candidates.setdefault(canonical(row["prompt"]), [])
        answers = list(zip(row["responses"], row["scores"], strict=True))
        for i, (better, s_better) in enumerate(answers):
            for j, (worse, s_worse) in enumerate(answers):
                if i != j and better == worse:  # one answer given twice (with one score: the row check sees to it)
                    counts["identical_answers"] += i < j  # each unordered pair once
                    continue
                gap = s_better - s_worse
                if i == j or gap < 0 or (gap == 0 and i > j):
                    continue  # each unordered pair once; a tie is no preference
                if gap == 0:
                    counts["ties"] += 1
                elif gap < min_gap:
                    counts["below_min_gap"] += 1
                elif canonical([row["prompt"], better, worse]) in pair_rows:
                    counts["already_a_pair_row"] += 1
                elif not any(pair["chosen"] == better and pair["rejected"] == worse for _, _, pair in pairs):
                    pair = {"prompt": row["prompt"], "chosen": better, "rejected": worse, SCORE_GAP: gap}
                    pairs.append((gap, rng.random(), pair))
    out, done = [], set()
    for row in rows:
        if not is_multi(row):
            out.append(row)
            continue
        key = canonical(row["prompt"])
        if key in done:
            continue
        done.add(key)
        pairs = sorted(candidates[key], key=lambda item: (-item[0], item[1]))
        if max_pairs_per_prompt is not None and len(pairs) > max_pairs_per_prompt:
            counts["cut_by_cap"] += len(pairs) - max_pairs_per_prompt
            pairs = pairs[:max_pairs_per_prompt]
        counts["pairs_made"] += len(pairs)
        out.extend(pair for _, _, pair in pairs)
    return out, counts
