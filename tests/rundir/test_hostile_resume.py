"""Resume against damaged run directories (issue 19, item 3): a damaged newest checkpoint (a file damaged or missing)
is skipped for the previous loadable one, none loadable is one `error:` line (exit 2, nothing changed), a run file that
is valid JSON but not an object is one `error:` line too, and training data that changed since the run was made is
refused unless --allow-data-change, which data_card.json then records, and every later resume keeps recorded. A
checkpoint deletion cut off midway leaves no complete-looking checkpoint, and resume reads each checkpoint once.

One short run of the tiny model (4 steps, checkpoints at 2 and 4) is made once; each case damages a copy of it, as a
run killed after its last checkpoint (no summary.json, no final/) would be left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from dpo.errors import UserError
from dpo.rundir.resume import last_resumable, unloadable
from tests.conftest import ARITHMETIC, REPO, TINY_TRAINING, invoke_dpo, tiny_recipe_dict, write_recipe


def dpo(*args):
    return subprocess.run([sys.executable, "-m", "dpo", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_model_dir):
    """A run directory as a kill after the last checkpoint leaves it; its training data is a copy we may edit."""
    from dpo.training.execute import execute

    root = tmp_path_factory.mktemp("hostile-resume")
    shutil.copy(ARITHMETIC / "train.jsonl", root / "train.jsonl")
    recipe = tiny_recipe_dict(tiny_model_dir, 32, TINY_TRAINING)
    recipe["data"]["train"] = str(root / "train.jsonl")
    write_recipe(root / "tiny.yaml", recipe)
    run_dir = root / "run"
    execute(root / "tiny.yaml", [], output_dir=run_dir)
    as_killed_after_the_last_step(run_dir)
    return run_dir


def as_killed_after_the_last_step(run_dir) -> None:
    """Remove what a run writes after its last checkpoint: final/, summary.json, report.html."""
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()
    (run_dir / "report.html").unlink(missing_ok=True)


@pytest.fixture
def run_dir(killed_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(killed_run, copy)
    text = (copy / "recipe.yaml").read_text()  # the copy writes its checkpoints into itself
    (copy / "recipe.yaml").write_text(text.replace(str(killed_run), str(copy)))
    return copy


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated_safetensors": ("adapter_model.safetensors", truncate, "adapter_model.safetensors: cannot be read"),
    "garbled_trainer_state": (
        "trainer_state.json",
        lambda p: p.write_text('{"global_step": 4, "log_h'),
        "trainer_state.json: not valid JSON",
    ),
    "trainer_state_not_an_object": (
        "trainer_state.json",
        lambda p: p.write_text("[1]"),
        "trainer_state.json: not a JSON object",
    ),
    "garbled_dpo_state": ("dpo_state.json", lambda p: p.write_bytes(b"\xff\xfe{"), "dpo_state.json: not valid JSON"),
    "flipped_byte_in_optimizer": ("optimizer.pt", flip_byte, "optimizer.pt: damaged"),
    "truncated_optimizer": ("optimizer.pt", truncate, "optimizer.pt: cannot be read"),
    "truncated_rng_state": ("rng_state.pth", truncate, "rng_state.pth: cannot be read"),
    "truncated_scheduler": ("scheduler.pt", truncate, "scheduler.pt: cannot be read"),
}
# Every file a resume loads, each missing in turn (a deletion cut off midway, a file removed by hand): transformers
# fails with a traceback without the weights and skips a missing optimizer, scheduler or RNG state without a word.
REQUIRED = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "trainer_state.json",
    "dpo_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
]
DAMAGES.update({f"missing_{name}": (name, os.unlink, f"{name}: missing") for name in REQUIRED})


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_unloadable_names_the_damaged_file(killed_run, tmp_path, damage):
    name, spoil, reason = DAMAGES[damage]
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    assert unloadable(checkpoint) is None
    spoil(checkpoint / name)
    assert reason in unloadable(checkpoint)
    assert len(unloadable(checkpoint).splitlines()) == 1


@pytest.mark.parametrize("name", REQUIRED)
def test_each_file_a_resume_loads_is_required(killed_run, tmp_path, name):
    """The regression: only the files present were read, so a checkpoint missing one counted as loadable."""
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    (checkpoint / name).unlink()
    assert unloadable(checkpoint) == f"{name}: missing"
    assert last_resumable(checkpoint.parent) is None


def test_a_save_only_model_checkpoint_needs_no_optimizer_scheduler_or_rng_state(killed_run, tmp_path):
    """training.save_only_model saves none of them (resume's check refuses to train on from such a checkpoint, but it
    is not damaged: a run killed after its last step finishes from it)."""
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).unlink()
    assert unloadable(checkpoint) == "optimizer.pt: missing"
    assert unloadable(checkpoint, save_only_model=True) is None
    (checkpoint / "dpo_state.json").unlink()
    assert unloadable(checkpoint, save_only_model=True) == "dpo_state.json: missing"


@pytest.mark.parametrize("own", ["pytorch_model_fsdp_0", "pytorch_model_fsdp.bin", "global_step4"])
def test_fsdp_and_deepspeed_checkpoints_need_no_weights_optimizer_or_scheduler_file(killed_run, tmp_path, own):
    """FSDP and DeepSpeed save the weights and the optimizer in files of their own (their loaders fail loudly when one
    is missing); the RNG state and our files are still required."""
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt"):
        (checkpoint / name).unlink()
    assert unloadable(checkpoint) == "adapter_model.safetensors: missing"
    if own.endswith(".bin"):
        torch.save({}, checkpoint / own)
    else:
        (checkpoint / own).mkdir()
    assert unloadable(checkpoint) is None
    (checkpoint / "rng_state.pth").rename(checkpoint / "rng_state_0.pth")  # one per process
    assert unloadable(checkpoint) is None
    (checkpoint / "rng_state_0.pth").unlink()
    assert unloadable(checkpoint) == "rng_state.pth: missing"


def test_every_shard_a_weights_index_names_is_required(killed_run, tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    (checkpoint / "adapter_config.json").unlink()  # a full fine-tune's checkpoint, its model in two shards
    (checkpoint / "adapter_model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    assert unloadable(checkpoint) == "model-00002-of-00002.safetensors: missing"
    shutil.copy(checkpoint / shards["a"], checkpoint / shards["b"])
    assert unloadable(checkpoint) is None
    (checkpoint / "model.safetensors.index.json").unlink()
    assert unloadable(checkpoint) == "model.safetensors: missing"


def test_training_args_bin_is_not_read(killed_run, tmp_path):
    """training_args.bin is never loaded on resume: damage to it is no reason to skip a checkpoint."""
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed_run / "checkpoints" / "checkpoint-4", checkpoint)
    truncate(checkpoint / "training_args.bin")
    assert unloadable(checkpoint) is None


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint(run_dir):
    """The regression: a truncated safetensors in the newest checkpoint crashed --resume."""
    truncate(run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert last_resumable(run_dir / "checkpoints")[0] == 2
    proc = dpo("train", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "checkpoint-4: cannot be loaded" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
    assert "resuming from checkpoint-2 (step 2)" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == [2] and summary["steps"] == 4 and summary["stop_reason"] == "completed"
    assert unloadable(run_dir / "checkpoints" / "checkpoint-4") is None  # saved again by the resumed run
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "damage",
    [
        "garbled_trainer_state",
        "trainer_state_not_an_object",
        "flipped_byte_in_optimizer",
        "truncated_rng_state",
        "missing_adapter_model.safetensors",
        "missing_optimizer.pt",
        "missing_trainer_state.json",
    ],
)
def test_resume_skips_a_damaged_newest_checkpoint(run_dir, damage, capsys):
    from dpo.training.execute import execute

    name, spoil, reason = DAMAGES[damage]
    spoil(run_dir / "checkpoints" / "checkpoint-4" / name)
    summary, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True)
    assert summary["resumed_from"] == [2] and summary["steps"] == 4
    err = capsys.readouterr().err
    assert f"checkpoint-4: cannot be loaded ({reason}" in err


@pytest.mark.slow
def test_resume_with_no_loadable_checkpoint_is_an_error_and_changes_nothing(run_dir):
    truncate(run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{")
    before = snapshot(run_dir)
    proc = dpo("train", "--resume", str(run_dir))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir / 'checkpoints'}: no checkpoint can be loaded")
    assert "checkpoint-4: adapter_model.safetensors: cannot be read" in lines[0]
    assert snapshot(run_dir) == before


def _change_training_data(run_dir) -> None:
    import yaml

    train = yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["train"]
    rows = open(train).read().splitlines()
    first = json.loads(rows[0])
    first["chosen"][0]["content"] += " Indeed."
    rows[0] = json.dumps(first)
    open(train, "w").write("\n".join(rows) + "\n")


def _copy_with_its_own_data(killed_run, tmp_path):
    """A copy of the run whose recipe reads a copy of the training data: the module's run keeps its data."""
    run_dir = tmp_path / "run"
    shutil.copytree(killed_run, run_dir)
    data_copy = tmp_path / "train.jsonl"
    shutil.copy(killed_run.parent / "train.jsonl", data_copy)
    text = (run_dir / "recipe.yaml").read_text().replace(str(killed_run.parent / "train.jsonl"), str(data_copy))
    (run_dir / "recipe.yaml").write_text(text.replace(str(killed_run), str(run_dir)))
    return run_dir


