"""Data loading, row validation, duplicate removal and the split by prompt."""

from __future__ import annotations

import json

import pytest

from dpo.config.schema import DataSection
from dpo.data.prepare import prepare_data, split_by_prompt
from dpo.data.rows import Problem, normalize
from dpo.errors import UserError


def pair(prompt, chosen="yes", rejected="no"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "p", "chosen": "a"}, "missing column(s) rejected"),
        (pair("p", chosen="  "), "'chosen' is empty"),
        (pair("p", chosen="same", rejected="same"), "chosen equals rejected"),
        (pair("p", chosen=3), "'chosen' is a int"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "mixes strings"),
        (
            {
                "prompt": [{"role": "wizard", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "role 'wizard'",
        ),
        ("just a string", "row is a str"),
        # an empty prompt cell (CSV, Parquet): not an implicit-prompt row whose prompt is "The answer is"
        ({"prompt": None, "chosen": "The answer is 4.", "rejected": "The answer is 5."}, "'prompt' is null"),
    ],
)
def test_row_problems(row, reason):
    problem = normalize(row)
    assert isinstance(problem, Problem) and reason in problem.detail


def test_good_rows_pass():
    assert normalize(pair("p")) == pair("p")


def test_bad_row_error_names_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [pair("a"), pair("b", chosen=""), pair("c")])
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=path), seed=0)
    assert str(err.value) == f"{path}: row 2: 'chosen' is empty; data.on_invalid: skip drops bad rows and counts them"


def test_truncated_jsonl_line_names_row(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(pair("a")) + "\n" + '{"prompt": "b", "cho')
    with pytest.raises(UserError, match=r"t.jsonl: row 2: last line is cut off"):
        prepare_data(DataSection(train=str(path)), seed=0)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    """Notepad and Excel write UTF-8 files with a BOM: row 1 is still a row, in JSONL as in a JSON list; a BOM
    inside the file is the bad byte it is."""
    rows = [pair(f"p{i}") for i in range(4)]
    jsonl, listed = tmp_path / "bom.jsonl", tmp_path / "bom.json"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    listed.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    for path in (jsonl, listed):
        data = prepare_data(DataSection(train=str(path), heldout_fraction=0.25), seed=0)
        assert sorted(r["prompt"] for r in data.train + data.eval) == [f"p{i}" for i in range(4)]
    jsonl.write_bytes(json.dumps(rows[0]).encode() + b"\n\xef\xbb\xbf" + json.dumps(rows[1]).encode() + b"\n")
    with pytest.raises(UserError, match=r"bom.jsonl: row 2: not valid JSON"):
        prepare_data(DataSection(train=str(jsonl), heldout_fraction=0.5), seed=0)


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(UserError, match="data.train: file .* not found"):
        prepare_data(DataSection(train=str(tmp_path / "nope.jsonl")), seed=0)


def test_split_by_prompt_never_shares_a_prompt_and_is_seeded():
    rows = [pair(f"p{i % 10}", chosen=f"c{i}", rejected=f"r{i}") for i in range(40)]
    train, held = split_by_prompt(rows, 0.3, seed=1)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len({r["prompt"] for r in held}) == 3 and len(train) + len(held) == 40
    assert split_by_prompt(rows, 0.3, seed=1) == (train, held)


