"""Secrets never reach a file under the run directory (issue 19, item 4), nor `dpo validate`'s output or an error line.

A secret is an environment variable's value (dpo/rundir/secrets.py). The regressions: a secret in the model path
reached adapter_config.json, the PEFT model card and wandb's files; in the run name it reached training_args.bin
(pickled TrainingArguments), wandb and TensorBoard's event file (the arguments as text); in the wandb project /
group, the recipe file name or a `--set` value it reached RUN_DIR/wandb/* (wandb records the command line). Each run
below puts the secret everywhere at once, with wandb offline, then reads every byte of every file in the run
directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from dpo.rundir.secrets import scrubbed_arguments
from tests.conftest import ARITHMETIC, REPO, TINY_TRAINING, build_tiny_model, tiny_recipe_dict, write_recipe

SECRET = "zq9SECRETvalue4242"


def dpo(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "dpo", *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env
    )


def secret_env() -> dict:
    return {**os.environ, "MY_SERVICE_API_KEY": SECRET, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def files_holding(folder, secret: str) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    )


@pytest.fixture(scope="module")
def secret_everywhere(tmp_path_factory):
    """A model, a data folder, a recipe file, a run name, a wandb project and group, all holding the secret."""
    root = tmp_path_factory.mktemp("secrets")
    model = build_tiny_model(root / f"model-{SECRET}")
    data = root / f"data-{SECRET}"
    data.mkdir()
    shutil.copy(ARITHMETIC / "train.jsonl", data / "train.jsonl")
    recipe = tiny_recipe_dict(model, 16, {**TINY_TRAINING, "max_steps": 2})
    recipe["name"] = f"run-{SECRET}"
    recipe["data"]["train"] = str(data / "train.jsonl")
    recipe["logging"].update(wandb=True, wandb_project=f"project-{SECRET}", tensorboard=True)
    return write_recipe(root / f"recipe-{SECRET}.yaml", recipe)


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_no_file_in_the_run_directory_holds_a_secret(secret_everywhere, tmp_path, peft):
    run_dir = tmp_path / "run"
    overrides = ["--set", f"logging.wandb_group=group-{SECRET}"]
    if peft == "full":
        overrides += ["--set", "peft=null"]
    proc = dpo("train", str(secret_everywhere), "--output-dir", str(run_dir), *overrides, env=secret_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*/*.wandb"))  # wandb did write its files
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # so did TensorBoard (the arguments)
    assert (run_dir / "final" / "training_args.bin").is_file()
    assert files_holding(run_dir, SECRET) == []
    assert SECRET not in proc.stdout + proc.stderr
    assert "[redacted $MY_SERVICE_API_KEY]" in (run_dir / "recipe.yaml").read_text()


@pytest.mark.slow
def test_the_secret_free_training_args_still_load_and_keep_the_rest(secret_everywhere, tmp_path):
    """training_args.bin holds the redacted arguments, everything else as the run used it."""
    import torch

    run_dir = tmp_path / "run"
    env = {**secret_env(), "HF_TOKEN": "hf_" + SECRET[::-1]}
    proc = dpo(
        "train",
        str(secret_everywhere),
        "--output-dir",
        str(run_dir),
        "--set",
        "logging.wandb=false",
        "--set",
        "logging.wandb_project=dpo-toolkit",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = torch.load(run_dir / "final" / "training_args.bin", weights_only=False)
    assert args.run_name == "run-[redacted $MY_SERVICE_API_KEY]"
    assert args.max_steps == 2 and args.output_dir == str(run_dir / "checkpoints")
    assert args.hub_token is None


@pytest.mark.slow
def test_dpo_validate_never_prints_a_secret(secret_everywhere, tmp_path):
    # the default run directory, runs/<name>, would hold the secret in the run's name: refused, the secret not shown
    proc = dpo("validate", str(secret_everywhere), env=secret_env())
    assert proc.returncode == 2 and SECRET not in proc.stdout + proc.stderr
    assert "run-[redacted $MY_SERVICE_API_KEY]: holds a secret from $MY_SERVICE_API_KEY" in proc.stderr
    proc = dpo("validate", str(secret_everywhere), "--output-dir", str(tmp_path / "run"), env=secret_env())
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    ok = [line for line in proc.stdout.splitlines() if line.startswith("ok: ")]  # (TRL may print an [INFO] line first)
    assert len(ok) == 1 and "model-[redacted $MY_SERVICE_API_KEY]" in ok[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--set", f"model.name_or_path=/nowhere/{SECRET}"],  # the value echoed in the error
        ["--set", f"loss.beta={SECRET}"],  # a bad value
        ["--set", f"{SECRET}=1"],  # a bad key
    ],
    ids=["missing_model_path", "bad_value", "bad_key"],
)
@pytest.mark.slow
def test_error_lines_never_echo_a_secret(secret_everywhere, args, tmp_path):
    proc = dpo("validate", str(secret_everywhere), *args, "--output-dir", str(tmp_path / "run"), env=secret_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_missing_recipe_named_with_a_secret(tmp_path):
    proc = dpo("validate", str(tmp_path / f"{SECRET}.yaml"), env=secret_env())
    assert proc.returncode == 2 and SECRET not in proc.stderr and proc.stderr.startswith("error: ")


def test_scrubbed_arguments_copies_and_redacts():
    from dataclasses import dataclass, field

    @dataclass
    class Args:
        run_name: str = f"a-{SECRET}"
        hub_token: str | None = "hf_anything"
        report_to: list = field(default_factory=lambda: [f"x{SECRET}", "wandb"])
        steps: int = 3

    env = {"MY_SERVICE_API_KEY": SECRET}
    original = Args()
    scrubbed = scrubbed_arguments(original, env)
    assert scrubbed.run_name == "a-[redacted $MY_SERVICE_API_KEY]" and scrubbed.hub_token is None
    assert scrubbed.report_to == ["x[redacted $MY_SERVICE_API_KEY]", "wandb"] and scrubbed.steps == 3
    assert original.run_name == f"a-{SECRET}" and original.hub_token == "hf_anything"  # untouched
    assert scrubbed_arguments(original, {}) is original  # no secrets in the environment: nothing to copy


def test_a_url_password_is_scrubbed_from_arguments_and_model_names():
    """The password of a URL in a variable not named like a secret goes the same way as a secret's value: out of
    pickled training arguments and out of the model paths a save records (then back)."""
    from dataclasses import dataclass
    from types import SimpleNamespace

    from dpo.training.secret_free import model_names_redacted

    password = "pw-a9b8c7d6"

    @dataclass
    class Args:
        run_name: str = f"sweep-{password}"
        output_dir: str = "runs/x"

    env = {"DPO_SWEEP_STORAGE": f"postgresql://alice:{password}@db/sweeps"}
    assert scrubbed_arguments(Args(), env).run_name == "sweep-[redacted $DPO_SWEEP_STORAGE]"
    config = SimpleNamespace(_name_or_path=f"/models/{password}", to_dict=dict)
    model = SimpleNamespace(modules=lambda: [SimpleNamespace(config=config)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DPO_SWEEP_STORAGE", env["DPO_SWEEP_STORAGE"])
        with model_names_redacted(model):
            assert config._name_or_path == "/models/[redacted $DPO_SWEEP_STORAGE]"
    assert config._name_or_path == f"/models/{password}"


# Secrets that YAML writes escaped: a non-ASCII character becomes \xE4 in a double-quoted scalar, and a ' is doubled
# in a single-quoted one (a value with ": " in it must be quoted). Each ends in an ASCII tail that any escaping leaves
# as it is: a file holding that tail holds the secret, in some spelling.
ESCAPED = {"MY_SERVICE_API_KEY": "pässwort-zq9UMLAUT4242", "DB_PASSWORD": "o'brien: zq9QUOTE4242"}
TAILS = ("zq9UMLAUT4242", "zq9QUOTE4242")


def files_holding_a_tail(folder) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and any(tail.encode() in p.read_bytes() for tail in TAILS)
    )


@pytest.mark.slow
def test_a_secret_that_yaml_escapes_reaches_no_file_of_the_run_or_its_export(tmp_path):
    """The regression: recipe.yaml was redacted as text after YAML had escaped the secret, which then reached
    recipe.yaml, every model card (they quote it), report.html and the export folder (and so the hub)."""
    import yaml

    umlaut, quote = ESCAPED["MY_SERVICE_API_KEY"], ESCAPED["DB_PASSWORD"]
    model = build_tiny_model(tmp_path / f"model-{umlaut}")
    data = tmp_path / f"data-{quote}"
    data.mkdir()
    shutil.copy(ARITHMETIC / "train.jsonl", data / "train.jsonl")
    recipe = tiny_recipe_dict(model, 16, {**TINY_TRAINING, "max_steps": 2})
    recipe["name"] = f"run-{umlaut}"
    recipe["data"]["train"] = str(data / "train.jsonl")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    run_dir, export = tmp_path / "run", tmp_path / "export"
    env = {**os.environ, **ESCAPED, "HF_HUB_OFFLINE": "1"}
    proc = dpo("train", str(path), "--output-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = dpo("export", str(run_dir), "--output", str(export), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files_holding_a_tail(run_dir) == [] and files_holding_a_tail(export) == []
    written = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert written["model"]["name_or_path"] == str(tmp_path / "model-[redacted $MY_SERVICE_API_KEY]")
    assert written["data"]["train"] == str(tmp_path / "data-[redacted $DB_PASSWORD]" / "train.jsonl")
    assert written["name"] == "run-[redacted $MY_SERVICE_API_KEY]"
    assert (run_dir / "recipe.yaml").read_text() in (export / "README.md").read_text()  # the card quotes it whole


def test_cards_and_report_of_a_run_made_before_keep_its_escaped_secret_out(tmp_path, monkeypatch):
    """A run made before recipe.yaml was redacted ahead of dumping holds the secret there, escaped: the model card (of
    a checkpoint, final/, an export) and report.html quote recipe.yaml and name its base model: they must not pass it
    on."""
    import yaml

    from dpo.analysis.model_card import write_model_card
    from dpo.analysis.report import write_report

    for name, value in ESCAPED.items():
        monkeypatch.setenv(name, value)
    umlaut, quote = ESCAPED["MY_SERVICE_API_KEY"], ESCAPED["DB_PASSWORD"]
    recipe = {"name": "old", "model": {"name_or_path": f"/models/{umlaut}"}, "data": {"train": f"/d/{quote}/t.jsonl"}}
    text = yaml.safe_dump(recipe, sort_keys=False)  # as the old runs wrote it
    assert umlaut not in text and quote not in text and all(tail in text for tail in TAILS)
    (tmp_path / "recipe.yaml").write_text(text)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.69}\n')
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text('{"base_model_name_or_path": "/cache/model"}')
    write_model_card(tmp_path / "final", tmp_path)
    write_report(tmp_path)
    assert files_holding_a_tail(tmp_path) == ["recipe.yaml"]
    card = (tmp_path / "final" / "README.md").read_text()
    assert "name_or_path: /models/[redacted $MY_SERVICE_API_KEY]" in card
    assert json.loads((tmp_path / "final" / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": "/models/[redacted $MY_SERVICE_API_KEY]"
    }


@pytest.mark.slow
def test_no_file_in_a_sweep_directory_holds_a_secret(tmp_path, monkeypatch):
    """The regression: sweep.yaml and the study's attributes in study.db (the spec's fixed and search values) kept
    the secrets, and best.yaml's fallback (the best trial's run directory not readable here) did too. One trial of
    two steps: a secret in a fixed value, one YAML escapes in a variant's overrides, and another in a `choice` value
    (optuna records the choices)."""
    import optuna
    import yaml

    from dpo.sweep import driver
    from dpo.sweep.spec import load_spec
    from dpo.sweep.storage import open_storage

    umlaut, quote = ESCAPED["MY_SERVICE_API_KEY"], ESCAPED["DB_PASSWORD"]
    model = build_tiny_model(tmp_path / f"model-{quote}")
    train, held_out = tmp_path / f"train-{SECRET}", tmp_path / f"eval-{umlaut}"
    for folder, split in ((train, "train"), (held_out, "eval")):
        folder.mkdir()
        shutil.copy(ARITHMETIC / f"{split}.jsonl", folder / f"{split}.jsonl")
    base_model = build_tiny_model(tmp_path / "model")
    recipe = write_recipe(tmp_path / "base.yaml", tiny_recipe_dict(base_model, 16, TINY_TRAINING))
    spec = tmp_path / "spec.yaml"
    fixed = {"training.max_steps": 2, "training.eval_steps": 1, "data.train": str(train / "train.jsonl")}
    search = {
        "model.name_or_path": {"choice": [str(model)]},
        "held_out": {"variants": {"here": {"data.eval": str(held_out / "eval.jsonl")}}},
    }
    objective = {"metric": "eval_rewards/accuracies"}
    spec.write_text(yaml.safe_dump({"recipe": str(recipe), "objective": objective, "trials": 1, "fixed": fixed,
                                    "search": search}))  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    secrets = {**ESCAPED, "OTHER_API_KEY": SECRET}
    env = {**os.environ, **secrets, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = dpo("sweep", str(spec), "--output-dir", str(sweep_dir), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["trials"][0]["state"] == "complete"
    assert files_holding(sweep_dir, SECRET) == [] and files_holding_a_tail(sweep_dir) == []
    written = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert written["fixed"]["data.train"] == str(tmp_path / "train-[redacted $OTHER_API_KEY]" / "train.jsonl")

    # best.yaml from the base recipe and the best trial's parameters: its run directory is on another machine
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    (sweep_dir / "trials" / "trial-0000" / "recipe.yaml").unlink()
    (sweep_dir / "best.yaml").unlink()
    loaded = load_spec(spec)
    study = optuna.load_study(study_name=loaded.name, storage=open_storage(driver.sqlite_url(sweep_dir / "study.db")))
    driver._write_best(driver.summarize(study, loaded, sweep_dir), loaded, sweep_dir, group={})  # no wandb: no group
    assert files_holding(sweep_dir, SECRET) == [] and files_holding_a_tail(sweep_dir) == []
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["model"]["name_or_path"] == str(tmp_path / "model-[redacted $DB_PASSWORD]")


def test_a_redacted_value_stays_on_one_line_of_recipe_yaml(tmp_path, monkeypatch):
    """The redaction puts a space into a value ("[redacted $NAME]"), where YAML folds a long plain scalar onto the next
    line: recipe.yaml keeps each value on its line, as a reader (or grep) expects."""
    from dpo.config.loading import load_recipe
    from dpo.rundir.secrets import redact_data

    monkeypatch.setenv("MY_SERVICE_API_KEY", SECRET)
    folder = "/a/folder/deep/enough/that/the/line/runs/well/past/eighty/characters"
    recipe = {"name": "r", "model": {"name_or_path": "m"}, "data": {"train": f"{folder}/{SECRET}/train.jsonl"}}
    text = load_recipe(write_recipe(tmp_path / "r.yaml", recipe)).recipe.to_yaml(redact=redact_data)
    assert f"  train: {folder}/[redacted $MY_SERVICE_API_KEY]/train.jsonl\n" in text


def test_restore_redacted_puts_each_secret_back_and_names_the_key_of_one_it_cannot():
    """`dpo train --resume RUN_DIR` reads recipe.yaml through `restore_redacted`: each "[redacted $NAME]" back from the
    environment, keys named as written (a list item by its index); a value never shown in an error."""
    from dpo.errors import UserError
    from dpo.rundir.secrets import redact_data, restore_redacted

    env = {"MY_DATA_TOKEN": "tok-0123456789abcdef", "HF_TOKEN": "hf_abcdefghijkl"}
    data = {
        "data": {"train": ["/d/[redacted $MY_DATA_TOKEN]/a.jsonl"]},
        "training": {"hub_token": "[redacted $HF_TOKEN]"},
    }
    restored = restore_redacted(data, "RUN/recipe.yaml", env)
    assert restored == {
        "data": {"train": ["/d/tok-0123456789abcdef/a.jsonl"]},
        "training": {"hub_token": env["HF_TOKEN"]},
    }
    assert redact_data(restored, env) == data  # written again, redacted as it was
    with pytest.raises(UserError) as unset:
        restore_redacted(data, "RUN/recipe.yaml", {"HF_TOKEN": env["HF_TOKEN"]})
    assert str(unset.value) == (
        "RUN/recipe.yaml: data.train[0]: holds the value of $MY_DATA_TOKEN, redacted, and MY_DATA_TOKEN is not set "
        "now: set it as it was when the run was made, and resume again"
    )
    with pytest.raises(UserError, match=r"^RUN/recipe.yaml: training.hub_token: .* HF_TOKEN holds no secret now"):
        restore_redacted(data, "RUN/recipe.yaml", {**env, "HF_TOKEN": "short"})
    url = {"DATABASE_URL": "postgresql://me:p%40ssword123@host/db"}  # the password as written and as decoded
    with pytest.raises(UserError, match=r"DATABASE_URL holds 2 secrets now") as several:
        restore_redacted({"x": "[redacted $DATABASE_URL]"}, "RUN/recipe.yaml", url)
    assert "ssword123" not in str(several.value)


def test_secret_in_names_the_variable_whose_secret_a_text_holds():
    """The one test of "does this text hold a secret" that a run directory's path and a sweep's names both use."""
    from dpo.rundir.secrets import secret_in

    env = {"MY_DATA_TOKEN": "tok-0123456789abcdef", "HOME": "/root"}
    assert secret_in("/runs/tok-0123456789abcdef/x", env) == "MY_DATA_TOKEN"
    assert secret_in("/runs/x", env) is None