@pytest.mark.slow
def test_resume_refuses_changed_training_data(killed_run, tmp_path):
    run_dir = _copy_with_its_own_data(killed_run, tmp_path)
    _change_training_data(run_dir)
    old_hash = json.loads((run_dir / "data_card.json").read_text())["content_hash"]

    before = snapshot(run_dir)
    proc = dpo("train", "--resume", str(run_dir))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {run_dir / 'data_card.json'}: the train data changed since the run was made")
    assert "--allow-data-change" in lines[0] and old_hash["train"][:12] in lines[0]
    assert snapshot(run_dir) == before

    proc = dpo("train", "--resume", str(run_dir), "--allow-data-change")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: the train data changed since the run was made" in proc.stderr
    card = json.loads((run_dir / "data_card.json").read_text())
    assert card["content_hash"]["train"] != old_hash["train"] and card["content_hash"]["eval"] == old_hash["eval"]
    assert card["data_changes"] == [{"resumed_at_step": 4, "previous_content_hash": old_hash}]


@pytest.mark.slow
def test_every_later_resume_keeps_the_recorded_data_changes(killed_run, tmp_path):
    """The regression: a resume whose data had not changed (since the previous resume) rewrote data_card.json with the
    fresh card, and the `data_changes` an earlier --allow-data-change resume recorded were gone. Three resumes, each of
    a run killed after its last step: the data changed (one entry), the same data again (still that entry), the data
    changed once more (a second entry, the first kept)."""
    from dpo.training.execute import execute

    run_dir = _copy_with_its_own_data(killed_run, tmp_path)

    def card():
        return json.loads((run_dir / "data_card.json").read_text())

    def resume(**flags):
        summary, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True, **flags)
        assert summary["stop_reason"] == "completed" and summary["steps"] == 4

    made_with = card()["content_hash"]
    _change_training_data(run_dir)
    resume(allow_data_change=True)
    first_change = {"resumed_at_step": 4, "previous_content_hash": made_with}
    changed_to = card()["content_hash"]
    assert changed_to["train"] != made_with["train"] and card()["data_changes"] == [first_change]

    as_killed_after_the_last_step(run_dir)
    resume()  # the data the run now holds: no flag needed, and the earlier change stays recorded
    assert card()["content_hash"] == changed_to and card()["data_changes"] == [first_change]

    as_killed_after_the_last_step(run_dir)
    _change_training_data(run_dir)
    resume(allow_data_change=True)
    second_change = {"resumed_at_step": 4, "previous_content_hash": changed_to}
    assert card()["content_hash"]["train"] != changed_to["train"]
    assert card()["data_changes"] == [first_change, second_change]


