"""Each augmentation and the pair expansion on small hand-made inputs: exact outputs, seeded, composable,
recorded in the data card, held-out data untouched; plug-ins validated like input rows."""

from __future__ import annotations

import json
import random
import re
import textwrap

import pytest

from dpo.config.loading import load_recipe
from dpo.config.schema import DataSection
from dpo.data.augment import label_noise, off_prompt_negatives, prompt_variants
from dpo.data.expand import expand_pairs
from dpo.data.prepare import prepare_data
from dpo.errors import UserError
from tests.conftest import write_recipe


def pair(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [pair("p1", "c1", "r1"), pair("p2", "c2", "r2")]
CONV = [
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
]


def test_label_noise_fraction_one_flips_every_pair():
    assert label_noise(ROWS, random.Random(0), fraction=1.0) == [pair("p1", "r1", "c1"), pair("p2", "r2", "c2")]


def test_the_share_of_pairs_a_fraction_gives_is_rounded_one_way_and_is_never_silently_none():
    """fraction * N rounded to the nearest pair, halves up, with the one rounding function (not Python's round():
    0.25 of 10 flipped 2, 0.15 of 10 flipped 2, 0.05 of 10 flipped none); a fraction > 0 that gives no pair is an
    error naming the step, not a step that does nothing."""
    from dpo.data.augment import apply
    from dpo.data.prepare import RowChecker

    rows = [pair(f"p{i}", f"good{i}", f"bad{i}") for i in range(10)]
    flipped = {f: sum(a != b for a, b in zip(rows, label_noise(rows, random.Random(0), fraction=f), strict=True))
               for f in (0.05, 0.15, 0.25, 0.35, 0.3)}  # fmt: skip
    assert flipped == {0.05: 1, 0.15: 2, 0.25: 3, 0.35: 4, 0.3: 3}
    assert len(off_prompt_negatives(rows[:5], random.Random(0), fraction=0.1)) == 6  # 0.5 of a pair: one
    for step in ({"type": "label_noise", "fraction": 0.04}, {"type": "off_prompt_negatives", "fraction": 0.04}):
        with pytest.raises(UserError) as err:
            apply(rows, [step], 0, RowChecker().pairs_only)
        assert str(err.value) == (
            f"data.augment: step 0 ({step['type']}): has no effect: fraction 0.04 of 10 training pairs rounds to no "
            "pair"
        )
    assert label_noise(rows, random.Random(0), fraction=0.0) == rows  # 0 says none: a sweep's baseline


def test_off_prompt_negatives_exact():
    # two prompts: the only other prompt's chosen answer is each pair's extra rejected answer
    out = off_prompt_negatives(ROWS, random.Random(0), fraction=1.0)
    assert out == ROWS + [pair("p1", "c1", "c2"), pair("p2", "c2", "c1")]
    assert off_prompt_negatives(ROWS, random.Random(0), fraction=0.0) == ROWS  # 0 says none: a sweep's baseline


def test_off_prompt_negatives_that_can_add_no_pair_is_an_error_naming_the_step():
    """One distinct prompt (whitespace aside), or no other prompt's chosen answer that makes a new pair: the step
    added nothing and said nothing (it gave the rows back); now an error naming the step, as a fraction that rounds to
    no pair is. Fraction 0 still adds none quietly (a sweep's baseline)."""
    from dpo.data.augment import apply
    from dpo.data.prepare import RowChecker

    step = [{"type": "off_prompt_negatives", "fraction": 1.0}]
    one_question = [pair("What is 2+2?", "4", "5"), pair("What  is 2+2? ", "Four", "Five")]  # whitespace aside
    for rows in (ROWS[:1], one_question):
        with pytest.raises(UserError) as err:
            apply(rows, step, 0, RowChecker().pairs_only)
        assert str(err.value) == (
            f"data.augment: step 0 (off_prompt_negatives): has no effect: the {len(rows)} training pairs have one "
            "distinct prompt, and a negative is another prompt's chosen answer"
        )
    # each other prompt's chosen answer is this pair's own rejected one: no negative anywhere
    swapped = [pair("What is 2+2?", "4", "5"), pair("What is 2+3?", "5", "4")]
    with pytest.raises(UserError) as err:
        apply(swapped, step, 0, RowChecker().pairs_only, where="r.yaml: data.augment")
    assert str(err.value) == (
        "r.yaml: data.augment: step 0 (off_prompt_negatives): has no effect: none of the 2 training pairs has a "
        "negative (another prompt's chosen answer that differs from both its answers and makes a pair not there "
        "already)"
    )
    # the same with a fraction below 1: every pair is judged, not only the one drawn
    with pytest.raises(UserError) as err:
        apply(swapped, [{"type": "off_prompt_negatives", "fraction": 0.5}], 0, RowChecker().pairs_only)
    assert str(err.value) == (
        "data.augment: step 0 (off_prompt_negatives): has no effect: none of the 2 training pairs has a negative "
        "(another prompt's chosen answer that differs from both its answers and makes a pair not there already)"
    )
    assert off_prompt_negatives(one_question, random.Random(0), fraction=0.0) == one_question


def test_off_prompt_negatives_make_no_pair_that_is_already_there():
    """Where answers are short (arithmetic), another prompt's chosen answer is often this pair's own rejected one:
    that "negative" would be the pair itself. A negative that makes a pair already among the rows, or among the new
    ones, is not taken either; a pair with no usable negative gets none, and the card counts what was added."""
    from dpo.data.augment import apply
    from dpo.data.prepare import RowChecker

    rows = [pair("What is 2+2?", "4", "5"), pair("What is 2+3?", "5", "4"), pair("What is 1+3?", "4", "3"),
            pair("What is 1+2?", "3", "4")]  # fmt: skip
    out, records = apply(rows, [{"type": "off_prompt_negatives", "fraction": 1.0}], 0, RowChecker().pairs_only)
    assert out == rows + [pair("What is 2+2?", "4", "3"), pair("What is 2+3?", "5", "3"),
                          pair("What is 1+3?", "4", "5"), pair("What is 1+2?", "3", "5")]  # fmt: skip
    assert records == [
        {"type": "off_prompt_negatives", "fraction": 1.0, "before": 4, "after": 8, "changed": 4, "unchanged": 4}
    ]
    # (P, A, C) is there already: the first pair's only negative, C, is no new pair; D makes one (P, A, D), once
    rows = [pair("P", "A", "B"), pair("P", "A", "C"), pair("Q", "C", "X")]
    assert off_prompt_negatives(rows, random.Random(0), fraction=1.0) == rows + [pair("Q", "C", "A")]
    rows = [pair("P", "A", "B"), pair("P", "A", "C"), pair("Q", "D", "X")]
    assert off_prompt_negatives(rows, random.Random(0), fraction=1.0) == rows + [
        pair("P", "A", "D"), pair("Q", "D", "A")
    ]  # fmt: skip


def test_off_prompt_negatives_drawing_only_pairs_without_a_negative_is_no_error_for_any_seed():
    """Only the third pair has a negative (x and y are each other's pair's answers; q is nobody's chosen answer).
    With fraction 1/3 one pair is drawn: whether the step added a pair depended on the seed, and the seeds that drew
    another pair refused the recipe as having no effect. The data has a negative, so no seed is refused; the card
    counts what each draw added."""
    from dpo.data.augment import apply
    from dpo.data.prepare import RowChecker

    rows = [pair("pA", "x", "y"), pair("pB", "y", "x"), pair("pC", "x", "q")]
    step = [{"type": "off_prompt_negatives", "fraction": 1 / 3}]
    added = {}
    for seed in range(6):
        out, records = apply(rows, step, seed, RowChecker().pairs_only)
        assert out[:3] == rows and out[3:] in ([], [pair("pC", "x", "y")])
        assert records[0]["after"] == len(out)
        added[seed] = len(out) - 3
    assert added == {0: 1, 1: 0, 2: 0, 3: 1, 4: 1, 5: 0}  # seeds 1, 2 and 5 draw a pair without a negative


def test_off_prompt_negatives_seeded_and_never_same_prompt():
    rows = [pair(f"p{i % 5}", f"c{i}", f"r{i}") for i in range(20)]
    out = off_prompt_negatives(rows, random.Random(7), fraction=0.5)
    assert out[:20] == rows and len(out) == 30
    by_chosen = {r["chosen"]: r["prompt"] for r in rows}
    for new in out[20:]:
        assert new["rejected"].startswith("c") and by_chosen[new["rejected"]] != new["prompt"]
    assert off_prompt_negatives(rows, random.Random(7), fraction=0.5) == out
    assert off_prompt_negatives(rows, random.Random(8), fraction=0.5) != out


def test_prompt_variants_text_and_messages_exact():
    out = prompt_variants(ROWS, random.Random(0), templates=["Q: {prompt}"], system_prompts=["Be brief."])
    assert out == [
        ROWS[0],
        pair("Be brief.\n\nQ: p1", "c1", "r1"),
        ROWS[1],
        pair("Be brief.\n\nQ: p2", "c2", "r2"),
    ]
    (original, variant) = prompt_variants(CONV, random.Random(0), templates=["Answer: {prompt}"], system_prompts=["S"])
    assert original == CONV[0]
    assert variant["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Answer: 2+2?"}]
    assert variant["chosen"] == CONV[0]["chosen"] and CONV[0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    # an unchanged prompt is not a variant; keep_original false replaces the pairs
    assert prompt_variants(ROWS, random.Random(0)) == ROWS
    assert prompt_variants(ROWS, random.Random(0), templates=["{prompt}!"], keep_original=False) == [
        pair("p1!", "c1", "r1"),
        pair("p2!", "c2", "r2"),
    ]


def test_prompt_variants_without_the_original_keep_a_pair_no_variant_changed():
    """keep_original: false replaces each pair by its variants; a pair whose drawn variant is its own prompt (the
    template '{prompt}', no system prompt) is kept as it is, not dropped, and the card counts it as unchanged."""
    from dpo.data.augment import apply
    from dpo.data.prepare import RowChecker

    rows = [pair(f"q{i}", "a", "b") for i in range(10)]
    step = {"type": "prompt_variants", "templates": ["{prompt}", "Question: {prompt}"], "keep_original": False}
    out, records = apply(rows, [step], 0, RowChecker().pairs_only)
    varied = {0, 6}  # the step's seeded draws: 'Question: {prompt}' for these, '{prompt}' for the others
    assert [r["prompt"] for r in out] == [f"Question: q{i}" if i in varied else f"q{i}" for i in range(10)]
    assert records == [{**step, "before": 10, "after": 10, "changed": 2, "unchanged": 8}]
    assert prompt_variants(CONV, random.Random(0), system_prompts=["S"], keep_original=False) == [
        {**CONV[0], "prompt": [{"role": "system", "content": "S"}, *CONV[0]["prompt"]]}
    ]
    no_user = [{**CONV[0], "prompt": [{"role": "system", "content": "S"}]}]  # nothing a template can wrap
    assert prompt_variants(no_user, random.Random(0), templates=["Q: {prompt}"], keep_original=False) == no_user


def test_prompt_variants_seeded():
    kwargs = {"templates": ["A {prompt}", "B {prompt}", "C {prompt}"], "system_prompts": ["x", "y"], "copies": 2}
    out = prompt_variants(ROWS * 3, random.Random(1), **kwargs)
    assert out == prompt_variants(ROWS * 3, random.Random(1), **kwargs)
    assert out != prompt_variants(ROWS * 3, random.Random(2), **kwargs)
    assert all(r["prompt"] in ("p1", "p2") or r["prompt"][0] in "xy" for r in out)


def test_expand_pairs_exact():
    multi = {"prompt": "q", "responses": ["best", "good", "tie", "bad"], "scores": [3.0, 2.0, 2.0, 0.0]}
    rows, counts = expand_pairs([pair("p0", "a", "b"), multi], random.Random(0), min_gap=1.0)
    # pair rows pass through; gap 3 first, then the two gap-2 pairs, then the two gap-1 pairs (ties seeded)
    assert rows[0] == pair("p0", "a", "b") and len(rows) == 6
    assert rows[1] == {**pair("q", "best", "bad"), "score_gap": 3.0}  # each pair keeps its score gap (ODPO)
    assert {r["chosen"] + ">" + r["rejected"] for r in rows[2:4]} == {"good>bad", "tie>bad"}
    assert {r["chosen"] + ">" + r["rejected"] for r in rows[4:]} == {"best>good", "best>tie"}
    assert [r["score_gap"] for r in rows[2:]] == [2.0, 2.0, 1.0, 1.0]
    assert counts == {"multi_response_rows": 1, "pairs_made": 5, "below_min_gap": 0, "ties": 1, "identical_answers": 0,
                      "cut_by_cap": 0, "already_a_pair_row": 0}  # fmt: skip
    again, counts = expand_pairs([pair("q", "best", "bad"), multi], random.Random(0), min_gap=1.0)
    made = {(r["chosen"], r["rejected"], r["score_gap"]) for r in again[1:]}
    assert again[0] == pair("q", "best", "bad") and made == {
        (r["chosen"], r["rejected"], r["score_gap"]) for r in rows[2:]
    }  # not made again from `multi`
    assert counts["pairs_made"] == 4 and counts["already_a_pair_row"] == 1
    capped, counts = expand_pairs([multi], random.Random(0), min_gap=1.5, max_pairs_per_prompt=2)
    assert capped[0] == {**pair("q", "best", "bad"), "score_gap": 3.0} and len(capped) == 2
    assert counts["below_min_gap"] == 2 and counts["cut_by_cap"] == 1
    assert expand_pairs([multi], random.Random(0), min_gap=1.5, max_pairs_per_prompt=2)[0] == capped


def test_a_repeated_answer_with_two_scores_is_a_bad_row_and_identical_answers_are_counted(tmp_path):
    """One answer twice with different scores would make both (A over B) and (B over A): the row is refused, named by
    row like any bad_scores row. Repeated with one score, the (A, A) pair is no preference: skipped and counted."""
    from dpo.data.rows import Problem, normalize

    assert normalize({"prompt": "Q?", "responses": ["A", "A", "B"], "scores": [1.0, 0.0, 0.5]}) == Problem(
        "bad_scores", "responses[0] and responses[1] are the same answer with scores 1.0 and 0.0"
    )
    assert normalize({"prompt": "Q?", "responses": ["A", "B", "A"], "ranks": [1, 2, 3]}) == Problem(
        "bad_scores", "responses[0] and responses[2] are the same answer with ranks 1 and 3"
    )
    rows = [
        {"prompt": "Q1?", "responses": ["A", "A", "B"], "scores": [1.0, 0.0, 0.5]},
        {"prompt": "Q2?", "responses": ["A", "A", "B"], "scores": [1.0, 1.0, 0.5]},
        {"prompt": "Q3?", "responses": ["C", "D"], "scores": [1.0, 0.0]},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=path, eval=path, allow_eval_in_train=True), seed=0)
    assert str(err.value) == (
        f"{path}: row 1: responses[0] and responses[1] are the same answer with scores 1.0 and 0.0; "
        "data.on_invalid: skip drops bad rows and counts them"
    )
    section = DataSection(train=path, eval=path, allow_eval_in_train=True, on_invalid="skip")
    data = prepare_data(section, seed=0)
    assert data.card["sources"]["train"][0]["dropped"] == {"bad_scores": 1}
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in data.train) == [
        ("Q2?", "A", "B"), ("Q3?", "C", "D")
    ]  # fmt: skip
    assert data.card["expanded"]["train"]["identical_answers"] == 1
    assert data.card["expanded"]["train"]["pairs_made"] == 2


