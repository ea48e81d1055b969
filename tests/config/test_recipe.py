"""Recipe loading: inheritance, overrides, strict validation and the messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dpo.config.loading import changes_from_base, load_recipe, parse_override
from dpo.errors import UserError, UserErrors


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    return write(
        tmp_path / "recipes" / "base.yaml",
        {"name": "base", "data": {"train": "../data/train.jsonl"}, "loss": {"beta": 0.1}, "peft": {"r": 8}},
    )


def test_defaults_and_relative_data_path_resolves_against_recipe_folder(base, tmp_path):
    recipe = load_recipe(base).recipe
    assert recipe.data.train == str((tmp_path / "data" / "train.jsonl").resolve())
    assert recipe.loss.type == "sigmoid" and recipe.loss.beta == 0.1
    assert recipe.peft.r == 8 and recipe.peft.alpha == 32.0
    assert recipe.early_stopping.metric == "eval_rewards/margins"


def test_a_local_model_folder_is_recorded_absolute_an_alias_or_hub_id_as_written(base, tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    (tmp_path / "smollm2-135m-instruct").mkdir()  # a folder named like the alias, but no model in it
    monkeypatch.chdir(tmp_path)
    local = str(tmp_path / "models" / "tiny")
    cases = [("models/tiny", local), ("./models/tiny/", local), ("smollm2-135m-instruct", "smollm2-135m-instruct"),
             ("owner/name", "owner/name")]  # fmt: skip
    for given, recorded in cases:
        assert load_recipe(base, [f"model.name_or_path={given}"]).recipe.model.name_or_path == recorded


def test_base_inheritance_relative_to_child_folder_and_name_not_inherited(base, tmp_path):
    child = write(tmp_path / "recipes" / "sub" / "child.yaml", {"base": "../base.yaml", "loss": {"beta": 0.5}})
    loaded = load_recipe(child)
    assert loaded.recipe.loss.beta == 0.5
    assert loaded.recipe.peft.r == 8  # inherited
    assert loaded.recipe.name == "child"  # a child is its own run
    # data.train was set by the base file, so it resolves against the base's folder
    assert loaded.recipe.data.train == str((tmp_path / "data" / "train.jsonl").resolve())
    assert loaded.provenance["loss.beta"] == str(child)
    assert loaded.provenance["data.train"] == str(base)


def test_peft_null_means_full_finetuning(base, tmp_path):
    child = write(tmp_path / "recipes" / "full.yaml", {"base": "base.yaml", "peft": None})
    assert load_recipe(child).recipe.peft is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("loss.beta=0.25", ("loss.beta", 0.25)),
        ("training.max_steps=3", ("training.max_steps", 3)),
        ("training.learning_rate=1e-5", ("training.learning_rate", 1e-5)),  # a float, unlike PyYAML's default
        ("training.learning_rate=5.0e-6", ("training.learning_rate", 5e-6)),
        ("peft=null", ("peft", None)),
        ("loss.type=[sigmoid, sft]", ("loss.type", ["sigmoid", "sft"])),
        ("logging.wandb=true", ("logging.wandb", True)),
        ("training.save_strategy=no", ("training.save_strategy", "no")),  # YAML 1.2: not False
        ("name=my run", ("name", "my run")),
        ("seed=010", ("seed", 10)),  # YAML 1.2: not octal 8
        ("seed=0o17", ("seed", 15)),
        ("training.max_steps=0x10", ("training.max_steps", 16)),
        ("name=1:30", ("name", "1:30")),  # YAML 1.2: not base 60 (90)
        ("name=1:30.0", ("name", "1:30.0")),  # not YAML 1.1's base-60 float (90.0) either
        ("name=2024-06-01", ("name", "2024-06-01")),  # YAML 1.2 has no timestamps: a dated name, not a date
        ("name=2001-12-14 21:59:43.10 -5", ("name", "2001-12-14 21:59:43.10 -5")),
        ("loss.beta=.inf", ("loss.beta", float("inf"))),  # YAML 1.2's .inf is still a float (check_scalars refuses it)
        ("loss.beta=-.Inf", ("loss.beta", float("-inf"))),
        ("training.max_steps=10_000", ("training.max_steps", 10000)),  # digit separators, as PyYAML read them
        ("name=1_", ("name", "1_")),  # not between digits: text, as Python would not read it either
        ("name=1__0", ("name", "1__0")),
    ],
)
def test_override_values_are_typed(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("name", ["0o17", "1e5", "010", "1:30", "no", "0x10", "10_000", "true", "2024-06-01", "1:30.0"])
def test_a_resolved_recipe_reads_back_the_same_whatever_its_text_values_look_like(base, name):
    """recipe.yaml is what resume, export and eval read back: a run named `0o17` (an int to YAML 1.2) or `no` (a
    bool to YAML 1.1) is written quoted, so our loader and PyYAML's alike read the name back as text."""
    recipe = load_recipe(base, [f"name='{name}'"]).recipe
    text = recipe.to_yaml()
    assert recipe.name == name and yaml.safe_load(text)["name"] == name
    assert parse_override(f"name={text.split('name: ')[1].splitlines()[0]}") == ("name", name)