def test_an_unchanged_run_gets_no_data_changes_key(run_dir):
    from dpo.rundir.resume import resumed_data_card

    card = json.loads((run_dir / "data_card.json").read_text())
    assert resumed_data_card(run_dir, card, 4) == card  # nothing changed, nothing recorded: the card as made


@pytest.mark.parametrize(
    ("name", "allow_data_change"), [("summary.json", False), ("data_card.json", False), ("data_card.json", True)]
)
def test_a_run_file_that_is_json_but_not_an_object_is_one_error_and_changes_nothing(run_dir, name, allow_data_change):
    """The regression: `[1]` in summary.json or data_card.json crashed the resume with an AttributeError (with
    --allow-data-change, after the resume had begun to clean up the run directory)."""
    from dpo.training.execute import execute

    (run_dir / name).write_text("[1]\n")
    before = snapshot(run_dir)
    with pytest.raises(UserError) as err:
        execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True, allow_data_change=allow_data_change)
    assert str(err.value) == f"{run_dir / name}: not a JSON object (it holds an array)"
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_dpo_train_resume_with_a_summary_that_is_not_an_object_exits_2(run_dir):
    (run_dir / "summary.json").write_text("[1]\n")
    before = snapshot(run_dir)
    proc = dpo("train", "--resume", str(run_dir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir / 'summary.json'}: not a JSON object (it holds an array)"
    ]
    assert snapshot(run_dir) == before


