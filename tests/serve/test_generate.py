"""dpo generate: the trained model's answers next to the reference's, prompts formatted as in training; the
held-out answers written at the end of training (samples.json) and shown in the report."""

from __future__ import annotations

import json

import pytest

from dpo.errors import UserError
from dpo.serve.generate import GenerateOptions, as_trained, generate_for_run, read_prompts
from dpo.training.samples import reference_words
from tests.conftest import run_dpo

OPTIONS = GenerateOptions(max_new_tokens=8)


def _direct(run_dir, tiny_model_dir, prompts: list, max_new_tokens: int) -> list[tuple[str, str]]:
    """Greedy answers computed here with plain transformers + peft, one prompt at a time (no padding)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "final").eval()
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        with torch.no_grad():
            trained = model.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1] :]
            with model.disable_adapter():
                reference = model.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1] :]
        out.append(tuple(tokenizer.decode(t, skip_special_tokens=True) for t in (trained, reference)))
    return out


def test_answers_equal_plain_transformers_greedy_and_repeat(finished_run, tiny_model_dir, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {a}?"}]} for a in (3, 14, 27)]
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = generate_for_run(finished_run, file=file, n=2, options=OPTIONS)
    assert [g["prompt"] for g in got] == ["What is 3 + 3?", "What is 14 + 14?"]  # --n 2: the first two
    expected = _direct(finished_run, tiny_model_dir, [r["prompt"] for r in rows[:2]], 8)
    assert [(g["trained"], g["reference"]) for g in got] == expected
    assert any(t != r for t, r in expected)  # trained and reference answer differently on some prompt
    assert generate_for_run(finished_run, file=file, n=2, options=OPTIONS) == got  # deterministic


def test_plain_prompt_becomes_a_user_message_in_a_chat_run(finished_run, tiny_model_dir):
    assert json.loads((finished_run / "data_card.json").read_text())["format"] == "conversational"
    got = generate_for_run(finished_run, prompt="What is 3 + 3?", options=OPTIONS)
    expected = _direct(finished_run, tiny_model_dir, [[{"role": "user", "content": "What is 3 + 3?"}]], 8)
    assert [(g["trained"], g["reference"]) for g in got] == expected
    assert as_trained("hi", conversational=False) == "hi"  # a run on plain-text data: the text as it is


def test_bad_generate_calls(finished_run, tmp_path):
    with pytest.raises(UserError, match="one of --prompt TEXT or --file JSONL"):
        generate_for_run(finished_run)
    with pytest.raises(UserError, match="--n: takes the first N prompts of --file"):
        generate_for_run(finished_run, prompt="hi", n=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: row 2: needs a 'prompt'"):
        read_prompts(bad, None)
    with pytest.raises(UserError, match="--prompt: is empty"):
        generate_for_run(finished_run, prompt=" ")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "ok"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.jsonl: row 2: not UTF-8 text"):
        read_prompts(latin1, None)
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"prompt": "ok"}\n{"prompt": "cut o')
    with pytest.raises(UserError, match=r"cut.jsonl: row 2: last line is cut off"):
        read_prompts(cut, None)
    with pytest.raises(UserError, match="no final/"):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "recipe.yaml").write_text("name: x\n")
        generate_for_run(tmp_path / "run", prompt="hi")


@pytest.mark.slow
def test_cli_generate_prints_both_answers_and_exits_2_on_bad_input(finished_run, tmp_path):
    proc = run_dpo("generate", finished_run, "--prompt", "What is 1 + 2?", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["prompt"] == "What is 1 + 2?" and set(row) == {"prompt", "trained", "reference"}
    proc = run_dpo("generate", finished_run, "--file", tmp_path / "none.jsonl")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'none.jsonl'}: no such file"


def test_training_writes_held_out_answers_and_the_report_shows_them(finished_run):
    samples = json.loads((finished_run / "samples.json").read_text())
    assert len(samples["samples"]) == 2  # logging.samples=2
    assert set(samples["samples"][0]) == {"prompt", "trained", "reference"}
    # the answers are those of the weights in final/, greedy, as dpo generate gives them
    again = generate_for_run(
        finished_run, prompt=samples["samples"][0]["prompt"], options=GenerateOptions(max_new_tokens=64)
    )
    assert again[0]["trained"] == samples["samples"][0]["trained"]
    assert again[0]["reference"] == samples["samples"][0]["reference"]
    report = (finished_run / "report.html").read_text()
    assert "Answers on held-out prompts" in report
    from html import escape

    assert escape(samples["samples"][1]["prompt"]) in report


def test_samples_name_the_model_that_answered_as_the_reference():
    """LoRA: the base under the disabled adapter; full fine-tuning: TRL's reference copy, which under TR-DPO
    (regularizers.sync_ref) has moved toward the policy and is no longer the base model; with precomputed
    reference log-probs there is no copy and the base model is loaded again."""
    from types import SimpleNamespace

    lora = SimpleNamespace(disable_adapter=lambda: None)
    full = SimpleNamespace()
    plain, synced = (SimpleNamespace(ref_model=object(), args=SimpleNamespace(sync_ref_model=s)) for s in (False, True))
    assert reference_words(lora, plain) == "the base model (the trained model with its adapter disabled)"
    assert reference_words(full, plain) == "the base model (TRL's reference copy)"
    assert reference_words(full, synced) == (
        "TR-DPO's synced reference as the last step left it (regularizers.sync_ref moved it toward the policy), "
        "not the base model"
    )
    assert reference_words(full, SimpleNamespace(ref_model=None)) == "the base model (loaded again)"


@pytest.mark.slow
def test_generate_and_eval_whose_base_model_moved_name_the_runs_recipe_and_key(finished_run, tmp_path):
    from dpo.analysis.evaluate import EvalOptions, evaluate_run
    from tests.serve.test_export import moved_base, moved_base_error

    run_dir, moved = moved_base(finished_run, tmp_path)
    evaluated = (run_dir / "eval.json").is_file()
    proc = run_dpo("generate", run_dir, "--prompt", "What is 1 + 2?")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {moved_base_error(run_dir, moved)}"]
    with pytest.raises(UserError) as raised:
        evaluate_run(run_dir, EvalOptions(samples=0, progress=False))
    assert str(raised.value) == moved_base_error(run_dir, moved)
    assert (run_dir / "eval.json").is_file() == evaluated  # nothing written
