"""Leakage between the training and held-out data (issue 19): prompts compared after normalising whitespace, and
held-out data that is the training data refused unless `data.allow_eval_in_train` asks for it."""

from __future__ import annotations

import json

import pytest

from dpo.config.schema import DataSection
from dpo.data.prepare import prepare_data, split_by_prompt
from dpo.data.rows import prompt_key
from dpo.errors import UserError


def pair(prompt, chosen="good", rejected="bad"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_key_ignores_runs_of_whitespace_in_text_and_messages():
    assert prompt_key("What is 2+2?") == prompt_key("  What  is\t2+2?\n")
    assert prompt_key([{"role": "user", "content": "What is 2+2?"}]) == prompt_key(
        [{"role": "user", "content": "What is\n\n2+2? "}]
    )
    assert prompt_key("What is 2+2?") != prompt_key("What is 2+3?")


def test_whitespace_variants_of_a_prompt_stay_on_one_side_of_the_split():
    rows = [pair(f"Question {i}?") for i in range(10)] + [pair(f"Question  {i}?\n", "fine", "worse") for i in range(10)]
    train, held = split_by_prompt(rows, 0.3, seed=0)
    assert {prompt_key(r["prompt"]) for r in train}.isdisjoint({prompt_key(r["prompt"]) for r in held})
    assert len(held) == 6  # 3 prompts held out, each with its whitespace variant


def test_prompts_in_both_counts_whitespace_variants_as_one_prompt(tmp_path):
    train = write(tmp_path / "train.jsonl", [pair("What is 2+2?"), pair("What is 3+3?")])
    heldout = write(tmp_path / "eval.jsonl", [pair("What  is 2+2?\n", "four", "five"), pair("What is 9+9?")])
    card = prepare_data(DataSection(train=train, eval=heldout), seed=0).card
    assert card["split"]["prompts_in_both"] == 1


def test_eval_that_is_a_subset_of_train_is_an_error_unless_allowed(tmp_path):
    rows = [pair(f"Q{i}?") for i in range(6)]
    train = write(tmp_path / "train.jsonl", rows)
    copy = write(tmp_path / "copy.jsonl", rows[:3])
    with pytest.raises(UserError, match="data.eval: every one of the 3 held-out rows is also a training row"):
        prepare_data(DataSection(train=train, eval=copy), seed=0, where=lambda key: key)
    data = prepare_data(DataSection(train=train, eval=copy, allow_eval_in_train=True), seed=0)
    assert len(data.eval) == 3
    partly = write(tmp_path / "partly.jsonl", [*rows[:2], pair("New?")])
    assert len(prepare_data(DataSection(train=train, eval=partly), seed=0).eval) == 3  # one new row: no error