def test_read_json_object(tmp_path):
    from dpo.rundir.files import read_json_object

    path = tmp_path / "summary.json"
    assert read_json_object(path) is None  # absent
    path.write_text('{"steps": 4}')
    assert read_json_object(path) == {"steps": 4}
    kinds = {"[1]": "an array", "null": "null", '"x"': "a string", "4": "a number", "true": "true or false"}
    for text, kind in kinds.items():
        path.write_text(text)
        with pytest.raises(UserError) as err:
            read_json_object(path)
        assert str(err.value) == f"{path}: not a JSON object (it holds {kind})"
    path.write_text('{"steps": ')
    with pytest.raises(UserError) as err:
        read_json_object(path)
    assert str(err.value).startswith(f"{path}: not valid JSON")


def test_resume_with_the_same_data_needs_no_flag_and_a_broken_recipe_yaml_is_one_error(run_dir):
    from dpo.rundir.resume import check

    card = json.loads((run_dir / "data_card.json").read_text())
    recipe = (run_dir / "recipe.yaml").read_text()
    check(run_dir, recipe, card)  # the same recipe and data: raises nothing
    with pytest.raises(UserError, match=r"loss.beta: the run was made with 0.1, the recipe now gives 0.5"):
        check(run_dir, recipe.replace("beta: 0.1", "beta: 0.5"), card)
    (run_dir / "recipe.yaml").write_text(recipe + "loss: [unclosed\n")  # hand-edited into bad YAML
    with pytest.raises(UserError) as err:
        check(run_dir, recipe, card)
    assert str(err.value).startswith(f"{run_dir / 'recipe.yaml'}: ") and "\n" not in str(err.value)


SECRET = "tok-0123456789abcdef"


def _run_made_with_a_secret_in_its_data_path(run_dir, tmp_path):
    """The run as made with MY_DATA_TOKEN=SECRET and its training data in a folder named after the secret:
    recipe.yaml holds the path redacted. Returns the recipe the user resumes with (the path as written)."""
    import yaml

    folder = tmp_path / SECRET
    folder.mkdir()
    train = yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["train"]
    shutil.copy(train, folder / "train.jsonl")
    text = (run_dir / "recipe.yaml").read_text().replace(f"train: {train}\n", f"train: {folder / 'train.jsonl'}\n")
    assert SECRET in text
    (run_dir / "recipe.yaml").write_text(text.replace(SECRET, "[redacted $MY_DATA_TOKEN]"))
    recipe = tmp_path / "secret.yaml"
    recipe.write_text(text)
    return recipe


def test_resume_with_a_secrets_variable_unset_names_the_variable_not_a_changed_recipe(run_dir, tmp_path, monkeypatch):
    """The regression: with MY_DATA_TOKEN unset the secret in the recipe was not redacted, so the run's
    "[redacted $MY_DATA_TOKEN]" differed from it: "data.train: the run was made with
    '.../[redacted $MY_DATA_TOKEN]/train.jsonl', the recipe now gives '.../tok-0123456789abcdef/train.jsonl'", a
    changed recipe that had not changed, and the secret shown."""
    recipe = _run_made_with_a_secret_in_its_data_path(run_dir, tmp_path)
    monkeypatch.delenv("MY_DATA_TOKEN", raising=False)
    before = snapshot(run_dir)
    proc = invoke_dpo("train", recipe, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {run_dir / 'recipe.yaml'}: data.train: the run was made with the value of $MY_DATA_TOKEN in it "
        "(recipe.yaml holds it redacted), and MY_DATA_TOKEN is not set now: set it as it was when the run was made, "
        "and resume again\n"
    )
    assert SECRET not in proc.stdout + proc.stderr
    assert snapshot(run_dir) == before
    # set again, to another value: the values are not shown either
    monkeypatch.setenv("MY_DATA_TOKEN", "another-value-0123")
    proc = invoke_dpo("train", recipe, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 2 and SECRET not in proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: {run_dir / 'recipe.yaml'}: data.train: differs from the run's, which held the value of "
        "$MY_DATA_TOKEN (recipe.yaml holds it redacted; values not shown): MY_DATA_TOKEN may hold another value now "
        "than when the run was made, or the recipe changed; resume with the recipe and MY_DATA_TOKEN the run was "
        "made with\n"
    )
    assert snapshot(run_dir) == before


