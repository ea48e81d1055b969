"""Generates the arithmetic preference dataset: correct answer (chosen) vs a plausible wrong one (rejected).

    python data/arithmetic/generate.py            # rewrites train.jsonl, eval.jsonl and card.json here

Prompts are two-digit additions and subtractions, multiplications by one digit, and unit conversions.
Wrong answers are the mistakes people and small models make: a dropped or extra carry (off by 10),
off by one, swapped digits, and (for conversions) the wrong factor. Each prompt appears once, so the
train and eval files share no prompt. The gold reward (dpo/data/gold.py: arithmetic_reward) scores any
answer by parsing the prompt, so generated answers can be scored too, not only these pairs.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dpo.data.gold import UNIT_FACTORS, arithmetic_answer, arithmetic_reward  # noqa: E402

SEED = 1234
N_TRAIN, N_EVAL = 1200, 200
HERE = Path(__file__).parent


def wrong_number(rng: random.Random, true: int) -> int:
    candidates = {true + 10, true - 10, true + 1, true - 1}
    digits = str(abs(true))
    if len(digits) >= 2 and digits[-1] != digits[-2]:
        swapped = int(digits[:-2] + digits[-1] + digits[-2])
        candidates.add(-swapped if true < 0 else swapped)
    candidates.discard(true)
    candidates = {c for c in candidates if c >= 0} or {true + 10}
    return rng.choice(sorted(candidates))


def make_prompt(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer)."""
    kind = rng.choice(["add", "sub", "mul", "convert"])
    if kind == "convert":
        (src, dst), factor = rng.choice(sorted(UNIT_FACTORS.items()))
        n = rng.randint(2, 19)
        prompt = f"Convert {n} {src} to {dst}."
        true = n * factor
        wrong = n * rng.choice([f for f in (10, 60, 100, 1000, 24) if f != factor])
        return prompt, f"{n} {src} = {true} {dst}.", f"{n} {src} = {wrong} {dst}."
    if kind == "mul":
        a, b, op = rng.randint(11, 99), rng.randint(2, 9), "*"
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if kind == "sub" and b > a:
            a, b = b, a
        op = "+" if kind == "add" else "-"
    prompt = f"What is {a} {op} {b}?"
    true = arithmetic_answer(prompt)
    wrong = wrong_number(rng, true)
    return prompt, f"{a} {op} {b} = {true}.", f"{a} {op} {b} = {wrong}."


def row(prompt: str, chosen: str, rejected: str) -> dict:
    # TRL's conversational format: the chat template of the model is applied at training time.
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows = []
    while len(rows) < N_TRAIN + N_EVAL:
        prompt, chosen, rejected = make_prompt(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        assert arithmetic_reward(prompt, chosen) == 1.0 and arithmetic_reward(prompt, rejected) == 0.0
        rows.append(row(prompt, chosen, rejected))
    splits = {"train": rows[:N_TRAIN], "eval": rows[N_TRAIN:]}
    hashes = {}
    for name, part in splits.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (HERE / f"{name}.jsonl").write_text(text, encoding="utf-8")
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()
    card = {
        "name": "arithmetic",
        "description": "Two-digit arithmetic and unit conversions; chosen = correct, rejected = plausible mistake.",
        "format": "conversational (TRL): prompt/chosen/rejected message lists",
        "generator": "data/arithmetic/generate.py",
        "seed": SEED,
        "sizes": {name: len(part) for name, part in splits.items()},
        "prompts_shared_between_splits": 0,
        "gold_reward": "arithmetic",
        "gold_reward_definition": "dpo/data/gold.py:arithmetic_reward: 1.0 when the last integer in the answer equals "
        "the value computed from the prompt, else 0.0",
        "mistakes": "off by 10 (carry), off by 1, swapped last two digits, wrong conversion factor",
        "sha256": hashes,
    }
    (HERE / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {card['sizes']} to {HERE}")


if __name__ == "__main__":
    main()