def test_a_mapping_given_with_set_merges_into_the_section_as_a_child_recipe_does(base, tmp_path):
    """`--set peft={r: 4}` changes r and keeps the recipe's other LoRA keys (it replaced the section, dropping them
    for the schema's defaults); an error about a key it set names --set, not the file."""
    loaded = load_recipe(base, ["peft={r: 4}"])
    assert loaded.recipe.peft.r == 4 and loaded.recipe.peft.alpha == 32.0
    child = write(tmp_path / "recipes" / "lora.yaml", {"base": "base.yaml", "peft": {"r": 8, "dropout": 0.0}})
    assert load_recipe(child, ["peft={r: 4}"]).recipe.peft.dropout == 0.0  # the file's, kept
    assert load_recipe(child, ["peft={r: 4}"]).provenance["peft.r"] == "--set"
    with pytest.raises(UserError, match=r"^--set: peft.r: Input should be greater than 0"):
        load_recipe(child, ["peft={r: 0}"])
    assert load_recipe(child, ["peft=null"]).recipe.peft is None  # a value that is no mapping still replaces


def test_data_paths_given_with_set_are_read_against_the_current_directory_however_given(base, tmp_path, monkeypatch):
    """One by one or inside the section: recorded absolute, so `dpo train --resume` and `dpo eval` find them from
    another folder. A hub id is no path."""
    monkeypatch.chdir(tmp_path)
    for override in ("data.eval=held.jsonl", "data={eval: held.jsonl}", "data={eval: [{path: held.jsonl}]}"):
        data = load_recipe(base, [override]).recipe.data
        eval_source = data.eval[0] if isinstance(data.eval, list) else data.eval
        path = eval_source.path if hasattr(eval_source, "path") else eval_source
        assert path == str(tmp_path / "held.jsonl"), override
    assert load_recipe(base, ["data={eval: 'hub:owner/name'}"]).recipe.data.eval == "hub:owner/name"


def test_the_path_of_a_source_mapping_given_with_set_is_read_against_the_current_directory(tmp_path, monkeypatch):
    """`--set data.train.path=x.jsonl` on a source given as a mapping stayed relative: the run's recipe.yaml then
    pointed into the run directory when --resume, eval or generate read it back."""
    train = tmp_path / "data" / "train.jsonl"
    sources = {"train": {"path": str(train), "count": 16}, "eval": {"path": "held.jsonl", "split": "x"}}
    recipe = write(tmp_path / "recipes" / "src.yaml", {"data": sources})
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    loaded = load_recipe(recipe, ["data.train.path=tr.jsonl", "data.eval.path=~/h.jsonl"])
    data = loaded.recipe.data
    assert data.train.path == str(tmp_path / "sub" / "tr.jsonl") and data.train.count == 16
    assert data.eval.path == str(Path("~/h.jsonl").expanduser()) and data.eval.split == "x"
    assert loaded.provenance["data.train.path"] == "--set"
    run = write(tmp_path / "run" / "recipe.yaml", loaded.recipe.to_yaml())
    assert load_recipe(run).recipe.data == data  # read back from the run directory: the same files
    hub = load_recipe(recipe, ["data.train.path=hub:owner/name"]).recipe.data.train.path
    assert hub == "hub:owner/name"