def test_duplicates_dropped_and_card_counts(tmp_path):
    rows = [pair(f"p{i}") for i in range(10)] + [pair("p0"), pair("p1")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = prepare_data(DataSection(train=path, heldout_fraction=0.2), seed=0)
    card = data.card
    assert card["sources"]["train"][0]["rows_read"] == 12
    assert card["sources"]["train"][0]["dropped"] == {"duplicate": 2}
    assert card["split"]["train_pairs"] + card["split"]["eval_pairs"] == 10
    assert card["split"]["eval_prompts"] == 2 and card["split"]["prompts_in_both"] == 0
    assert len(card["content_hash"]["train"]) == 64


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_other_file_formats(tmp_path, suffix):
    import datasets

    rows = [pair(f"p{i}") for i in range(6)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    data = prepare_data(DataSection(train=str(path), heldout_fraction=0.5), seed=0)
    assert len(data.train) + len(data.eval) == 6


def test_a_csv_cell_is_the_text_it_holds(tmp_path):
    """pandas would read a column of numeric answers as integers (refused as not text) and `None` / `NA` as missing
    cells; an empty cell is missing, and score_gap is a number."""
    from dpo.data.readers import read_source

    path = tmp_path / "d.csv"
    path.write_text("\ufeffprompt,chosen,rejected,score_gap\nWhat is 2+2?,4,5,1.5\nSay nothing,None,NA,\n,a,b,\n")
    assert [row for _, row in read_source(str(path), "data.train")] == [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "score_gap": 1.5},
        {"prompt": "Say nothing", "chosen": "None", "rejected": "NA", "score_gap": None},
        {"prompt": None, "chosen": "a", "rejected": "b", "score_gap": None},
    ]
    repeated = tmp_path / "repeated.csv"  # a blank first line skipped; a repeated column kept apart, as pandas names it
    repeated.write_text("\nprompt,chosen,rejected,chosen\nWhat is 2+2?,4,5,x\n")
    assert read_source(str(repeated), "data.train") == [
        (1, {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "chosen.1": "x"})
    ]
    numbers = tmp_path / "numbers.csv"
    rows = "".join(f"What is {i}+{i}?,{2 * i},{2 * i + 1}\n" for i in range(6))
    numbers.write_text("prompt,chosen,rejected\n" + rows)
    data = prepare_data(DataSection(train=str(numbers), heldout_fraction=0.5), seed=0)
    assert sorted(r["chosen"] for r in data.train + data.eval) == ["0", "10", "2", "4", "6", "8"]


def test_a_csv_row_that_does_not_parse_is_a_bad_row_not_a_bad_file(tmp_path):
    """A comma in a value that is not quoted gives a row more fields than the header: that row is a `bad_csv` row at
    its data-row number (skipped and counted under on_invalid: skip), as a bad JSONL line is; so is a stray quote.
    A quoted value that is never closed would swallow the rest of the file: the file is refused."""
    from dpo.data.readers import read_source

    path = tmp_path / "comma.csv"
    path.write_text(
        "prompt,chosen,rejected\nWhat is 2+2?,4,5\nWhere is the Eiffel tower?,Paris, France,Berlin\n"
        'Say "hi",""hi"" x,hi\n"Two\nlines?",yes,no\nWhat is 3+3?,6,7\n'
    )
    rows = read_source(str(path), "data.train")
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]
    assert rows[1][1] == Problem("bad_csv", "4 fields, but the header has 3 (a comma in a value that is not quoted?)")
    assert rows[2][1] == Problem("bad_csv", "does not parse as CSV (',' expected after '\"')")
    assert rows[3][1] == pair("Two\nlines?", "yes", "no")
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=str(path)), seed=0)
    assert str(err.value) == (
        f"{path}: row 2: 4 fields, but the header has 3 (a comma in a value that is not quoted?); row 3: does not "
        "parse as CSV (',' expected after '\"'); data.on_invalid: skip drops bad rows and counts them"
    )
    data = prepare_data(DataSection(train=str(path), on_invalid="skip", heldout_fraction=0.5), seed=0)
    assert data.card["sources"]["train"][0]["dropped"] == {"bad_csv": 2} and len(data.train + data.eval) == 3
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('prompt,chosen,rejected\nWhat is 2+2?,4,5\n"What is 3+3?,6,7\nWhat is 4+4?,8,9\n')
    with pytest.raises(UserError) as err:
        read_source(str(unclosed), "data.train")
    assert str(err.value) == f"{unclosed}: cannot read: row 2: a quoted value is never closed (the file ends in it)"


def test_save_to_disk_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list([pair(f"p{i}") for i in range(4)]).save_to_disk(str(tmp_path / "ds"))
    data = prepare_data(DataSection(train=str(tmp_path / "ds"), heldout_fraction=0.5), seed=0)
    assert len(data.train) == 2 and len(data.eval) == 2


