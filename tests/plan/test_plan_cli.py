"""`dpo plan` options are built from PlanOptions: every field is an option, with the CLI's names and parsing."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from dpo import api
from dpo.cli import app
from dpo.plan import PlanOptions

# every field set away from its default, and the command line that sets it
CHANGED = PlanOptions(
    dtype="bfloat16",
    batch_size=3,
    seq_len=64,
    lora_rank=4,
    lora_targets=("q_proj", "c_attn"),
    gradient_checkpointing=True,
    reference="copy",
    optimizer="sgd",
    gpu_memory_gib=12.5,
    device="cpu",
    autocast="float16",
)
CHANGED_ARGS = [
    "--dtype", "bfloat16", "--batch-size", "3", "--seq-len", "64", "--lora-rank", "4",
    "--lora-targets", "q_proj, c_attn", "--gradient-checkpointing", "--reference", "copy", "--optimizer", "sgd",
    "--gpu-memory", "12.5", "--device", "cpu", "--autocast", "float16",
]  # fmt: skip


class _Plan:
    def to_dict(self):
        return {"planned": True}

    def render(self):
        return "rendered plan"


@pytest.fixture
def planned(monkeypatch) -> list[tuple[str, PlanOptions]]:
    """The (source, options) each `dpo plan` call hands to dpo.api.plan."""
    calls: list[tuple[str, PlanOptions]] = []

    def plan(source, options):
        calls.append((source, options))
        return _Plan()

    monkeypatch.setattr(api, "plan", plan)
    return calls


def test_no_options_give_the_default_plan_options(planned):
    result = CliRunner().invoke(app, ["plan", "config.json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "rendered plan"
    assert planned == [("config.json", PlanOptions())]


def test_every_plan_option_reaches_its_field(planned):
    # a new PlanOptions field must be added to CHANGED (and so shown to arrive from the command line)
    assert all(getattr(CHANGED, f.name) != f.default for f in dataclasses.fields(PlanOptions))
    result = CliRunner().invoke(app, ["plan", "config.json", "--json", *CHANGED_ARGS])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("{") and '"planned": true' in result.output
    assert planned == [("config.json", CHANGED)]


def test_full_means_no_lora_rank_and_all_linear_is_one_target(planned):
    result = CliRunner().invoke(app, ["plan", "config.json", "--full", "--lora-targets", "all-linear"])
    assert result.exit_code == 0, result.output
    assert planned[0][1] == PlanOptions(lora_rank=None, lora_targets=("all-linear",))


def test_help_shows_each_field_with_its_help():
    result = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(PlanOptions):
        option = f.metadata["option"] or "--" + f.name.replace("_", "-")
        assert option in result.output, option
        assert f.metadata["help"] in result.output, f.metadata["help"]
    for flag in ("--json", "--full"):
        assert flag in result.output