def test_overrides_apply_and_are_attributed_to_set(base):
    loaded = load_recipe(base, ["loss.beta=0.3", "training.max_steps=7"])
    assert loaded.recipe.loss.beta == 0.3
    assert loaded.recipe.training == {"max_steps": 7}
    assert loaded.provenance["loss.beta"] == "--set"


def test_unknown_key_names_file_key_and_suggestion(base, tmp_path):
    # keys of `loss` come from the loss table too, so they are checked with it (tests/training/test_trainer_config.py)
    bad = write(tmp_path / "recipes" / "typo.yaml", {"base": "base.yaml", "peft": {"alpah": 8}})
    with pytest.raises(UserError) as err:
        load_recipe(bad)
    message = str(err.value)
    assert message.startswith(str(bad))
    assert "unknown key 'peft.alpah'" in message and "did you mean 'peft.alpha'?" in message


def test_unknown_keys_not_in_snake_case_are_named_as_written_in_their_file(base, tmp_path):
    """`early-stopping` and `model.Dtype` are no recipe keys: each is its own error, in the file that wrote it, not
    its parent's ("unknown key 'model'; did you mean 'model'?" in the base recipe, before)."""
    written = {"base": "base.yaml", "early-stopping": {"patience": 3}, "model": {"name-or-path": "x", "Dtype": "f"}}
    bad = write(tmp_path / "recipes" / "dash.yaml", written)
    with pytest.raises(UserErrors) as err:
        load_recipe(bad)
    lines = sorted(str(e) for e in err.value.errors)
    assert len(lines) == 3 and all(line.startswith(f"{bad}: unknown key '") for line in lines)
    assert "unknown key 'early-stopping'; did you mean 'early_stopping'?" in lines[0]
    assert "'model.Dtype'; did you mean 'model.dtype'?" in lines[1]
    assert "'model.name-or-path'; did you mean 'model.name_or_path'?" in lines[2]


def test_unknown_section_suggests_closest(base, tmp_path):
    bad = write(tmp_path / "recipes" / "typo2.yaml", {"base": "base.yaml", "trainig": {"max_steps": 1}})
    with pytest.raises(UserError, match=r"unknown key 'trainig'; did you mean 'training'\?"):
        load_recipe(bad)


def test_error_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "b.yaml", {"data": {"train": "x.jsonl"}, "loss": {"beta": "high"}})
    child = write(tmp_path / "c.yaml", {"base": "b.yaml"})
    with pytest.raises(UserError) as err:
        load_recipe(child)
    assert str(err.value).startswith(f"{base}: loss.beta:")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("loss.beta=-1", "loss.beta: Input should be greater than 0"),
        ("peft.r=1.5", "peft.r: expected a whole number, got 1.5"),
        ("data.heldout_fraction=1.2", "data.heldout_fraction: Input should be less than 1"),
        (
            "early_stopping.mode=sideways",
            "early_stopping.mode: expected one of auto, max or min, got the text 'sideways'",
        ),
    ],
)
def test_out_of_range_and_wrong_type_values(base, override, fragment):
    with pytest.raises(UserError) as err:
        load_recipe(base, [override])
    assert str(err.value).startswith("--set: ") and fragment in str(err.value)


def test_missing_required_key(tmp_path):
    recipe = write(tmp_path / "nodata.yaml", {"loss": {"beta": 0.1}})
    with pytest.raises(UserError, match="required key 'data' is missing"):
        load_recipe(recipe)


