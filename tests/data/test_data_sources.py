"""Sources: mixing by weight and count, column mapping, implicit prompts, multi-response rows, hub ids;
the split by prompt with pair expansion on; the sorting dataset's recipe; `dpo data inspect`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dpo.cli import app
from dpo.config.checks import check_no_op_keys
from dpo.config.loading import load_recipe
from dpo.config.schema import DataSection
from dpo.data.prepare import _weighted_shares, prepare_data
from dpo.data.rows import extract_prompt, normalize, share_of
from dpo.errors import UserError
from tests.conftest import REPO, write_recipe

SORTING = REPO / "data" / "sorting"


def pair(prompt, chosen="yes", rejected="no"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def two_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [pair(f"a{i}") for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [pair(f"b{i}") for i in range(30)])
    return a, b


def test_mix_by_weight_keeps_the_total_and_repeats_the_small_source(two_sources):
    a, b = two_sources
    section = DataSection(train=[{"path": a, "weight": 1}, {"path": b, "weight": 1}], eval=a, allow_eval_in_train=True)
    data = prepare_data(section, seed=0)
    assert [s["used"] for s in data.card["sources"]["train"]] == [20, 20]  # 40 rows split 1:1; a taken twice
    assert sum(r["prompt"].startswith("a") for r in data.train) == 20
    assert prepare_data(section, seed=0).train == data.train  # seeded
    assert data.train != sorted(data.train, key=lambda r: r["prompt"])  # shuffled together


@pytest.mark.parametrize(
    ("sources", "shares"),
    [([(1, 4), (1, 3), (1, 3)], [4, 3, 3]), ([(2, 10), (1, 30)], [27, 13]), ([(1, 1), (1, 1), (1, 1)], [1, 1, 1]),
     ([(1, 5), (3, 5)], [3, 7]), ([(0.5, 7)], [7])],
)  # fmt: skip
def test_weighted_shares_add_up_to_the_total_row_count(sources, shares):
    """(weight, rows) -> rows each source gives: 10 rows 1:1:1 is 4 + 3 + 3 (the largest remainder rounds up, the
    first on a tie); 40 rows 2:1 is 26.67 and 13.33, so 27 and 13."""
    assert _weighted_shares(sources) == shares and sum(shares) == sum(rows for _, rows in sources)


@pytest.mark.parametrize(
    ("share", "count", "down", "up"),
    [(0.29, 100, 29, 29), (0.57, 100, 57, 57), (0.07, 100, 7, 7), (0.14, 100, 14, 14), (0.5, 3, 1, 2),
     (0.1, 9, 0, 1), (0.3, 10, 3, 3)],
)  # fmt: skip
def test_a_share_of_a_count_is_not_thrown_off_by_binary_fractions(share, count, down, up):
    """0.29 x 100 is 28.999999999999996 and 0.07 x 100 is 7.000000000000001 in floats: the audit's `share` of
    suspects (rounded down) and the held-out prompts of `heldout_fraction` (rounded up) count 29 and 7."""
    assert share_of(share, count) == down and share_of(share, count, round_up=True) == up


def test_mix_by_count_and_plain_sources(two_sources):
    a, b = two_sources
    section = DataSection(train=[{"path": a}, {"path": b, "count": 5}], eval=a, allow_eval_in_train=True)
    data = prepare_data(section, seed=0)
    assert [s["used"] for s in data.card["sources"]["train"]] == [10, 5]
    assert len({r["prompt"] for r in data.train if r["prompt"].startswith("b")}) == 5


def test_duplicates_across_sources_are_dropped_once(two_sources, tmp_path):
    a, _ = two_sources
    copy = write_jsonl(tmp_path / "copy.jsonl", [pair("a0"), pair("new")])
    data = prepare_data(DataSection(train=[a, copy], heldout_fraction=0.2), seed=0)
    assert data.card["sources"]["train"][1]["dropped"] == {"duplicate": 1}
    assert data.card["sources"]["train"][1]["kept"] == 1


def test_weight_and_count_together_is_a_recipe_error(tmp_path, two_sources):
    a, _ = two_sources
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": [{"path": a, "weight": 1, "count": 3}]}})
    with pytest.raises(UserError, match="data.train: source 0: give a source a weight or a count, not both"):
        load_recipe(recipe)


@pytest.mark.parametrize("train", [[{"weight": 3}], [{"weight": 3}, {}], [{}, {"count": 5}, {"weight": 0.5}]])
def test_a_weight_with_no_other_weighted_source_is_an_error(tmp_path, two_sources, train):
    """Weighted sources share their own total row count: a lone weighted source gives its rows once, whatever its
    weight, beside unweighted sources or alone; `[{path: a, weight: 3}, b]` would not upweight a."""
    sources = [{"path": path, **keys} for path, keys in zip([*two_sources, two_sources[0]], train, strict=False)]
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": sources}})
    lone = next(i for i, keys in enumerate(train) if "weight" in keys)
    loaded = load_recipe(recipe)  # a run's recipe.yaml written before this check still loads (dpo export, eval)
    with pytest.raises(UserError) as err:
        check_no_op_keys(loaded)  # what dpo validate, dpo train and a sweep's trials run
    assert str(err.value) == (
        f"{recipe}: data.train: has no effect: source {lone}: weight: weighted sources share their total row count "
        "by weight, and this source is the only weighted one, so it gives its rows once whatever the weight; "
        "weight another source too, or give this one a count"
    )


def test_list_source_paths_resolve_against_the_recipe_folder(tmp_path, two_sources):
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": ["a.jsonl", {"path": "b.jsonl", "count": 3}]}})
    sources = load_recipe(recipe).recipe.data.sources("train")
    assert [s.path for s in sources] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    recipe = write_recipe(tmp_path / "h.yaml", {"data": {"train": "hub:org/name"}})
    assert load_recipe(recipe).recipe.data.sources("train")[0].path == "hub:org/name"


def test_hub_dataset_offline_is_a_one_line_error():
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train="hub:some-org/some-dataset"), seed=0)
    message = str(err.value)
    assert message.startswith("hub:some-org/some-dataset: cannot load hub dataset") and "\n" not in message


def test_column_mapping_nested_and_ultrafeedback_style(tmp_path):
    rows = [
        {
            "instruction": f"q{i}",
            "completions": [{"response": "great", "overall_score": 9}, {"response": "meh", "overall_score": 4}],
            "source": "x",
        }
        for i in range(4)
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    source = {
        "path": path,
        "columns": {
            "prompt": "instruction",
            "responses": "completions[].response",
            "scores": "completions[].overall_score",
        },
        "ignore_columns": ["source"],
    }
    data = prepare_data(DataSection(train=[source], heldout_fraction=0.25), seed=0)
    rows = sorted(data.train + data.eval, key=lambda r: r["prompt"])
    assert rows == [{**pair(f"q{i}", "great", "meh"), "score_gap": 5.0} for i in range(4)]
    with pytest.raises(UserError, match="row 1: unexpected column.* source"):
        prepare_data(DataSection(train=[{**source, "ignore_columns": []}]), seed=0)
    renamed = write_jsonl(tmp_path / "r.jsonl", [{"q": "x", "good": "a", "bad": "b"}])
    mapped = normalize(json.loads(open(renamed).read()), {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert mapped == pair("x", "a", "b")


def test_ignore_columns_naming_a_column_no_row_has_is_an_error(tmp_path):
    """An ignored column that no row of the source has (a typo, a list kept from other data) drops nothing: an error
    naming the file and the column (it was accepted silently), whether rows are checked strictly or skipped; a
    column some row has passes, and so does one all of whose cells are null (a columnar file has it)."""
    rows = [{**pair(f"q{i}"), **({"source": "x"} if i == 0 else {})} for i in range(6)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    for on_invalid in ("error", "skip"):
        section = DataSection(train=[{"path": path, "ignore_columns": ["source", "sourse", "models"]}],
                              on_invalid=on_invalid)  # fmt: skip
        with pytest.raises(UserError) as err:
            prepare_data(section, seed=0)
        assert str(err.value) == (
            f"{path}: ignore_columns lists 'sourse', 'models', which no row has (data.train); remove them"
        )
    eval_path = write_jsonl(tmp_path / "e.jsonl", [pair("e0"), pair("e1")])
    section = DataSection(train=[{"path": path, "ignore_columns": ["source"]}],
                          eval=[{"path": eval_path, "ignore_columns": ["source"]}])  # fmt: skip
    with pytest.raises(UserError) as err:
        prepare_data(section, seed=0, where=lambda key: f"r.yaml: {key}")
    assert (
        str(err.value) == f"{eval_path}: ignore_columns lists 'source', which no row has (r.yaml: data.eval); remove it"
    )
    nulls = write_jsonl(tmp_path / "n.jsonl", [{**pair(f"q{i}"), "source": None} for i in range(6)])
    data = prepare_data(DataSection(train=[{"path": nulls, "ignore_columns": ["source"]}]), seed=0)
    assert len(data.train) + len(data.eval) == 6
    data = prepare_data(DataSection(train=[{"path": path, "ignore_columns": ["source"]}]), seed=0)
    assert len(data.train) + len(data.eval) == 6


def test_ignore_columns_of_a_source_no_row_of_which_decodes_reports_the_rows_dropped(tmp_path):
    """Under on_invalid: skip, a source none of whose rows decodes has no columns at all: the error said
    ignore_columns lists 'source', which no row has, and removing it led only to the real one, every row dropped."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": 1\n{"prompt": 2\n')
    for ignored in (["source"], []):
        with pytest.raises(UserError) as err:
            prepare_data(DataSection(train=[{"path": str(path), "ignore_columns": ignored}], on_invalid="skip"), seed=0)
        assert str(err.value) == "data.train: no rows left: the 2 rows read were all dropped (bad_json: 2)"


@pytest.mark.parametrize("form", ["parquet", "save_to_disk"])
def test_ignore_columns_on_a_columnar_source(tmp_path, form):
    """Parquet and save_to_disk give every row every column, null where it is empty: an ignored column all of whose
    cells are null is there (and dropped), one the file does not have is an error naming the file and the column."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": [f"q{i}" for i in range(6)], "chosen": ["a"] * 6, "rejected": ["b"] * 6,
                      "source": pa.nulls(6, pa.string())})  # fmt: skip
    pq.write_table(table, tmp_path / "x.parquet")
    path = str(tmp_path / "x.parquet")
    if form == "save_to_disk":
        path = str(tmp_path / "ds")
        datasets.Dataset.from_parquet(str(tmp_path / "x.parquet")).save_to_disk(path)
    data = prepare_data(DataSection(train=[{"path": path, "ignore_columns": ["source"]}]), seed=0)
    assert sorted(data.train + data.eval, key=lambda r: r["prompt"]) == [pair(f"q{i}", "a", "b") for i in range(6)]
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=[{"path": path, "ignore_columns": ["sorce"]}]), seed=0)
    assert str(err.value) == f"{path}: ignore_columns lists 'sorce', which no row has (data.train); remove it"


def test_validate_refuses_an_ignored_column_no_row_has(tmp_path, tiny_model_dir):
    """`dpo validate` (the gate `dpo train` runs too): one error line naming the file and the column, exit 2."""
    from tests.conftest import invoke_dpo

    path = write_jsonl(tmp_path / "a.jsonl", [pair(f"q{i}") for i in range(6)])
    data = {"train": [{"path": path, "ignore_columns": ["sorce"]}]}
    recipe = write_recipe(tmp_path / "r.yaml", {"model": {"name_or_path": str(tiny_model_dir)}, "data": data})
    result = invoke_dpo("validate", recipe)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {path}: ignore_columns lists 'sorce', which no row has ({recipe}: data.train); remove it\n"
    )


def test_the_format_is_the_first_valid_rows_under_skip(tmp_path, tiny_model_dir):
    """Under `on_invalid: skip` a first row that is dropped does not decide the data's format: not one that does not
    parse, nor one too long for training.max_length (the format was decided before the length check, so a long chat
    row made every standard row after it `mixed_formats`, and no row was left). Valid data is read as before."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    message = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    long_chat = {"prompt": message("user", "x" * 200), "chosen": message("assistant", "y"),
                 "rejected": message("assistant", "n")}  # fmt: skip
    lines = ['{"prompt": [1, 2]', json.dumps(long_chat), *(json.dumps(pair(f"q{i}")) for i in range(6))]
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(lines) + "\n")
    section = DataSection(train=str(path), on_invalid="skip")
    data = prepare_data(section, seed=0, tokenizer=tokenizer, max_length=64)
    card = data.card["sources"]["train"][0]
    assert (data.card["format"], card["kept"], card["dropped"]) == ("standard", 6, {"bad_json": 1, "too_long": 1})
    # a standard row among chat rows is still named against the first valid row
    with pytest.raises(UserError) as err:
        prepare_data(DataSection(train=str(path)), seed=0, tokenizer=tokenizer, max_length=1000)
    assert str(err.value) == (
        f"{path}: row 1: not valid JSON (Expecting ',' delimiter at column 18); row 3: a standard row, but the data's "
        "first valid row (row 2) is conversational; row 4: a standard row, but the data's first valid row (row 2) is "
        "conversational (and 4 more); data.on_invalid: skip drops bad rows and counts them"
    )


