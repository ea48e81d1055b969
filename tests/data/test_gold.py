"""The shipped dataset's gold reward: every chosen answer scores 1, every rejected one 0, and it parses
generated answers (not only the stored pairs)."""

from __future__ import annotations

import pytest

from dpo.data.gold import GOLD_REWARDS, arithmetic_answer, arithmetic_reward
from tests.conftest import ARITHMETIC, read_jsonl


@pytest.mark.parametrize("split", ["train", "eval"])
def test_gold_reward_separates_every_shipped_pair(split):
    rows = read_jsonl(ARITHMETIC / f"{split}.jsonl")
    assert len(rows) == {"train": 1200, "eval": 200}[split]
    reward = GOLD_REWARDS["arithmetic"]
    for row in rows:
        prompt = row["prompt"][0]["content"]
        assert reward(prompt, row["chosen"][0]["content"]) == 1.0
        assert reward(prompt, row["rejected"][0]["content"]) == 0.0


@pytest.mark.parametrize(
    ("prompt", "answer", "expected"),
    [
        ("What is 47 + 38?", "The answer is 85", 1.0),
        ("What is 47 + 38?", "47 + 38 = 75.", 0.0),
        ("What is 93 - 17?", "76", 1.0),
        ("What is 23 * 4?", "23 * 4 = 92.", 1.0),
        ("Convert 3 km to m.", "3 km = 3,000 m.", 1.0),
        ("Convert 3 km to m.", "I don't know.", 0.0),
    ],
)
def test_gold_reward_scores_free_text(prompt, answer, expected):
    assert arithmetic_reward(prompt, answer) == expected


def test_prompts_of_other_tasks_are_refused():
    with pytest.raises(ValueError, match="not an arithmetic-dataset prompt"):
        arithmetic_answer("Tell me a joke.")
    with pytest.raises(ValueError, match="not an arithmetic-dataset prompt"):  # a unit pair it has no factor for
        arithmetic_answer("Convert 3 ft to in.")  # was a KeyError, which dpo eval would not have caught


def test_train_and_eval_share_no_prompt():
    train = {r["prompt"][0]["content"] for r in read_jsonl(ARITHMETIC / "train.jsonl")}
    held = {r["prompt"][0]["content"] for r in read_jsonl(ARITHMETIC / "eval.jsonl")}
    assert train.isdisjoint(held)