def test_label_noise_flips_exactly_the_fraction_and_is_seeded():
    import random

    from dpo.data.augment import label_noise

    rows = [pair(f"p{i}", chosen=f"good{i}", rejected=f"bad{i}") for i in range(10)]
    out = label_noise(rows, random.Random(0), fraction=0.3)
    flipped = [i for i, (a, b) in enumerate(zip(rows, out, strict=True)) if a != b]
    assert len(flipped) == 3
    for i in flipped:
        assert out[i] == pair(f"p{i}", chosen=f"bad{i}", rejected=f"good{i}")
    assert label_noise(rows, random.Random(0), fraction=0.3) == out  # same seed, same flips
    assert rows[flipped[0]]["chosen"] == f"good{flipped[0]}"  # the input is not modified


def test_augmentation_touches_training_pairs_only_and_is_recorded(tmp_path):
    rows = [pair(f"p{i}", chosen=f"good{i}", rejected=f"bad{i}") for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    section = DataSection(train=path, heldout_fraction=0.25, augment=[{"type": "label_noise", "fraction": 0.5}])
    data = prepare_data(section, seed=3)
    assert all(r["chosen"].startswith("good") for r in data.eval)  # held-out keeps the true labels
    assert sum(r["chosen"].startswith("bad") for r in data.train) == 8  # half of the 15 training pairs, rounded
    assert data.card["augmented"] == [{"type": "label_noise", "fraction": 0.5, "before": 15, "after": 15, "changed": 8,
                                      "unchanged": 7}]  # fmt: skip
    assert prepare_data(section, seed=3).train == data.train


def test_a_split_left_empty_is_named_with_what_was_dropped(tmp_path):
    """Not "need at least 2 distinct prompts" under data.heldout_fraction, nor data.train for an empty data.eval: the
    split that has nothing left, and why its rows were dropped (every source's counts together)."""
    extra = write_jsonl(tmp_path / "extra.jsonl", [{**pair(f"Q{i}"), "id": i} for i in range(6)])
    good = write_jsonl(tmp_path / "good.jsonl", [pair(f"P{i}") for i in range(4)])
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=extra, on_invalid="skip"), seed=0)
    assert str(err.value) == "data.train: no rows left: the 6 rows read were all dropped (extra_column: 6)"
    blank = write_jsonl(tmp_path / "blank.jsonl", [pair(f"B{i}", chosen=" ") for i in range(3)])
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=good, eval=[extra, blank], on_invalid="skip"), seed=0)
    assert str(err.value) == "data.eval: no rows left: the 9 rows read were all dropped (extra_column: 6, empty: 3)"


def test_a_weighted_source_that_only_repeats_an_earlier_one_is_named(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [pair(f"P{i}") for i in range(4)])
    section = DataSection(train=[{"path": good, "weight": 1}, {"path": good, "weight": 2}], heldout_fraction=0.5)
    with pytest.raises(UserError) as err:
        prepare_data(section, seed=0)
    assert str(err.value) == (
        f"data.train: source 1: no rows to take a weight from: all 4 rows of {good} duplicate earlier rows (the "
        "same data listed twice?)"
    )
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(f"B{i}", chosen=" ") for i in range(3)])
    section = DataSection(train=[good, {"path": bad, "count": 2}], heldout_fraction=0.5, on_invalid="skip")
    with pytest.raises(UserError) as err:
        prepare_data(section, seed=0)
    assert str(err.value) == (
        f"data.train: source 1: no rows to take a count from: the 3 rows of {bad} were all dropped (empty: 3)"
    )


def test_a_split_that_pair_expansion_leaves_empty_is_named(tmp_path):
    rows = [{"prompt": f"Q{i}", "responses": ["a", "b"], "scores": [1.0, 1.0 + i]} for i in range(3)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    eval_path = write_jsonl(tmp_path / "e.jsonl", [pair("E")])
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=path, eval=eval_path, expand_pairs={"min_gap": 3}), seed=0)
    assert str(err.value) == (
        "data.train: no pairs left after pair expansion: its 3 multi-response rows made no pair (ties: 1, below "
        "data.expand_pairs.min_gap: 2)"
    )