def test_implicit_prompt_text_and_messages():
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    user = {"role": "user", "content": "Sky?"}
    blue, red = {"role": "assistant", "content": "Blue"}, {"role": "assistant", "content": "Red"}
    row = normalize({"chosen": [user, blue], "rejected": [user, red]})
    assert row == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "assistant", "content": "Red"}],
    }


def test_an_implicit_prompt_row_whose_answer_is_a_prefix_of_the_other_says_so():
    """The shared start of 'Q: 6*7? A: 4' and 'Q: 6*7? A: 42' is all of the first: its answer is not empty, the
    prompt swallowed it. Such a row needs a prompt column, and says so."""
    from dpo.data.rows import Problem

    prefix = "nothing of it is left after the prompt they share; give the rows a 'prompt' column"
    assert normalize({"chosen": "Q: 6*7? A: 4", "rejected": "Q: 6*7? A: 42"}) == Problem(
        "no_shared_prompt", f"'chosen' is a prefix of 'rejected': {prefix}"
    )
    assert normalize({"chosen": "Q: 6*7? A: 42", "rejected": "Q: 6*7? A: 4"}) == Problem(
        "no_shared_prompt", f"'rejected' is a prefix of 'chosen': {prefix}"
    )
    user, answer = {"role": "user", "content": "6*7?"}, {"role": "assistant", "content": "42"}
    more = [user, answer, {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    assert normalize({"chosen": [user, answer], "rejected": more}) == Problem(
        "no_shared_prompt", f"'chosen' is a prefix of 'rejected': {prefix}"
    )
    assert normalize({"chosen": "Q: 6*7? A: 42", "rejected": "Q: 6*7? A: 42"}) == Problem(
        "chosen_equals_rejected", "chosen equals rejected"
    )


def test_parquet_multi_response_rows(tmp_path):
    import datasets

    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 0.0]} for i in range(4)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "m.parquet"))
    data = prepare_data(DataSection(train=str(tmp_path / "m.parquet"), heldout_fraction=0.25), seed=0)
    assert len(data.train) == 9 and len(data.eval) == 3  # 3 pairs per prompt, 1 prompt held out
    assert data.card["expanded"]["train"]["pairs_made"] == 9 and data.card["expanded"]["eval"]["pairs_made"] == 3


