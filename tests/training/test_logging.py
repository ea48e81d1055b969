"""wandb (offline unless a key is configured) and TensorBoard: files appear where the run directory says."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dpo.config.loading import load_recipe
from dpo.errors import UserError
from dpo.training.execute import execute
from dpo.training.gate import check
from dpo.training.integrations import wandb_mode
from tests.conftest import read_jsonl


@pytest.mark.parametrize(
    ("env", "mode_key", "expected"),
    [
        ({}, "auto", "offline"),
        ({"WANDB_API_KEY": "x" * 40}, "auto", "online"),
        ({"WANDB_API_KEY": "x" * 40}, "offline", "offline"),
        ({}, "online", "online"),
    ],
)
def test_wandb_mode_follows_the_api_key(tiny_recipe, tmp_path, monkeypatch, env, mode_key, expected):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    recipe = load_recipe(tiny_recipe, ["logging.wandb=true", f"logging.wandb_mode={mode_key}"]).recipe
    assert wandb_mode(recipe, tmp_path) == expected
    import os

    assert os.environ["WANDB_MODE"] == expected and os.environ["WANDB_DIR"] == str(tmp_path)


def test_wandb_off_by_default_touches_nothing(tiny_recipe, tmp_path):
    assert wandb_mode(load_recipe(tiny_recipe).recipe, tmp_path) is None


def wandb_records(run_dir: Path) -> dict:
    """The run record, the last config and the merged summary from an offline run's .wandb file: a LevelDB-style
    log (7-byte file header, 32 KiB blocks of [crc32, length, type] chunks) of wandb's protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    raw, pos, chunk, out = path.read_bytes(), 7, b"", {"summary": {}}
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunk += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            which = record.WhichOneof("record_type")
            if which == "run":
                out["run"] = record.run
            elif which == "summary":
                for item in record.summary.update:  # transformers' metrics come as nested keys (eval, loss)
                    out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


@pytest.mark.slow
def test_offline_wandb_and_tensorboard_write_into_the_run_directory(tiny_recipe, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    summary, _ = execute(
        tiny_recipe,
        [
            "logging.wandb=true",
            "logging.wandb_group=sweep-7",
            "logging.tensorboard=true",
            "training.max_steps=2",
            "training.eval_steps=1",
        ],
        output_dir=run_dir,
    )
    assert summary["steps"] == 2
    records = wandb_records(run_dir)
    run = records["run"]
    assert run.run_group == "sweep-7" and run.display_name == "tiny"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["recipe"] == json.loads(json.dumps(load_recipe(run_dir / "recipe.yaml").recipe.model_dump()))
    logged = records["summary"]
    assert logged["stop_reason"] == "completed" and logged["best_step"] == summary["best_step"]
    assert logged["best/eval_rewards/margins"] == pytest.approx(summary["best_metric"]["value"])
    assert logged["best/eval_loss"] == pytest.approx(summary["best_metrics"]["eval_loss"])  # a headline number
    assert logged["overfitting_onset_step"] is None and "eval/loss" in logged  # plus transformers' own metrics
    assert logged[f"markers/best {summary['best_metric']['name']}"] == summary["best_step"]  # the report's markers

    (events,) = [e for e in (run_dir / "tensorboard").rglob("events.out.tfevents.*") if "markers" not in e.parts]
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"eval/loss", "eval/rewards/margins", "eval/logps/accuracies", "train/loss"} <= set(tags)
    logged_steps = [e.step for e in accumulator.Scalars("eval/loss")]
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in m]
    assert logged_steps == [m["step"] for m in metrics] == [0, 1, 2]
    assert [e.value for e in accumulator.Scalars("eval/loss")] == pytest.approx([m["eval_loss"] for m in metrics])
    markers = EventAccumulator(str(run_dir / "tensorboard" / "markers"))
    markers.Reload()
    best = markers.Scalars(f"markers/best {summary['best_metric']['name']}")
    assert [(e.step, e.value) for e in best] == [(summary["best_step"], summary["best_step"])]
    assert "markers/text_summary" in markers.Tags()["tensors"]  # the text entry listing them


def test_wandb_group_without_wandb_is_an_error(tiny_recipe):
    with pytest.raises(UserError, match=r"logging.wandb_group: has no effect: logging.wandb is false"):
        check(tiny_recipe, ["logging.wandb_group=g"])


def test_secrets_never_reach_the_wandb_config():
    from dpo.rundir.secrets import redact_config

    env = {"HF_TOKEN": "hf_abcdefgh12345"}
    tree = {
        "training": {"hub_token": "hf_x", "learning_rate": 1e-4, "max_length": 64},
        "x": [{"api_key": "k", "keep": 1}],
        "data": {"train": "/data/hf_abcdefgh12345/train.jsonl"},  # a secret's value anywhere else: redacted too
    }
    assert redact_config(tree, env) == {
        "training": {"hub_token": "<redacted>", "learning_rate": 1e-4, "max_length": 64},
        "x": [{"api_key": "<redacted>", "keep": 1}],
        "data": {"train": "/data/[redacted $HF_TOKEN]/train.jsonl"},
    }


def test_a_diverged_run_finishes_its_wandb_run_as_failed(monkeypatch):
    import sys
    from types import SimpleNamespace

    from dpo.training.integrations import finish_wandb

    finished = {}
    fake = SimpleNamespace(run=SimpleNamespace(summary={}), finish=lambda exit_code=0: finished.update(code=exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    summary = {"stop_reason": "non_finite", "best_step": 2, "best_metric": {"name": "eval_loss", "value": 0.6}}
    finish_wandb(summary)  # no `overfitting` block in a diverged run's summary
    assert finished == {"code": 1} and fake.run.summary["stop_reason"] == "non_finite"
    assert fake.run.summary["overfitting_onset_step"] is None


def test_the_wandb_summary_carries_the_headline_numbers_of_the_best_step(monkeypatch):
    import sys
    from types import SimpleNamespace

    from dpo.training.integrations import finish_wandb

    fake = SimpleNamespace(run=SimpleNamespace(summary={}), finish=lambda exit_code=0: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    at_best = {"eval_loss": 0.61, "eval_rewards/margins": 0.4, "eval_rewards/accuracies": 0.75,
               "eval_logps/accuracies": 0.5, "eval_entropy": 3.2, "eval_step": 4}  # fmt: skip
    summary = {
        "stop_reason": "completed",
        "best_step": 4,
        "best_metric": {"name": "eval_rewards/accuracies", "value": 0.75},
        "best_metrics": at_best,
        "overfitting": {"onset_step": None, "warnings": []},
    }
    finish_wandb(summary)
    best = {k: v for k, v in fake.run.summary.items() if k.startswith("best/")}
    assert best == {
        "best/eval_loss": 0.61,
        "best/eval_rewards/margins": 0.4,
        "best/eval_rewards/accuracies": 0.75,
        "best/eval_logps/accuracies": 0.5,
    }