def test_ranks_are_reversed_scores(tmp_path):
    row = {"prompt": "q", "responses": ["first", "second", "third"], "ranks": [1, 2, 3]}
    path = write_jsonl(tmp_path / "r.jsonl", [row, {**row, "prompt": "q2"}])
    data = prepare_data(
        DataSection(train=path, eval=path, allow_eval_in_train=True, expand_pairs={"min_gap": 2}), seed=0
    )
    assert data.train == [{**pair(q, "first", "third"), "score_gap": 2.0} for q in ("q", "q2")]  # rank difference


def test_the_score_gap_goes_through_validation_and_augmentation(tmp_path):
    """A pair may carry a score_gap > 0 (expansion writes one; a pair file may have the column); label noise and
    prompt variants keep a pair's gap, an off-prompt negative is a new pair and gets none."""
    from dpo.data.rows import normalize

    assert normalize({**pair("p", "a", "b"), "score_gap": 2}) == {**pair("p", "a", "b"), "score_gap": 2.0}
    for bad in (0, -1, "big", True):
        assert normalize({**pair("p", "a", "b"), "score_gap": bad}).reason == "wrong_type"
    rows = [{**pair(f"p{i}", f"good{i}", f"bad{i}"), "score_gap": float(i + 1)} for i in range(8)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    steps = [{"type": "label_noise", "fraction": 0.5}, {"type": "off_prompt_negatives", "fraction": 0.5}]
    data = prepare_data(DataSection(train=path, eval=path, allow_eval_in_train=True, augment=steps), seed=0)
    originals, negatives = data.train[:8], data.train[8:]
    assert [r["score_gap"] for r in originals] == [float(i + 1) for i in range(8)]
    assert sum(r["chosen"].startswith("bad") for r in originals) == 4  # flipped, gap kept
    assert len(negatives) == 4 and all("score_gap" not in r for r in negatives)
    # counted in the card, where the gate finds the step that a loss reading the gap (ODPO) cannot follow
    assert [s.get("without_score_gap") for s in data.card["augmented"]] == [None, 4]


def test_augmentations_compose_in_order_and_are_recorded(tmp_path):
    rows = [pair(f"p{i}", f"good{i}", f"bad{i}") for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    steps = [
        {"type": "prompt_variants", "templates": ["Q: {prompt}"]},
        {"type": "off_prompt_negatives", "fraction": 0.5},
        {"type": "label_noise", "fraction": 0.25},
    ]
    section = DataSection(train=path, heldout_fraction=0.25, augment=steps)
    data = prepare_data(section, seed=5)
    assert data.eval == [r for r in rows if r["prompt"] in {e["prompt"] for e in data.eval}]  # untouched
    assert [(s["type"], s["before"], s["after"]) for s in data.card["augmented"]] == [
        ("prompt_variants", 9, 18),
        ("off_prompt_negatives", 18, 27),
        ("label_noise", 27, 27),
    ]
    assert [s["changed"] for s in data.card["augmented"]] == [9, 9, round(0.25 * 27)]  # added, added, flipped
    assert prepare_data(section, seed=5).train == data.train
    assert prepare_data(section, seed=6).train != data.train


PLUGIN = """
def shout(rows, rng, *, suffix="!"):
    return rows + [{**r, "chosen": r["chosen"] + suffix} for r in rows]


def broken(rows, rng):
    return rows + [{"prompt": r["prompt"], "chosen": " ", "rejected": r["rejected"]} for r in rows]


def crashes(rows, rng):
    return rows[10]["prompt"]


def repeat(rows, rng, *, times: int = 1):
    return rows * times


def blank_in_place(rows, rng):
    rows[0]["chosen"] = " "
    return rows


def nothing(rows, rng):
    return []


def blanks(rows, rng):
    return [{**r, "chosen": " "} for r in rows]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_augs.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [pair(f"p{i}", f"good{i}", f"bad{i}") for i in range(4)]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def test_plugin_augmentation_runs_with_its_keys(plugin):
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:shout", "suffix": "?"}])
    data = prepare_data(section, seed=0)
    assert len(data.train) == 6 and sum(r["chosen"].endswith("?") for r in data.train) == 3
    assert data.card["augmented"][0]["type"] == "my_augs:shout"


def test_step_values_are_checked_strictly_against_the_annotations(plugin):
    """A plug-in's annotated keys are checked like ours, and strictly: a number must be a number (not a quoted one),
    a count an int (not 2.0), a flag a bool; an int is a fine float. The data card records the step as written."""
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:repeat", "times": 2}])
    data = prepare_data(section, seed=0)
    assert len(data.train) == 6 and data.card["augmented"][0]["times"] == 2
    assert data.card["augmented"][0]["changed"] == 3  # the 3 repeated rows, though they hold nothing new
    for step, fragment in [
        ({"type": "my_augs:repeat", "times": 2.0}, "times: expected a whole number"),
        ({"type": "prompt_variants", "copies": 2.0}, "copies: expected a whole number"),
        ({"type": "label_noise", "fraction": "0.2"}, "fraction: expected a number, got the text '0.2'"),
        ({"type": "prompt_variants", "keep_original": "yes"}, "keep_original: expected true or false"),
    ]:
        with pytest.raises(UserError, match=re.escape(fragment)):
            prepare_data(DataSection(train=plugin, heldout_fraction=0.25, augment=[step]), seed=0)
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "label_noise", "fraction": 1}])
    assert prepare_data(section, seed=0).card["augmented"][0]["changed"] == 3


def test_plugin_output_rows_are_validated(plugin):
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:broken"}])
    with pytest.raises(UserError, match=r"data.augment: step 0 \(my_augs:broken\): output row 4: 'chosen' is empty"):
        prepare_data(section, seed=0)
    section = section.model_copy(update={"on_invalid": "skip"})
    data = prepare_data(section, seed=0)
    assert len(data.train) == 3 and data.card["augmented"][0]["invalid"] == {"empty": 3}


def test_a_plugin_that_edits_its_rows_in_place_is_validated_and_counted_too(plugin):
    """The plug-in gets a copy: rows it edits in place are new rows, checked and counted, not known ones."""
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:blank_in_place"}])
    with pytest.raises(UserError, match=r"step 0 \(my_augs:blank_in_place\): output row 1: 'chosen' is empty"):
        prepare_data(section, seed=0)
    data = prepare_data(section.model_copy(update={"on_invalid": "skip"}), seed=0)
    assert len(data.train) == 2 and all(r["chosen"].strip() for r in data.train)
    assert data.card["augmented"][0]["invalid"] == {"empty": 1} and data.card["augmented"][0]["changed"] == 1


def test_a_step_that_leaves_no_training_pairs_is_named(plugin):
    """Not "no pairs left after validation and the split": the step that emptied the training split is named, with
    the rows it made that the checks refused."""
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:nothing"}])
    with pytest.raises(UserError) as err:
        prepare_data(section, seed=0)
    assert str(err.value) == "data.augment: step 0 (my_augs:nothing): left no training pairs (it was given 3)"
    steps = [{"type": "label_noise", "fraction": 1.0}, {"type": "my_augs:blanks"}]
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=steps, on_invalid="skip")
    with pytest.raises(UserError) as err:
        prepare_data(section, seed=0)
    assert str(err.value) == (
        "data.augment: step 1 (my_augs:blanks): left no training pairs (it was given 3): the 3 rows it made were "
        "all invalid (empty: 3)"
    )


def test_plugin_that_raises_is_a_one_line_user_error(plugin):
    section = DataSection(train=plugin, heldout_fraction=0.25, augment=[{"type": "my_augs:crashes"}])
    with pytest.raises(UserError, match=r"step 0 \(my_augs:crashes\): the plug-in raised IndexError: list index"):
        prepare_data(section, seed=0)


@pytest.mark.parametrize(
    ("step", "fragment"),
    [
        ({"type": "no_such_module_xyz:fn"}, "plug-in 'no_such_module_xyz:fn': cannot import 'no_such_module_xyz'"),
        ({"type": "my_augs:missing"}, "module 'my_augs' has no function 'missing'"),
        ({"type": "my_augs:shout", "volume": 3}, "unknown key(s) ['volume']"),
        ({"type": "prompt_variant"}, "did you mean 'prompt_variants'?"),
        ({"type": "prompt_variants", "templates": ["no placeholder"]}, "has no '{prompt}' placeholder"),
        ({"type": "off_prompt_negatives", "fraction": 2}, "fraction: Input should be less than or equal to 1 (got 2)"),
        ({"type": "label_noise", "fraction": -0.1}, "fraction: Input should be greater than or equal to 0 (got -0.1)"),
        ({"type": "prompt_variants", "copies": 101}, "copies: Input should be less than or equal to 100 (got 101)"),
        ({"type": "prompt_variants", "copies": 1.5}, "copies: expected a whole number"),
        ({"type": "prompt_variants", "templates": []}, "templates: List should have at least 1 item"),
        ({"type": "prompt_variants", "system_prompts": ["ok", 3]}, "system_prompts: expected text"),
        ({"type": "prompt_variants", "keep_original": "maybe"}, "keep_original: expected true or false"),
        ({"type": "my_augs:repeat", "times": "often"}, "times: expected a whole number"),
    ],
)
def test_bad_steps_are_one_line_errors_naming_the_key(plugin, tmp_path, step, fragment):
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": plugin, "augment": [step]}})
    loaded = load_recipe(recipe)  # the recipe's shape is fine; the step is checked against its function
    with pytest.raises(UserError) as err:
        prepare_data(loaded.recipe.data, seed=0, where=loaded.where)
    message = str(err.value)
    assert message.startswith(f"{recipe}: data.augment: step 0") and fragment in message and "\n" not in message
