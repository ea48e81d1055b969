"""The bad-input corpus (tests/bad_inputs/cases.yaml): each case fails with its documented exit code and one
`error:` line per problem naming the file and the key or row, from both `dpo validate` and `dpo train`, and leaves an
existing run directory next to it, and the working directory, byte-for-byte unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dpo.cli import app

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def fill(text: str) -> str:
    return text.replace("{dir}", str(CORPUS))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


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