def test_resume_with_a_secrets_variable_set_as_it_was_finishes_the_run(run_dir, tmp_path, monkeypatch):
    recipe = _run_made_with_a_secret_in_its_data_path(run_dir, tmp_path)
    monkeypatch.setenv("MY_DATA_TOKEN", SECRET)
    proc = invoke_dpo("train", recipe, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: resuming from checkpoint-4 (step 4)" in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["stop_reason"] == "completed"


def test_resume_from_the_run_directory_alone_puts_a_redacted_secret_back_from_the_environment(
    run_dir, tmp_path, monkeypatch
):
    """The regression: `dpo train --resume RUN_DIR` read recipe.yaml's literal "[redacted $MY_DATA_TOKEN]" as the
    data path ("data.train: file '.../[redacted $MY_DATA_TOKEN]/train.jsonl' not found"), so a run with a secret in
    its recipe could never be resumed that way. The value comes back from the environment, in memory only: with the
    variable unset, one error line naming it (exit 2, nothing changed); set, the run finishes, and every file it
    writes still holds the secret redacted."""
    _run_made_with_a_secret_in_its_data_path(run_dir, tmp_path)
    monkeypatch.delenv("MY_DATA_TOKEN", raising=False)
    before = snapshot(run_dir)
    proc = invoke_dpo("train", "--resume", run_dir)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {run_dir / 'recipe.yaml'}: data.train: holds the value of $MY_DATA_TOKEN, redacted, and MY_DATA_TOKEN "
        "is not set now: set it as it was when the run was made, and resume again\n"
    )
    assert snapshot(run_dir) == before

    monkeypatch.setenv("MY_DATA_TOKEN", SECRET)
    proc = invoke_dpo("train", "--resume", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: resuming from checkpoint-4 (step 4)" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["stop_reason"] == "completed"
    recipe = (run_dir / "recipe.yaml").read_text()
    assert f"{tmp_path / '[redacted $MY_DATA_TOKEN]' / 'train.jsonl'}" in recipe
    for path in run_dir.rglob("*"):
        if path.suffix in (".yaml", ".json", ".jsonl", ".md", ".html"):
            assert SECRET not in path.read_text(errors="replace"), path
    # the recipe it wrote resumes as the user's own recipe file does: the same recipe, in both directions
    from dpo.rundir.resume import check

    card = json.loads((run_dir / "data_card.json").read_text())
    (run_dir / "summary.json").unlink()
    check(run_dir, recipe, card)  # raises nothing


def test_resume_from_the_run_directorys_recipe_without_output_dir_puts_a_redacted_secret_back(
    run_dir, tmp_path, monkeypatch
):
    """`dpo train RUN_DIR/recipe.yaml --resume`, RUN_DIR the runs/<name> the recipe's name gives: the secrets came
    back only with --output-dir RUN_DIR, so recipe.yaml's literal "[redacted $MY_DATA_TOKEN]" was read as the data
    path ("file not found"). The recipe's folder holds the run's files: it is the run's own recipe."""
    import yaml

    _run_made_with_a_secret_in_its_data_path(run_dir, tmp_path)
    name = yaml.safe_load((run_dir / "recipe.yaml").read_text())["name"]
    moved = tmp_path / "work" / "runs" / name
    moved.parent.mkdir(parents=True)
    shutil.move(run_dir, moved)
    (moved / "recipe.yaml").write_text((moved / "recipe.yaml").read_text().replace(str(run_dir), str(moved)))
    monkeypatch.chdir(tmp_path / "work")
    recipe = f"runs/{name}/recipe.yaml"
    monkeypatch.delenv("MY_DATA_TOKEN", raising=False)
    before = snapshot(moved)
    proc = invoke_dpo("train", recipe, "--resume")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {recipe}: data.train: holds the value of $MY_DATA_TOKEN, redacted, and MY_DATA_TOKEN is not set now: "
        "set it as it was when the run was made, and resume again\n"
    )
    assert snapshot(moved) == before
    monkeypatch.setenv("MY_DATA_TOKEN", SECRET)
    proc = invoke_dpo("train", recipe, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: resuming from checkpoint-4 (step 4)" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert json.loads((moved / "summary.json").read_text())["stop_reason"] == "completed"
    assert "[redacted $MY_DATA_TOKEN]" in (moved / "recipe.yaml").read_text()


def _saved_recipe_edited(run_dir, edit) -> None:
    import yaml

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    edit(recipe)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def test_a_saved_recipe_that_a_check_added_since_refuses_is_named_with_its_key(run_dir):
    """A run whose recipe.yaml an older version accepted, and a check added since refuses (here: training.eval_steps
    beside eval_strategy: epoch, a knob that does nothing): `dpo train --resume RUN_DIR` names the saved recipe, the
    key and why, exit 2, nothing changed; not a changed recipe, not a damaged run."""

    def epochs(recipe):
        recipe["training"]["eval_strategy"] = "epoch"

    _saved_recipe_edited(run_dir, epochs)
    before = snapshot(run_dir)
    proc = invoke_dpo("train", "--resume", run_dir)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {run_dir / 'recipe.yaml'}: training.eval_steps: has no effect: training.eval_strategy is 'epoch': "
        "evaluations come at each epoch's end\n"
    )
    assert snapshot(run_dir) == before


