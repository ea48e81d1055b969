"""Shared fixtures: a tiny random Llama with a character-level tokenizer, built here (no downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# No network at test time: the hub is off, wandb never syncs.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC = REPO / "data" / "arithmetic"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) and a character-level tokenizer with a ChatML template, saved to `path`."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", unk_token="<|unk|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=vocab["<|pad|>"],
        eos_token_id=vocab["<|im_end|>"],
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tensors as small as the loss tests' run fastest on one thread; on a busy machine several threads run
    many times slower. Restores the thread count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tiny_recipe_dict(model_dir: Path, max_train_pairs: int, training: dict) -> dict:
    """The tiny model with LoRA on the shipped arithmetic pairs (8 held-out pairs); `training` as given."""
    return {
        "name": "tiny",
        "seed": 0,
        "model": {"name_or_path": str(model_dir)},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {
            "train": str(ARITHMETIC / "train.jsonl"),
            "eval": str(ARITHMETIC / "eval.jsonl"),
            "max_train_pairs": max_train_pairs,
            "max_eval_pairs": 8,
        },
        "training": training,
        "logging": {"progress_bar": False},
    }


# 4 steps of 4 pairs, evaluating every 2 steps (and at step 0)
TINY_TRAINING = {
    "learning_rate": 1e-2,
    "max_steps": 4,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "eval_steps": 2,
}


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir) -> Path:
    """A recipe that trains the tiny model for 4 steps on the shipped arithmetic data, evaluating twice."""
    recipe = tiny_recipe_dict(tiny_model_dir, 32, TINY_TRAINING)
    recipe["loss"] = {"type": "sigmoid", "beta": 0.1}
    return write_recipe(tmp_path / "tiny.yaml", recipe)


def run_dpo(*args, cwd=REPO):
    """`python -m dpo ARGS` in a new process: the real entry point (its stream redaction and exit codes). The timeout
    turns a missed check, which would go on to train the embedded model, into a failure instead of a hang."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "dpo", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


def invoke_dpo(*args):
    """`dpo ARGS` run in this process through typer's CliRunner (a `python -m dpo` subprocess spends about 8 s
    importing torch): exit code, stdout and stderr, named as a finished subprocess names them. An exception other
    than the exit is a traceback, so it is raised here."""
    from types import SimpleNamespace

    import transformers
    from typer.testing import CliRunner

    from dpo.cli import app

    # transformers binds its log handler to the sys.stderr of the moment its logging is first set up: set it up
    # now, outside the runner, whose captured stream is closed after the call
    transformers.logging.get_logger()

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# A finished run's summary.json as the report reads it (tests/analysis): step 0 and best differ in the 4th digit
RUN_SUMMARY = {
    "stop_reason": "completed", "best_step": 4, "best_metric": {"name": "eval_loss", "mode": "min", "value": 0.692816},
    "final_weights": "last", "steps": 4, "max_steps": 4,
    "initial_metrics": {"eval_loss": 0.693147}, "best_metrics": {"eval_loss": 0.692816},
    "final_metrics": {"eval_loss": 0.692816, "eval_step": 4},
    "overfitting": {"onset_step": None, "warnings": []}, "runtime_s": 1.0,
}  # fmt: skip


def hand_written_run(folder: Path, **files) -> Path:
    """A run directory: metrics.jsonl, a summary.json and `files` ({name: JSON value}) as written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    events = [{"step": 0, "eval_loss": 0.693147}, {"step": 2, "loss": 0.69}, {"step": 4, "eval_loss": 0.692816}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    for name, value in {"summary.json": RUN_SUMMARY, **files}.items():
        (folder / name).write_text(json.dumps(value))
    return folder