def test_inheritance_cycle_and_missing_base(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(UserError, match="inheritance cycle"):
        load_recipe(tmp_path / "a.yaml")
    orphan = write(tmp_path / "orphan.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(UserError, match=r"base: file 'nowhere.yaml' not found"):
        load_recipe(orphan)


def test_a_base_under_home_is_found(tmp_path, monkeypatch):
    """`base: ~/...` is the home folder's file, as `~` in a data path is (it was looked for in a folder named '~'
    beside the recipe); a missing one is named with the path looked for."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    write(home / "shared" / "plain.yaml", {"seed": 7, "data": {"train": "train.jsonl"}, "loss": {"beta": 0.15}})
    child = write(tmp_path / "project" / "child.yaml", {"base": "~/shared/plain.yaml", "loss": {"beta": 0.2}})
    loaded = load_recipe(child)
    assert (loaded.recipe.seed, loaded.recipe.loss.beta) == (7, 0.2)
    assert changes_from_base(loaded) == [{"key": "loss.beta", "value": 0.2, "base_value": 0.15, "source": str(child)}]
    assert loaded.recipe.data.train == str(home / "shared" / "train.jsonl")
    assert loaded.source("seed") == str(home / "shared" / "plain.yaml")
    orphan = write(tmp_path / "project" / "orphan.yaml", {"base": "~/nowhere.yaml"})
    with pytest.raises(UserError) as err:
        load_recipe(orphan)
    assert str(err.value) == f"{orphan}: base: file '~/nowhere.yaml' not found (looked for {home / 'nowhere.yaml'})"


def test_base_and_data_paths_of_a_linked_recipe_resolve_alike(tmp_path, monkeypatch):
    """docs/recipes.md: relative paths (`base:` and data alike) are read against the folder of the recipe as named,
    `..` as the file system goes. Through a linked folder, `base: ../plain.yaml` was folded on the link's own path
    (the wrong folder's plain.yaml) while `data.train: ../train.jsonl` beside it went to the target's parent. A
    recipe file that is itself a link reads both against the link's folder."""
    real = tmp_path / "real"
    write(real / "plain.yaml", {"seed": 1})
    write(real / "sub" / "child.yaml", {"base": "../plain.yaml", "data": {"train": "../train.jsonl"}})
    work = tmp_path / "work"
    write(work / "plain.yaml", {"seed": 99})
    (work / "link").symlink_to(real / "sub")
    monkeypatch.chdir(work)
    loaded = load_recipe("link/child.yaml")
    assert (loaded.recipe.seed, loaded.recipe.data.train) == (1, str(real / "train.jsonl"))
    assert loaded.source("seed") == str(real / "plain.yaml")
    # a linked recipe file: its base and its data beside the link
    write(work / "linked" / "plain.yaml", {"seed": 5, "data": {"train": "here.jsonl"}})
    (work / "linked" / "child.yaml").symlink_to(real / "sub" / "child.yaml")
    loaded = load_recipe(work / "linked" / "child.yaml")
    assert (loaded.recipe.seed, loaded.recipe.data.train) == (99, str(work / "train.jsonl"))  # ../ of linked/: work
    (work / "linked" / "own.yaml").symlink_to(write(real / "own.yaml", {"base": "plain.yaml", "loss": {"beta": 0.3}}))
    loaded = load_recipe(work / "linked" / "own.yaml")
    assert (loaded.recipe.seed, loaded.recipe.data.train) == (5, str(work / "linked" / "here.jsonl"))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "recipe is empty"),
        ("- a\n- b\n", "a recipe must be a mapping"),
        ("loss: {beta: [\n", "invalid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ],
)
def test_unreadable_recipes(tmp_path, content, fragment):
    path = write(tmp_path / "bad.yaml", content)
    with pytest.raises(UserError, match=fragment):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_resolved_recipe_round_trips(base, tmp_path):
    recipe = load_recipe(base, ["loss.beta=0.2"]).recipe
    again = write(tmp_path / "resolved.yaml", recipe.to_yaml())
    assert load_recipe(again).recipe == recipe


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            ["early_stopping.min_delta=0.02"],
            "early_stopping.min_delta: has no effect: early_stopping.patience is not set",
        ),
        (
            ["early_stopping.warmup_steps=5"],
            "early_stopping.warmup_steps: has no effect: early_stopping.patience is not set",
        ),
        # the autopilot's plateau rule and the checkpoint it keeps read min_delta; warmup it ignores
        (["early_stopping.min_delta=0.02", "autopilot.enabled=true"], None),
        (["early_stopping.warmup_steps=5", "autopilot.enabled=true"], "early_stopping.warmup_steps: has no effect"),
        (["early_stopping.min_delta=0.02", "early_stopping.patience=2"], None),
    ],
)
def test_early_stopping_keys_without_patience(base, overrides, error):
    from dpo.config.checks import check_no_op_keys

    loaded = load_recipe(base, overrides)
    if error is None:
        check_no_op_keys(loaded)
        return
    with pytest.raises(UserError) as err:
        check_no_op_keys(loaded)
    assert str(err.value).startswith(f"--set: {error}")


