"""Generates the sorting dataset: multi-response scored rows (a prompt, 4 answers, a gold score each).

    python data/sorting/generate.py            # rewrites train.jsonl, eval.jsonl and card.json here

Each prompt asks to sort 4-6 distinct numbers below 100. Its 4 answers are the sorted list and three of
the mistakes people and small models make: one neighbouring pair swapped, two pairs swapped, a number
dropped, the list sorted the wrong way round, the list left as given. Every answer is scored by the gold
reward (dpo/data/gold.py: sorting_reward, the share of positions right), so the rows exercise pair expansion
(`data.expand_pairs`: pairs whose score gap is at least min_gap), and generated answers can be scored too.
Rows are in TRL's standard (plain text) format. Train and eval share no prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dpo.data.gold import sorting_reward  # noqa: E402

SEED = 2024
N_TRAIN, N_EVAL, N_RESPONSES = 300, 60, 4
HERE = Path(__file__).parent


def _swap(values: list[int], i: int) -> list[int]:
    out = list(values)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def mistakes(rng: random.Random, given: list[int]) -> dict[str, list[int]]:
    ordered = sorted(given)
    i, j = rng.sample(range(len(ordered) - 1), 2)
    return {
        "swap_one": _swap(ordered, i),
        "swap_two": _swap(_swap(ordered, i), j) if abs(i - j) > 1 else _swap(ordered, min(i, j)),
        "drop_one": ordered[: (k := rng.randrange(len(ordered)))] + ordered[k + 1 :],
        "descending": ordered[::-1],
        "as_given": list(given),
    }


def make_row(rng: random.Random) -> dict:
    given = rng.sample(range(1, 100), rng.randint(4, 6))
    prompt = f"Sort these numbers in ascending order: {', '.join(map(str, given))}."
    answers = {", ".join(map(str, sorted(given)))}
    wrong = mistakes(rng, given)
    for name in rng.sample(sorted(wrong), len(wrong)):  # a random order of the mistakes; the first distinct ones
        if len(answers) == N_RESPONSES:
            break
        answers.add(", ".join(map(str, wrong[name])))
    responses = sorted(answers)
    rng.shuffle(responses)
    scores = [round(sorting_reward(prompt, r), 3) for r in responses]
    return {"prompt": prompt, "responses": responses, "scores": scores}


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows = []
    while len(rows) < N_TRAIN + N_EVAL:
        row = make_row(rng)
        if row["prompt"] in seen or len(row["responses"]) < N_RESPONSES:
            continue
        seen.add(row["prompt"])
        assert max(row["scores"]) == 1.0 and sum(s == 1.0 for s in row["scores"]) == 1
        rows.append(row)
    splits = {"train": rows[:N_TRAIN], "eval": rows[N_TRAIN:]}
    hashes = {}
    for name, part in splits.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (HERE / f"{name}.jsonl").write_text(text, encoding="utf-8")
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()
    card = {
        "name": "sorting",
        "description": "Sort 4-6 numbers; 4 answers per prompt (the sorted list and 3 typical mistakes), each scored.",
        "format": "multi-response (standard text): prompt, responses (4), scores (gold reward of each response)",
        "generator": "data/sorting/generate.py",
        "seed": SEED,
        "sizes": {name: len(part) for name, part in splits.items()},
        "responses_per_prompt": N_RESPONSES,
        "prompts_shared_between_splits": 0,
        "gold_reward": "sorting",
        "gold_reward_definition": "dpo/data/gold.py:sorting_reward: the share of positions of the sorted list that the "
        "answer's integers get right; 1.0 only for the exact sorted list",
        "mistakes": "one or two neighbouring pairs swapped, a number dropped, sorted descending, left as given",
        "use": "data.expand_pairs turns each row into pairs (recipes/sorting.yaml: min_gap 0.2, 3 pairs per prompt)",
        "sha256": hashes,
    }
    (HERE / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {card['sizes']} to {HERE}")


if __name__ == "__main__":
    main()
