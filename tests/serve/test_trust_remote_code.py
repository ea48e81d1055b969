"""A run whose recipe sets model.trust_remote_code: its tokenizer in final/ may come with code of its own (an `auto_map`
and a module file beside it). `dpo export --merge`, `dpo generate` and `dpo eval` load it with the recipe's flag, as
training did: without it transformers asks `Do you wish to run the custom code? [y/N]` on a terminal, or fails.

The run is the shared tiny run (tests/serve/conftest.py), copied, with its tokenizer saved again as a subclass in a
module of its own and the recipe's flag set."""

from __future__ import annotations

import shutil
import sys

import pytest
from transformers import AutoTokenizer

from dpo.analysis.evaluate import EvalOptions, evaluate_run
from dpo.serve.export import export_run
from dpo.serve.generate import GenerateOptions, generate_for_run

MODULE = "tokenization_dpo_custom"
CUSTOM = """from transformers import PreTrainedTokenizerFast


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture(scope="module")
def custom_code_run(finished_run, tmp_path_factory):
    import importlib.util

    root = tmp_path_factory.mktemp("remote-code")
    source = root / f"{MODULE}.py"
    source.write_text(CUSTOM)
    spec = importlib.util.spec_from_file_location(MODULE, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_dir = root / "run"
    shutil.copytree(finished_run, run_dir)
    final = run_dir / "final"
    saved = AutoTokenizer.from_pretrained(final)
    custom = module.CustomTokenizer(
        tokenizer_object=saved.backend_tokenizer, pad_token="<|pad|>", unk_token="<|unk|>", eos_token="<|im_end|>"
    )
    custom.chat_template = saved.chat_template
    custom.register_for_auto_class("AutoTokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (final / name).unlink(missing_ok=True)
    sys.modules[MODULE] = module  # where save_pretrained finds the module's file
    try:
        custom.save_pretrained(final)  # writes the auto_map and copies the module file beside it
    finally:
        del sys.modules[MODULE]
    assert (final / f"{MODULE}.py").is_file()
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "trust_remote_code: false" in recipe
    (run_dir / "recipe.yaml").write_text(recipe.replace("trust_remote_code: false", "trust_remote_code: true"))
    return run_dir


def test_export_merge_loads_the_tokenizer_with_the_recipes_trust_remote_code(custom_code_run, tmp_path):
    """The regression: the merge loaded final/'s tokenizer without trust_remote_code (a prompt on a terminal, else a
    traceback)."""
    out = tmp_path / "merged"
    assert export_run(custom_code_run, out, merge=True)["weights"] == "merged"
    assert type(AutoTokenizer.from_pretrained(out, trust_remote_code=True)).__name__ == "CustomTokenizer"


def test_generate_loads_the_tokenizer_with_the_recipes_trust_remote_code(custom_code_run, finished_run):
    options = GenerateOptions(max_new_tokens=4)
    rows = generate_for_run(custom_code_run, prompt="What is 1 + 2?", options=options)
    assert rows == generate_for_run(finished_run, prompt="What is 1 + 2?", options=options)  # the same tokenizer


def test_eval_loads_the_tokenizer_with_the_recipes_trust_remote_code(custom_code_run):
    result = evaluate_run(custom_code_run, EvalOptions(samples=0, progress=False))
    assert result["preference"]
