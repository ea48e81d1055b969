"""The bad-input corpus (tests/bad_inputs/cases.yaml): each case fails with its documented exit code and one
`error:` line per problem naming the file and the key or row, from both `dpo validate` and `dpo train`, and leaves an
existing run directory next to it, and the working directory, byte-for-byte unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dpo.cli import app

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def fill(text: str) -> str:
    return text.replace("{dir}", str(CORPUS))


def snapshot(folder: Path) -> dict[str, bytes | tuple | None]:
    """Every file's bytes (its size and times when over 1 MiB: the huge-file cases are sparse), folders as None."""

    def content(p: Path):
        if not p.is_file():
            return None
        info = p.stat()
        if info.st_size > 2**20:
            return (info.st_size, info.st_mtime_ns)
        with open(p, "rb") as f:  # builtin open: the permission cases patch Path.open
            return f.read()

    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def existing_run(tmp_path, monkeypatch) -> Path:
    """A working directory holding a finished run, as `dpo train` leaves it."""
    run = tmp_path / "runs" / "existing"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "final").mkdir()
    files = {
        "recipe.yaml": "name: existing\n", "metrics.jsonl": '{"step": 0, "eval_loss": 0.69}\n',
        "summary.json": '{"stop_reason": "completed"}\n', "data_card.json": "{}\n",
        "checkpoints/checkpoint-2/checkpoint_complete.json": '{"step": 2}\n',
        "final/adapter_model.safetensors": "weights",
    }  # fmt: skip
    for name, text in files.items():
        (run / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return run


def test_the_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 25 and len({c["id"] for c in CASES}) == len(CASES)
    used = {fill(a) for c in CASES for a in c.get("args", [f"{{dir}}/recipes/{c['id']}.yaml"])}
    helpers = {"cycle_b.yaml", "good.yaml"}  # the other end of the cycle; the valid recipe --set cases start from
    recipes = {str(p) for p in (CORPUS / "recipes").iterdir() if p.name not in helpers}
    assert recipes <= used


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_fails_cleanly_and_changes_nothing(case, existing_run, tmp_path):
    args = [fill(a) for a in case.get("args", [f"{{dir}}/recipes/{case['id']}.yaml"])]
    before = snapshot(tmp_path)
    runner = CliRunner()
    for command in (["validate", *args], ["train", *args, "--output-dir", str(existing_run)]):
        result = runner.invoke(app, command)
        assert result.exit_code == case["exit"], (command, result.output, result.exception)
        lines = result.stderr.splitlines()
        assert len(lines) == case.get("lines", 1), lines  # one line per problem, no traceback
        source = fill(case["where"]).split(": ")[0]  # the file (or --set)
        assert all(line.startswith(f"error: {source}") for line in lines), lines
        assert lines[0].startswith(f"error: {fill(case['where'])}"), lines[0]
        assert fill(case["message"]) in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # the run next to it, and everything else: untouched (no PWNED file either)


# ---- hostile inputs built at test time (issue 19): special files, permissions, output directories, huge values.
# Each is one named test; all go through `refused`, the same contract as the corpus above.

ARITHMETIC = CORPUS.parents[1] / "data" / "arithmetic"


def refused(args: list[str], where: str, message: str, folder: Path, output_dir: Path | None = None) -> str:
    """`dpo validate` and `dpo train` both exit 2 with one bounded `error:` line starting `where` and holding
    `message`, and leave `folder` (the working directory, with its existing run) byte-for-byte unchanged."""
    before = snapshot(folder)
    out = ["--output-dir", str(output_dir)] if output_dir else []
    train_out = out or ["--output-dir", str(folder / "runs" / "existing")]
    for command in (["validate", *args, *out], ["train", *args, *train_out]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command, result.output, result.exception)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: {where}") and message in lines[0], lines[0][:2000]
        assert len(lines[0]) < 1200
    assert snapshot(folder) == before
    return lines[0]


def recipe_with(folder: Path, train: str, eval_: str | None = None, extra: str = "") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(f"data: {{train: {train}, eval: {eval_ or ARITHMETIC / 'eval.jsonl'}}}\n{extra}")
    return path


def deny_reading(monkeypatch, path: Path) -> None:
    """What a user without read permission sees (the tests may run as root, for whom chmod 000 changes nothing):
    opening `path` raises PermissionError, and os.access says no."""
    import os

    real_open, real_access = Path.open, os.access

    def open_(self, *args, **kwargs):
        if Path(os.path.abspath(self)) == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path else real_access(p, mode, **kw))


def test_data_file_that_is_a_fifo_is_refused_without_blocking(existing_run, tmp_path):
    import os

    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    refused([str(recipe_with(tmp_path, fifo))], str(fifo), "is a FIFO (named pipe), not a regular data file", tmp_path)