def test_a_recipe_corrected_for_a_check_added_since_is_told_to_correct_the_saved_one_too(run_dir, tmp_path):
    """The regression: resuming with the user's own recipe, already corrected for a check added since the run was made
    (training.eval_steps removed beside eval_strategy: epoch), said "resume with the recipe the run was made with (or
    just `dpo train --resume RUN_DIR`)", which that check then refuses. The advice names the saved recipe's problem
    and says to make the same change there; following it, the resume goes on."""
    import yaml

    def epochs(recipe):
        recipe["training"]["eval_strategy"] = "epoch"

    _saved_recipe_edited(run_dir, epochs)
    corrected = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    del corrected["training"]["eval_steps"]
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(corrected, sort_keys=False))
    before = snapshot(run_dir)
    proc = invoke_dpo("train", mine, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 2
    saved = run_dir / "recipe.yaml"
    assert proc.stderr == (
        f"error: {saved}: training.eval_steps: the run was made with 2, the recipe now gives None; the run's "
        f"recipe.yaml now fails a check ({saved}: training.eval_steps: has no effect: training.eval_strategy is "
        f"'epoch': evaluations come at each epoch's end): if this change is what that check asks for, make the same "
        f"change in {saved} and resume again\n"
    )
    assert snapshot(run_dir) == before
    # the saved recipe passes the checks: the advice is the plain one
    (run_dir / "recipe.yaml").write_text(before[saved].decode().replace("eval_strategy: epoch", "eval_strategy: steps"))
    proc = invoke_dpo("train", mine, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 2 and proc.stderr.endswith(f"(or just `dpo train --resume {run_dir}`)\n")
    # the advice followed: the same change in the saved recipe, and the resume goes on
    (run_dir / "recipe.yaml").write_text(mine.read_text())
    proc = invoke_dpo("train", mine, "--resume", "--output-dir", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_saved_recipe_whose_data_a_check_added_since_refuses_names_the_data_the_recipe_and_its_key(run_dir):
    """The same for a data check (an ignore_columns entry that no row has): the data file, and the saved recipe with
    the key that lists it."""
    train = {}

    def ignore_a_column_no_row_has(recipe):
        train["path"] = recipe["data"]["train"]
        recipe["data"]["train"] = {"path": train["path"], "ignore_columns": ["score"]}

    _saved_recipe_edited(run_dir, ignore_a_column_no_row_has)
    before = snapshot(run_dir)
    proc = invoke_dpo("train", "--resume", run_dir)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {train['path']}: ignore_columns lists 'score', which no row has ({run_dir / 'recipe.yaml'}: "
        "data.train); remove it\n"
    )
    assert snapshot(run_dir) == before


def test_a_run_made_with_a_relative_model_folder_still_resumes(run_dir, tiny_model_dir, monkeypatch):
    """Runs made before local model folders were recorded absolute hold `name_or_path: models/tiny` (relative to
    where they were started); the recipe now loads with the absolute path. From that folder, the two agree."""
    from dpo.rundir.resume import check

    monkeypatch.chdir(tiny_model_dir.parent)
    card = json.loads((run_dir / "data_card.json").read_text())
    absolute = (run_dir / "recipe.yaml").read_text()
    assert f"name_or_path: {tiny_model_dir}" in absolute
    (run_dir / "recipe.yaml").write_text(absolute.replace(str(tiny_model_dir), tiny_model_dir.name))
    check(run_dir, absolute, card)  # raises nothing


def test_zipfile_check_sees_torch_files_as_archives(killed_run):
    """The loadability check relies on torch.save writing zip archives (the default since torch 1.6)."""
    assert zipfile.is_zipfile(killed_run / "checkpoints" / "checkpoint-4" / "optimizer.pt")


# ---- a checkpoint deletion cut off midway ------------------------------------------------------------------------


def interrupted_rmtree(monkeypatch) -> list[str]:
    """Make the next shutil.rmtree of a folder holding files stop as a Ctrl-C would: after unlinking the first file
    (rmtree's order, os.scandir's, which puts adapter_model.safetensors before checkpoint_complete.json here). Returns
    the names of the files it removed."""
    real_rmtree, removed = shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        files = [] if removed else sorted_walk(path)
        if not files:
            return real_rmtree(path, *args, **kwargs)
        os.unlink(files[0])
        removed.append(os.path.basename(files[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return removed


def sorted_walk(path) -> list[str]:
    """The files under `path` in the order rmtree unlinks them (depth first, os.scandir order)."""
    if not os.path.isdir(path):
        return []
    found = []
    for entry in os.scandir(path):
        found += sorted_walk(entry.path) if entry.is_dir(follow_symlinks=False) else [entry.path]
    return found


def folders(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def complete_checkpoints(folder) -> list[str]:
    from dpo.rundir.resume import checkpoints, is_complete

    return [p.name for _, p in checkpoints(folder) if is_complete(p)]


def test_a_rotation_cut_off_midway_leaves_no_complete_checkpoint_without_its_files(killed_run, tmp_path, monkeypatch):
    """The regression: rmtree removed the weights first and the completeness mark later; a kill in between left a
    "complete" checkpoint without weights, which every later resume tried to load (a traceback)."""
    from dpo.rundir.resume import rotate

    folder = tmp_path / "checkpoints"
    shutil.copytree(killed_run / "checkpoints", folder)
    removed = interrupted_rmtree(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        rotate(folder, 1, protect=None)
    assert removed  # the deletion had begun
    assert complete_checkpoints(folder) == ["checkpoint-4"]
    assert folders(folder) == [".deleting-checkpoint-2", "checkpoint-4"]


def test_a_deletion_of_a_damaged_checkpoint_cut_off_midway_is_finished_by_the_next_resume(run_dir, monkeypatch):
    from dpo.rundir.resume import check, prepare

    checkpoint_dir = run_dir / "checkpoints"
    truncate(checkpoint_dir / "checkpoint-4" / "adapter_model.safetensors")
    card = json.loads((run_dir / "data_card.json").read_text())
    recipe = (run_dir / "recipe.yaml").read_text()
    removed = interrupted_rmtree(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare(run_dir, check(run_dir, recipe, card))
    assert removed
    assert complete_checkpoints(checkpoint_dir) == ["checkpoint-2"]
    assert last_resumable(checkpoint_dir)[0] == 2
    monkeypatch.undo()
    point = prepare(run_dir, check(run_dir, recipe, card))  # the next resume: from checkpoint-2, the rest swept away
    assert point.step == 2 and folders(checkpoint_dir) == ["checkpoint-2"]


def test_starting_again_from_step_0_cut_off_midway_leaves_no_complete_checkpoint(run_dir, monkeypatch):
    """Killed before its first checkpoint with a step-0 one (the untrained weights early stopping keeps): resume
    deletes it and starts again; cut off midway, the half-deleted checkpoint-0 must not count as complete."""
    from dpo.rundir.resume import check, mark_complete, prepare

    checkpoint_dir = run_dir / "checkpoints"
    step_0 = checkpoint_dir / "checkpoint-0"
    step_0.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(checkpoint_dir / "checkpoint-2" / name, step_0 / name)
    mark_complete(step_0, 0)
    for step in (2, 4):
        shutil.rmtree(checkpoint_dir / f"checkpoint-{step}")
    card = json.loads((run_dir / "data_card.json").read_text())
    recipe = (run_dir / "recipe.yaml").read_text()
    removed = interrupted_rmtree(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare(run_dir, check(run_dir, recipe, card))
    assert removed
    assert complete_checkpoints(checkpoint_dir) == []


def test_the_old_final_folder_a_kill_inside_replace_dir_left_is_removed_by_resume(run_dir, monkeypatch):
    """Killed between replace_dir's two renames (final/ -> .final.old/, .final.tmp/ -> final/): the old final/ (a whole
    model, for full fine-tuning) stayed in the run directory for good."""
    from dpo.rundir import atomic
    from dpo.rundir.resume import check, prepare

    for name in ("final", ".final.tmp"):  # a final/ of an earlier attempt, and the one being swapped in
        shutil.copytree(run_dir / "checkpoints" / "checkpoint-4", run_dir / name)
    real_replace, renames = os.replace, []

    def replace(source, target):
        renames.append(os.path.basename(target))
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_dir(run_dir / ".final.tmp", run_dir / "final")
    monkeypatch.undo()
    assert renames == [".final.old", "final"] and {".final.old", ".final.tmp"} <= set(folders(run_dir))
    card = json.loads((run_dir / "data_card.json").read_text())
    prepare(run_dir, check(run_dir, (run_dir / "recipe.yaml").read_text(), card))
    assert folders(run_dir) == ["checkpoints"]


# ---- how often a resume reads a checkpoint -----------------------------------------------------------------------


def test_a_resume_reads_each_checkpoint_once(run_dir, monkeypatch):
    """Reading a checkpoint is a checksum pass over its optimizer state (tens of gigabytes for a big full fine-tune):
    the regression read the newest one three times (the check, the clean-up, the choice of where to continue)."""
    from dpo.rundir import resume
    from dpo.training.execute import execute

    truncate(run_dir / "checkpoints" / "checkpoint-4" / "scheduler.pt")  # damaged: checkpoint-2 is read as well
    reads, real = [], resume.unloadable

    def counted(checkpoint, *args, **kwargs):
        reads.append(checkpoint.name)
        return real(checkpoint, *args, **kwargs)

    monkeypatch.setattr(resume, "unloadable", counted)
    summary, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True)
    assert summary["resumed_from"] == [2] and summary["steps"] == 4
    assert sorted(reads) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_resume_of_checkpoints_without_trainer_state_is_an_error_and_changes_nothing(run_dir):
    """The regression: complete checkpoints without trainer_state.json were passed over as if none had been saved, and
    the resume deleted every checkpoint and metrics.jsonl and trained again from step 0."""
    for step in (2, 4):
        (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").unlink()
    before = snapshot(run_dir)
    proc = dpo("train", "--resume", str(run_dir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir / 'checkpoints'}: no checkpoint can be loaded: 2 complete, all damaged (newest "
        "checkpoint-4: trainer_state.json: missing); start a new run in another --output-dir"
    ]
    assert snapshot(run_dir) == before


# ---- the lock is taken before the resume looks ----------------------------------------------------------------------


def test_the_resume_check_runs_under_the_run_directorys_lock(run_dir, monkeypatch):
    """The regression: check() ran before the lock was taken, so what it found (not finished, which checkpoint loads)
    could change before the clean-up acted on it: a second resume reopened a run that had just finished."""
    from dpo.rundir import resume
    from dpo.rundir.lock import RunLock
    from dpo.training.execute import execute

    real_check, held = resume.check, []

    def check(*args, **kwargs):
        try:
            RunLock(run_dir).acquire().release()
            held.append(False)
        except UserError as exc:
            held.append("in use by another dpo train" in str(exc))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(resume, "check", check)
    summary, _ = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True)
    assert held == [True] and summary["resumed_from"] == [4]


@pytest.mark.slow
def test_a_resume_of_a_directory_in_use_says_so_and_changes_nothing(run_dir):
    """Another dpo train holds the run directory (it finished the run meanwhile): the resume says the directory is in
    use, as a new run into it does, whatever its files say."""
    (run_dir / "summary.json").write_text(json.dumps({"stop_reason": "completed"}))
    code = (
        "import sys, time; from dpo.rundir.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(run_dir)
        proc = dpo("train", "--resume", str(run_dir))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {run_dir}: run directory is in use by another dpo train (pid {holder.pid} on ")
    assert snapshot(run_dir) == before