def test_true_or_false_is_no_number_and_a_number_no_bool(base):
    """pydantic's lax mode read `patience: true` as 1 (stop after the first evaluation without a gain), `peft.r: true`
    as rank 1 and `wpo: 1` as on, where `training:` refused them: every section is strict, each key named."""
    overrides = ["early_stopping.patience=true", "peft.r=true", "loss.beta=true", "data.max_train_pairs=true",
                 "logging.samples=false", "seed=false", "regularizers.wpo=1", "logging.wandb=yes",
                 "data.heldout_fraction='0.1'"]  # fmt: skip
    with pytest.raises(UserErrors) as err:
        load_recipe(base, overrides)
    assert sorted(str(e) for e in err.value.errors) == [
        "--set: data.heldout_fraction: expected a number, got the text '0.1'",
        "--set: data.max_train_pairs: expected a whole number, got true",
        "--set: early_stopping.patience: expected a whole number, got true",
        "--set: logging.samples: expected a whole number, got false",
        "--set: logging.wandb: expected true or false, got the text 'yes'",
        "--set: loss.beta: expected a number, got true",
        "--set: peft.r: expected a whole number, got true",
        "--set: regularizers.wpo: expected true or false, got 1",
        "--set: seed: expected a whole number, got false",
    ]
    with pytest.raises(UserError) as err:
        load_recipe(base, ["data.train=[{path: a.jsonl, count: true}]"])
    assert str(err.value) == "--set: data.train: source 0: count: expected a whole number, got true"


def test_held_out_sets_by_name_a_misspelt_path_and_a_source_missing_its_path_are_each_named(base):
    with pytest.raises(UserError) as err:
        load_recipe(base, ["data.eval={easy: a.jsonl, hard: b.jsonl}"])
    assert str(err.value) == (
        "--set: data.eval: expected a path, a source {path, weight | count, ...} or a list of sources (mixed into one "
        "set); got a mapping without 'path' (easy, hard): named sets are not supported"
    )
    with pytest.raises(UserError) as err:  # names near 'path' are named sets too, when there are several
        load_recipe(base, ["data.eval={math: a.jsonl, plan: b.jsonl}"])
    assert str(err.value).endswith("got a mapping without 'path' (math, plan): named sets are not supported")
    with pytest.raises(UserError) as err:
        load_recipe(base, ["data.eval={pth: a.jsonl}"])
    assert str(err.value).startswith("--set: data.eval: source 0: unknown key 'pth'; did you mean 'path'? (valid: path")
    with pytest.raises(UserError) as err:
        load_recipe(base, ["data.eval={weight: 1.0}"])
    assert str(err.value) == "--set: data.eval: source 0: required key 'path' is missing"