def test_data_file_that_is_a_device_is_refused_without_reading(existing_run, tmp_path):
    device = tmp_path / "rows.jsonl"
    device.symlink_to("/dev/zero")
    refused([str(recipe_with(tmp_path, device))], str(device), "is a character device", tmp_path)


def test_huge_data_file_is_refused_before_reading(existing_run, tmp_path):
    from dpo.config.input_files import MAX_DATA_BYTES

    huge = tmp_path / "rows.jsonl"
    with huge.open("wb") as f:  # sparse: no disk used, and nothing may read it
        f.truncate(MAX_DATA_BYTES + 1)
    refused([str(recipe_with(tmp_path, huge))], str(huge), "data file is 2.0 GiB, over the limit of 2.0 GiB", tmp_path)


def test_huge_recipe_is_refused_before_reading(existing_run, tmp_path):
    recipe = tmp_path / "big.yaml"
    with recipe.open("wb") as f:
        f.truncate(2 * 1024 * 1024)
    refused([str(recipe)], str(recipe), "recipe file is 2.0 MiB, over the limit of 1.0 MiB", tmp_path)


def test_recipe_that_is_a_fifo_or_a_directory_is_refused(existing_run, tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    refused([str(fifo)], str(fifo), "is a FIFO (named pipe), not a regular recipe file", tmp_path)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    refused([str(folder)], str(folder), "is a directory, not a regular recipe file", tmp_path)


def test_base_recipe_that_is_a_fifo(existing_run, tmp_path):
    import os

    base = tmp_path / "base.yaml"
    os.mkfifo(base)
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nloss: {beta: 0.2}\n")
    refused([str(child)], str(base), "is a FIFO (named pipe), not a regular recipe file", tmp_path)


def test_unreadable_recipe_is_an_error_line_not_a_usage_box(existing_run, tmp_path, monkeypatch):
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    deny_reading(monkeypatch, recipe)
    refused([str(recipe)], str(recipe), "cannot read the recipe file: Permission denied", tmp_path)


def test_unreadable_base_recipe(existing_run, tmp_path, monkeypatch):
    base = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base.name}\nloss: {{beta: 0.2}}\n")
    deny_reading(monkeypatch, base)
    refused([str(child)], str(base), "cannot read the recipe file: Permission denied", tmp_path)


def test_unreadable_data_file(existing_run, tmp_path, monkeypatch):
    rows = tmp_path / "rows.jsonl"
    rows.write_text((ARITHMETIC / "train.jsonl").read_text())
    recipe = recipe_with(tmp_path, rows)
    deny_reading(monkeypatch, rows)
    refused([str(recipe)], str(rows), "cannot read the data file: Permission denied", tmp_path)