def test_columnar_messages_with_a_nullable_extra_field(tmp_path):
    """Arrow gives every message of a column the union of the struct fields and fills the missing ones with null: a
    `name` on one message is `name: None` on all the others (and on every message where the schema only declares
    it). Null fields are dropped, as null columns are; a message that does carry a `name` is still refused."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    def msg(role, content, **more):
        return {"role": role, "content": content, **more}

    rows = [
        {"prompt": [msg("user", f"Hi {i}")], "chosen": [msg("assistant", "Hello")],
         "rejected": [msg("assistant", "Go away")]}
        for i in range(4)
    ]  # fmt: skip
    named = {**rows[0], "prompt": [msg("user", "Yo", name="bob")]}
    schema = pa.Table.from_pylist([*rows, named]).schema  # list<struct<role, content, name>>
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "declared.parquet")  # name: None everywhere
    pq.write_table(pa.Table.from_pylist([*rows, named]), tmp_path / "mixed.parquet")
    datasets.Dataset.from_parquet(str(tmp_path / "declared.parquet")).save_to_disk(str(tmp_path / "ds"))
    for source in ("declared.parquet", "ds"):
        data = prepare_data(DataSection(train=str(tmp_path / source), heldout_fraction=0.25), seed=0)
        assert sorted(data.train + data.eval, key=lambda r: r["prompt"][0]["content"]) == rows  # no `name: None`
    section = DataSection(train=str(tmp_path / "mixed.parquet"), heldout_fraction=0.25, on_invalid="skip")
    data = prepare_data(section, seed=0)
    assert len(data.train + data.eval) == 4
    assert data.card["sources"]["train"][0]["first_invalid"] == [
        {"row": 5, "reason": "bad_message", "detail": "'prompt' message 0 must be {role, content}"}
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_prompt_with_pair_expansion_never_leaks(seed):
    section = DataSection(
        train=str(SORTING / "train.jsonl"),
        heldout_fraction=0.2,
        expand_pairs={"min_gap": 0.2},
        augment=[{"type": "off_prompt_negatives", "fraction": 0.3}, {"type": "label_noise", "fraction": 0.1}],
    )
    data = prepare_data(section, seed=seed)
    train_prompts, eval_prompts = {r["prompt"] for r in data.train}, {r["prompt"] for r in data.eval}
    assert train_prompts.isdisjoint(eval_prompts) and data.card["split"]["prompts_in_both"] == 0
    assert len(train_prompts) + len(eval_prompts) == 300 and len(eval_prompts) == 60
    assert data.card["expanded"]["eval"]["pairs_made"] == len(data.eval)  # held-out: expanded, not augmented


def test_sorting_scores_are_the_gold_reward():
    from dpo.data.gold import GOLD_REWARDS

    card = json.loads((SORTING / "card.json").read_text())
    reward = GOLD_REWARDS[card["gold_reward"]]
    for split, size in card["sizes"].items():
        rows = [json.loads(line) for line in (SORTING / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == size
        for row in rows:
            assert [round(reward(row["prompt"], r), 3) for r in row["responses"]] == row["scores"]
            assert row["scores"].count(1.0) == 1


def test_sorting_recipe_trains_on_the_tiny_model(tmp_path, tiny_model_dir):
    from dpo.api import train

    summary = train(
        REPO / "recipes" / "sorting.yaml",
        overrides=[
            f"model.name_or_path={tiny_model_dir}",
            "peft.target_modules=[q_proj,v_proj]",
            "training.max_steps=2",
            "training.eval_steps=1",  # an evaluation before the last step: the autopilot needs one
            "training.per_device_train_batch_size=2",
            "training.per_device_eval_batch_size=4",
            "data.max_train_pairs=4",
            "data.max_eval_pairs=4",
            "logging.progress_bar=false",
        ],
        output_dir=tmp_path / "run",
    )
    assert summary["steps"] == 2
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())
    assert card["expanded"]["train"]["min_gap"] == 0.2 and card["expanded"]["train"]["max_pairs_per_prompt"] == 3
    assert card["split"]["train_pairs"] == 4 and card["split"]["prompts_in_both"] == 0


def test_data_inspect_file_json(tiny_model_dir):
    path = REPO / "tests" / "data" / "data_corpus" / "duplicates.jsonl"
    result = CliRunner().invoke(app, ["data", "inspect", str(path), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["duplicates"] == 3 and report["invalid"] == {}
    split = report["splits"]["all"]
    assert split["pairs"] == 6 and len(split["samples"]) == 3
    # char-level tokenizer: "Good answer 1." is 14 characters, plus the EOS token TRL appends
    assert split["tokens"]["chosen"]["min"] == 15
    assert sum(b["count"] for b in split["tokens"]["sequence"]["histogram"]) == 6


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--samples", "-1", "error: --samples: must be 0 or more (got -1)"),
     ("--max-length", "0", "error: --max-length: must be at least 1 token (got 0)")],
)  # fmt: skip
def test_data_inspect_options_out_of_range_are_one_error_line(tiny_model_dir, option, value, expected):
    path = REPO / "tests" / "data" / "data_corpus" / "duplicates.jsonl"
    result = CliRunner().invoke(app, ["data", "inspect", str(path), "--model", str(tiny_model_dir), option, value])
    assert result.exit_code == 2 and result.stderr.splitlines() == [expected]


def test_data_inspect_recipe_counts_invalid_rows(tmp_path, tiny_model_dir):
    corpus = REPO / "tests" / "data" / "data_corpus"
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": [str(corpus / "empty_answer.jsonl"), str(corpus / "bad_role.jsonl")]},
        },
    )
    result = CliRunner().invoke(app, ["data", "inspect", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "invalid rows by reason (data.on_invalid: error stops with an error):" in result.stdout
    assert "empty" in result.stdout and "bad_role" in result.stdout and "[train]" in result.stdout
    missing = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / "none.jsonl"), "--model", str(tiny_model_dir)])
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_data_inspect_recipe_checks_the_loss_keys(tmp_path, tiny_model_dir):
    """The `loss` section's keys come from the loss table: a typo is exit 2 with one line naming the key, in
    `dpo data inspect` as in `dpo train` (the schema alone takes any further `loss` key)."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(SORTING / "train.jsonl")}},
    )
    result = CliRunner().invoke(app, ["data", "inspect", str(recipe), "--set", "loss.bta=0.3"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --set: unknown key 'loss.bta'; did you mean 'loss.beta'?")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def sums_recipe(tmp_path, tiny_model_dir):
    """12 prompts 'What is i+1?' and two whitespace variants of them (one prompt each, as the split and the card
    count prompts), 30% held out; the tiny model's tokenizer counts characters."""
    rows = [pair(f"What is {i}+1?", str(i + 1), str(i + 2)) for i in range(12)]
    rows += [pair("What is 3+1? ", "four", "five"), pair("What  is 4+1?", "five", "six")]
    data = {"train": write_jsonl(tmp_path / "sums.jsonl", rows), "heldout_fraction": 0.3}
    recipe = {"seed": 1, "model": {"name_or_path": str(tiny_model_dir)}, "data": data, "training": {"max_length": 30}}
    return write_recipe(tmp_path / "sums.yaml", recipe)


def test_data_inspect_recipe_shows_rows_an_augmentation_made_invalid_and_counts_prompts_as_the_card(sums_recipe):
    """Inspect runs with on_invalid: skip to count every bad row: the rows an augmentation step made that the
    recipe would refuse (here: too long with the system prompt) are counted with the others, and said to stop the
    run. Prompts are counted as the split and the data card count them (whitespace aside)."""
    step = 'data.augment=[{type: prompt_variants, system_prompts: ["You are a careful assistant."]}]'
    result = CliRunner().invoke(app, ["data", "inspect", str(sums_recipe), "--set", step, "--samples", "0"])
    assert result.exit_code == 0, result.output
    assert "invalid rows by reason (data.on_invalid: error stops with an error):" in result.stdout
    assert "  too_long                     10  " in result.stdout
    assert "augmentation prompt_variants: 10 -> 10 pairs (10 made invalid: too_long 10)" in result.stdout
    report = json.loads(CliRunner().invoke(app, ["data", "inspect", str(sums_recipe), "--json"]).stdout)
    card = prepare_data(load_recipe(sums_recipe).recipe.data, seed=1).card
    assert report["splits"]["train"]["prompts"] == card["split"]["train_prompts"] == 8  # 10 pairs, 8 prompts
    assert report["splits"]["eval"]["prompts"] == card["split"]["eval_prompts"] == 4


def test_data_inspect_checks_the_recipe_as_validate_does(sums_recipe, tmp_path):
    """A key the rest of the recipe makes a no-op is an error in `dpo data inspect` as in `dpo validate`."""
    other = write_jsonl(tmp_path / "other.jsonl", [pair(f"Other {i}?") for i in range(4)])
    result = CliRunner().invoke(app, ["data", "inspect", str(sums_recipe), "--set", f"data.eval={other}"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {sums_recipe}: data.heldout_fraction: has no effect: data.eval is set, so nothing is split off"
    ]
    # and the checks that need the DPOConfig (validate's gate.check_settings): the held-out KL off by default
    sets = ["peft=null", "training.precompute_ref_log_probs=true", "logging.heldout_kl_pairs=32"]
    result = CliRunner().invoke(app, ["data", "inspect", str(sums_recipe), *[a for o in sets for a in ("--set", o)]])
    assert result.exit_code == 2 and result.stderr.startswith("error: --set: logging.heldout_kl_pairs: has no effect")


def test_data_inspect_names_the_option_at_fault(sums_recipe, tmp_path):
    data_file = str(tmp_path / "sums.jsonl")
    for target in (str(sums_recipe), data_file):  # the tokenizer of --model, not of the recipe's model key
        result = CliRunner().invoke(app, ["data", "inspect", target, "--model", str(tmp_path / "nowhere")])
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            f"error: --model: cannot load the tokenizer: model directory '{tmp_path / 'nowhere'}' does not exist"
        ]
    gone = tmp_path / "gone"
    result = CliRunner().invoke(app, ["data", "inspect", str(sums_recipe), "--set", f"model.name_or_path={gone}"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: --set: model.name_or_path: cannot load the tokenizer: model directory '{gone}' does not exist"
    ]
    # overrides of a data file would be ignored, unknown keys and all
    result = CliRunner().invoke(app, ["data", "inspect", data_file, "--set", "nonsense.key=1"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --set: applies only to a recipe; a data file is inspected as it is"]


def test_knobs_that_would_do_nothing_are_errors(two_sources):
    a, b = two_sources
    with pytest.raises(UserError, match="data.expand_pairs: has no effect: the data hold no multi-response rows"):
        prepare_data(DataSection(train=a, eval=b, expand_pairs={"min_gap": 0.5}), seed=0)
    with pytest.raises(UserError, match="split 'test' has no effect on a file"):
        prepare_data(DataSection(train=[{"path": a, "split": "test"}], eval=b), seed=0)
    with pytest.raises(UserError, match="subset 'x' has no effect"):
        prepare_data(DataSection(train=[{"path": a, "subset": "x"}], eval=b), seed=0)