def test_a_dated_run_name_is_a_name(tmp_path):
    """YAML 1.1's timestamp resolver read `name: 2024-06-01` as a date, which the schema refused ("expected text")."""
    recipe = write(tmp_path / "dn.yaml", "name: 2024-06-01\ndata: {train: x.jsonl}\n")
    assert load_recipe(recipe).recipe.name == "2024-06-01"


def test_a_whole_number_still_counts_as_a_number(base):
    recipe = load_recipe(
        base, ["loss.beta=1", "peft.alpha=16", "data.train=[{path: a.jsonl, weight: 2}, {path: b.jsonl, weight: 1}]"]
    ).recipe
    assert recipe.loss.beta == 1.0 and isinstance(recipe.loss.beta, float) and recipe.peft.alpha == 16.0
    assert recipe.data.train[0].weight == 2.0


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("", "base: must be a path to another recipe (got '')"),
        ("  ", "base: must be a path to another recipe (got '  ')"),
        ("..", "base: '..': is a directory, not a regular recipe file"),  # was '..: is a directory', no file or key
        ("sub", "base: 'sub': is a directory, not a regular recipe file"),
    ],
)
def test_a_base_that_is_no_recipe_file_names_the_file_and_key(tmp_path, base, message):
    (tmp_path / "recipes" / "sub").mkdir(parents=True)
    child = write(tmp_path / "recipes" / "child.yaml", {"base": base, "data": {"train": "x.jsonl"}})
    with pytest.raises(UserError) as err:
        load_recipe(child)
    assert str(err.value) == f"{child}: {message}"


def test_a_base_chain_is_bounded(tmp_path):
    """A chain of 1,100 bases ended in a RecursionError traceback."""
    from dpo.config.loading import MAX_BASE_DEPTH

    write(tmp_path / "r0.yaml", {"data": {"train": "x.jsonl"}})
    for i in range(1, MAX_BASE_DEPTH + 1):
        write(tmp_path / f"r{i}.yaml", {"base": f"r{i - 1}.yaml", "seed": i})
    assert load_recipe(tmp_path / f"r{MAX_BASE_DEPTH - 1}.yaml").recipe.seed == MAX_BASE_DEPTH - 1  # 64 recipes
    with pytest.raises(UserError) as err:
        load_recipe(tmp_path / f"r{MAX_BASE_DEPTH}.yaml")
    assert str(err.value) == (
        f"{tmp_path / 'r1.yaml'}: base: a chain of more than {MAX_BASE_DEPTH} recipes (from "
        f"{(tmp_path / f'r{MAX_BASE_DEPTH}.yaml').resolve()})"
    )
    for i in range(MAX_BASE_DEPTH + 1, 1100):
        write(tmp_path / f"r{i}.yaml", {"base": f"r{i - 1}.yaml"})
    with pytest.raises(UserError, match="base: a chain of more than"):
        load_recipe(tmp_path / "r1099.yaml")


def test_a_section_replaced_by_null_keeps_none_of_its_keys_sources(tmp_path):
    """`--set peft=null` over a recipe that sets peft.r: recipe_changes.json listed phantom peft.r and peft.dropout
    changes from the file, and not the --set that switched the run to full fine-tuning."""
    from dpo.config.loading import changes_from_base

    write(tmp_path / "base.yaml", {"data": {"train": "x.jsonl"}, "peft": {"r": 16}})
    lora = write(tmp_path / "lora.yaml", {"base": "base.yaml", "peft": {"r": 8, "dropout": 0.0}})
    loaded = load_recipe(lora, ["peft=null"])
    assert {k: v for k, v in loaded.provenance.items() if k.startswith("peft")} == {"peft": "--set"}
    assert changes_from_base(loaded) == [
        {"key": "peft", "value": None, "base_value": {"r": 8, "dropout": 0.0}, "source": "--set"}
    ]
    full = write(tmp_path / "full.yaml", {"base": "base.yaml", "peft": None})  # a file over its base: the same
    assert changes_from_base(load_recipe(full)) == [
        {"key": "peft", "value": None, "base_value": {"r": 16}, "source": str(full)}
    ]