def test_output_dir_under_a_regular_file(existing_run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / "run"
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    refused([str(recipe)], str(out), f"cannot be created: {afile} is a file, not a directory", tmp_path, out)


def test_api_and_sweep_refuse_an_output_dir_that_is_a_file_in_the_shared_words(tmp_path):
    """dpo.api.train and the sweep driver check their directory with the same function as the CLI
    (dpo/rundir/writable.py), so the words are the same everywhere."""
    import dpo.api
    from dpo.errors import UserError
    from dpo.sweep.driver import _check_sweep_dir

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    with pytest.raises(UserError, match="afile: is a file, not a directory"):
        dpo.api.train(recipe, output_dir=afile)
    with pytest.raises(UserError, match="afile: is a file, not a directory"):
        _check_sweep_dir(afile, external=False, resume=False)
    assert afile.read_text() == "not a folder"


def test_output_dir_that_is_a_dangling_symlink(existing_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    refused([str(recipe)], str(link), "is a dangling symlink", tmp_path, link)


def test_output_dir_in_an_unwritable_folder(existing_run, tmp_path, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: say no as the file system would to another user
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    out = locked / "run"
    refused([str(recipe)], str(out), f"cannot be created: {locked} is not writable by this user", tmp_path, out)


def test_output_dir_whose_path_holds_a_secret(existing_run, tmp_path, monkeypatch):
    """Files written in a run directory name it (TRL's model card, each checkpoint's training_args.bin), so a
    secret in its path would reach them: refused, with the variable named and the secret not shown, also where the
    secret is in the working directory and the output directory is given relative to it. The same directory without
    the secret in the environment is accepted."""
    secret = "hf_S3cretT0kenValue"
    monkeypatch.setenv("HF_TOKEN", secret)
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    out = tmp_path / f"runs-{secret}"
    message = "holds a secret from $HF_TOKEN, which files written there would record"
    line = refused([str(recipe)], str(tmp_path / "runs-[redacted $HF_TOKEN]"), message, tmp_path, out)
    assert secret not in line
    cwd = tmp_path / f"cwd-{secret}"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    line = refused([str(recipe)], str(tmp_path / "cwd-[redacted $HF_TOKEN]" / "runs" / "x"), message, tmp_path,
                   Path("runs/x"))  # fmt: skip
    assert secret not in line
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["validate", str(recipe), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output


def test_output_dir_under_a_folder_that_keeps_secrets_is_accepted(existing_run, tmp_path, monkeypatch):
    """PASSWORD_STORE_DIR and CREDENTIALS_DIRECTORY name where secrets are kept, not a secret: a run directory under
    such a folder is accepted, and its path is printed as it is."""
    store = tmp_path / "password-store"
    monkeypatch.setenv("PASSWORD_STORE_DIR", str(store))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(store))
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    result = CliRunner().invoke(app, ["validate", str(recipe), "--output-dir", str(store / "run")])
    assert result.exit_code == 0, result.output
    assert "redacted" not in result.output


def test_json_row_nested_100000_deep(existing_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = (ARITHMETIC / "train.jsonl").read_text().splitlines()[:4]
    rows.write_text("\n".join([good[0], "[" * 100_000 + "]" * 100_000, *good[1:]]) + "\n")
    refused([str(recipe_with(tmp_path, rows))], str(rows), "row 2: not valid JSON (nested deeper than", tmp_path)


def test_json_row_with_a_5000_digit_integer(existing_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = (ARITHMETIC / "train.jsonl").read_text().splitlines()[:4]
    rows.write_text("\n".join([good[0], '{"prompt": "q", "scores": ' + "7" * 5000 + "}", *good[1:]]) + "\n")
    refused([str(recipe_with(tmp_path, rows))], str(rows), "row 2: not valid JSON (Exceeds the limit", tmp_path)


def test_json_file_nested_100000_deep(existing_run, tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text("[" * 100_000 + "]" * 100_000)
    refused([str(recipe_with(tmp_path, rows))], str(rows), "not valid JSON (nested deeper than", tmp_path)


def test_a_52_mb_value_is_shortened_in_the_error_line(existing_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    row = {"prompt": [{"role": "x" * 52_000_000, "content": "hi"}], "chosen": "a", "rejected": "b"}
    rows.write_text(json.dumps(row) + "\n")
    line = refused([str(recipe_with(tmp_path, rows))], str(rows), "row 1: 'prompt' message 0 has role 'xxx", tmp_path)
    assert "...xxx" in line


def test_a_long_set_value_is_shortened_in_the_error_line(existing_run, tmp_path):
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl")
    refused(
        [str(recipe), "--set", "loss.beta=" + "9x" * 50_000],
        "--set: ",
        "loss.beta: expected a number, got the text",
        tmp_path,
    )


def test_chat_rows_with_a_model_without_chat_template(existing_run, tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    recipe = recipe_with(tmp_path, ARITHMETIC / "train.jsonl", extra=f"model: {{name_or_path: {model}}}\n")
    message = "row 1: conversational rows (message lists) need a chat template, and the tokenizer of"
    refused([str(recipe)], str(ARITHMETIC / "train.jsonl"), message, tmp_path)


def test_eval_equal_to_train_is_allowed_when_asked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ARITHMETIC / "train.jsonl"
    recipe = recipe_with(tmp_path, train, eval_=str(train), extra="data: {allow_eval_in_train: true}\n")
    assert "duplicate key" in CliRunner().invoke(app, ["validate", str(recipe)]).stderr  # one data section only
    recipe.write_text(f"data: {{train: {train}, eval: {train}, allow_eval_in_train: true}}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    recipe.write_text(f"data: {{train: {train}, allow_eval_in_train: true}}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2 and "data.allow_eval_in_train: has no effect: data.eval is not set" in result.stderr


@pytest.mark.slow
def test_parquet_error_is_one_line_with_progress_bars_on(tmp_path):
    """The datasets progress line ("Generating train split") and its logged error used to come before ours. (CSV is
    no longer read through datasets: a row with too many fields is a bad row, tests/data/test_data.py.)"""
    import os
    import subprocess
    import sys

    bad = tmp_path / "rows.parquet"
    bad.write_text("not a parquet file")
    recipe = recipe_with(tmp_path, bad)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["PYTHONPATH"] = str(CORPUS.parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "dpo", "validate", str(recipe)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {bad}: cannot read (ArrowInvalid: Parquet magic bytes not found in footer. Either the file is "
        "corrupted or this is not a parquet file.)"
    ]
