"""dpo eval: every number in eval.json recomputed here, independently, from the tiny model and its adapter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from dpo.analysis.evaluate import EvalOptions, evaluate_run, pair_ids
from dpo.data.gold import GOLD_REWARDS
from dpo.training.execute import execute
from tests.conftest import ARITHMETIC, REPO, read_jsonl

PAIRS = ("chosen", "rejected")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA run of the tiny model, 4 steps at a high learning rate so the policy moves away from the reference."""
    from tests.conftest import tiny_recipe_dict, write_recipe

    root = tmp_path_factory.mktemp("eval-run")
    training = {"learning_rate": 3e-2, "max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 4}
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe_dict(tiny_model_dir, 16, training))
    execute(recipe, output_dir=root / "run")
    return root / "run"


def _models(run_dir, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run_dir / "final"))
    return policy.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _logp(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | prompt), one sequence at a time, no padding."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    return sum(float(logps[len(prompt_ids) + i - 1, tok]) for i, tok in enumerate(answer_ids))


def _both(model, prompt_ids, answer_ids) -> tuple[float, float]:
    policy = _logp(model, prompt_ids, answer_ids)
    with model.disable_adapter():
        return policy, _logp(model, prompt_ids, answer_ids)


def test_preference_numbers_equal_a_direct_computation(run_dir, tiny_model_dir):
    result = evaluate_run(run_dir, EvalOptions(samples=0, batch_size=3, progress=False))  # 3: uneven padded batches
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads(json.dumps(result))
    model, tok = _models(run_dir, tiny_model_dir)
    pairs = read_jsonl(ARITHMETIC / "eval.jsonl")[:8]  # the run's held-out split: data.eval, first 8 pairs
    rows = []
    for pair in pairs:
        prompt = tok.apply_chat_template(pair["prompt"], add_generation_prompt=True)["input_ids"]
        full = {k: tok.apply_chat_template(pair["prompt"] + pair[k])["input_ids"] for k in ("chosen", "rejected")}
        assert all(ids[: len(prompt)] == prompt for ids in full.values())
        rows.append({k: _both(model, prompt, ids[len(prompt) :]) for k, ids in full.items()})
    pref = result["preference"]
    for index, which in enumerate(("policy", "reference")):
        chosen = [r["chosen"][index] for r in rows]
        rejected = [r["rejected"][index] for r in rows]
        assert pref[which]["accuracy"] == sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 8
        assert pref[which]["mean_logp_chosen"] == pytest.approx(sum(chosen) / 8, abs=1e-4)
        assert pref[which]["mean_logp_rejected"] == pytest.approx(sum(rejected) / 8, abs=1e-4)
    margins = [0.1 * ((r["chosen"][0] - r["chosen"][1]) - (r["rejected"][0] - r["rejected"][1])) for r in rows]
    assert pref["implicit_reward"]["mean_margin"] == pytest.approx(sum(margins) / 8, abs=1e-5)
    assert pref["implicit_reward"]["accuracy"] == sum(m > 0 for m in margins) / 8
    assert pref["implicit_reward"]["kind"] == "log_ratio"  # a loss with a reference: the DPO log-ratio
    assert pref["policy"]["mean_logp_chosen"] != pytest.approx(pref["reference"]["mean_logp_chosen"], abs=1e-3)
    # and the same held-out numbers TRL logged at the last evaluation of the run
    final = json.loads((run_dir / "summary.json").read_text())["final_metrics"]
    assert pref["implicit_reward"]["accuracy"] == final["eval_rewards/accuracies"]
    assert pref["implicit_reward"]["mean_margin"] == pytest.approx(final["eval_rewards/margins"], abs=1e-5)
    assert result["generation"] is None and result["generation_skipped"] == "--samples 0"


def _digits(prompt: str, answer: str) -> float:
    """A gold reward the random tiny model sometimes earns: the answer contains a digit."""
    return float(any(c.isdigit() for c in answer))


def test_generation_numbers_equal_a_direct_computation(run_dir, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(GOLD_REWARDS, "digits", _digits)
    data = tmp_path / "digits" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(row) + "\n" for row in read_jsonl(ARITHMETIC / "eval.jsonl")[:10]))
    (data.parent / "card.json").write_text(json.dumps({"gold_reward": "digits"}))
    options = EvalOptions(data=data, samples=6, max_new_tokens=12, batch_size=4, seed=3, progress=False)
    result = evaluate_run(run_dir, options)
    gen, samples = result["generation"], result["samples"]
    assert result["data"]["pairs"] == 10 and gen["prompts"] == 6 and len(samples) == 6
    prompts = [row["prompt"][0]["content"] for row in read_jsonl(data)[:6]]  # the first 6 distinct prompts
    assert [s["prompt"] for s in samples] == prompts
    policy_rewards = [_digits(p, s["policy_answer"]) for p, s in zip(prompts, samples, strict=True)]
    reference_rewards = [_digits(p, s["reference_answer"]) for p, s in zip(prompts, samples, strict=True)]
    assert [s["policy_reward"] for s in samples] == policy_rewards
    assert gen["policy_mean_reward"] == sum(policy_rewards) / 6
    assert gen["reference_mean_reward"] == sum(reference_rewards) / 6
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy_rewards, reference_rewards, strict=True)]
    assert gen["win_rate"] == sum(wins) / 6
    assert 0 < sum(policy_rewards + reference_rewards) < 12  # the reward is not constant on these answers

    model, tok = _models(run_dir, tiny_model_dir)
    diffs = []
    for row, s in zip(read_jsonl(data)[:6], samples, strict=True):
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
        ids = s["kl_sample_ids"]
        assert 1 <= len(ids) <= 12 and (tok.eos_token_id not in ids[:-1])  # stops at the first end-of-sequence
        assert tok.decode(ids, skip_special_tokens=True) == s["policy_answer"]  # sampled answers are the KL samples
        policy, reference = _both(model, prompt, ids)
        assert s["kl_logp_policy"] == pytest.approx(policy, abs=1e-4)
        assert s["kl_logp_reference"] == pytest.approx(reference, abs=1e-4)
        diffs.append(policy - reference)
    assert gen["kl"] == pytest.approx(sum(diffs) / 6, abs=1e-4)
    assert "kl" in result["definitions"]["generation.kl"]

    again = evaluate_run(run_dir, options)  # seeded: the same answers again
    assert again["samples"] == samples


def test_decoding_ignores_the_models_own_generation_config(run_dir, tiny_model_dir):
    """A generation_config.json with a repetition penalty and top-p (as Qwen2.5-Instruct ships) must not change our
    greedy answers: they equal an argmax loop computed here, and the model keeps its config afterwards."""
    from dpo.analysis.evaluate import generate

    model, tok = _models(run_dir, tiny_model_dir)
    model.get_base_model().generation_config.update(no_repeat_ngram_size=1, repetition_penalty=1.3, top_p=0.9)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)["input_ids"]
               for q in ("What is 3 + 3?", "Sort 2 1")]  # fmt: skip
    expected = []
    for prompt in prompts:
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(10):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
                if ids[-1] == tok.eos_token_id:
                    break
        expected.append(ids[len(prompt) :])
    assert any(len(set(answer)) < len(answer) for answer in expected)  # a token repeats: the n-gram rule would bite
    options = EvalOptions(max_new_tokens=10, batch_size=2, progress=False)
    assert generate(model, tok, prompts, options, decoding="greedy", seed=0) == expected
    assert model.get_base_model().generation_config.no_repeat_ngram_size == 1


@pytest.mark.slow
def test_cli_eval_on_the_shipped_gold_reward_and_its_errors(run_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "eval", str(run_dir), "--samples", "2", "--max-new-tokens", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "; implicit reward (log_ratio) accuracy " in proc.stdout  # which reward, on the console line
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["generation"]["gold_reward"] == "arithmetic" and result["generation"]["prompts"] == 2
    assert "Evaluation (eval.json)" in (run_dir / "report.html").read_text()  # the dashboard shows it

    not_a_run = subprocess.run(
        [sys.executable, "-m", "dpo", "eval", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert not_a_run.returncode == 2 and not_a_run.stderr == f"error: {tmp_path}: not a run directory: no recipe.yaml\n"
    bad_card = tmp_path / "bad"
    bad_card.mkdir()
    shutil.copy(ARITHMETIC / "eval.jsonl", bad_card / "pairs.jsonl")
    (bad_card / "card.json").write_text(json.dumps({"gold_reward": "arithmetc"}))
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "eval", str(run_dir), "--data", str(bad_card / "pairs.jsonl")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bad_card / 'card.json'}: gold_reward: unknown reward 'arithmetc'")
    assert json.loads((run_dir / "eval.json").read_text()) == result  # nothing already written is lost


def _plain_text(rows: list[dict]) -> list[dict]:
    """The same pairs as plain text: the prompt's message, a newline, and each answer's message."""
    return [{"prompt": r["prompt"][-1]["content"] + "\n", **{k: r[k][-1]["content"] for k in PAIRS}} for r in rows]


@pytest.mark.parametrize("data_format", ["chat", "plain text"])
def test_a_reference_free_run_is_scored_by_the_per_token_reward_it_trained(tmp_path, tiny_model_dir, data_format):
    """SimPO trains on beta * log pi / |y| and logs that as rewards/*: eval.json recomputes the same reward (not the
    DPO log-ratio against the base model), with the answers tokenized as TRL does (plain text: the EOS appended), so
    its numbers equal the run's last held-out evaluation and a direct computation."""
    from tests.conftest import tiny_recipe_dict, write_recipe

    training = {"learning_rate": 3e-2, "max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 4}
    recipe = tiny_recipe_dict(tiny_model_dir, 16, training)
    recipe["loss"] = {"type": "simpo", "beta": 2.0, "simpo_gamma": 0.5}
    pairs = read_jsonl(ARITHMETIC / "eval.jsonl")[:8]
    if data_format == "plain text":
        pairs = _plain_text(pairs)
        for split, rows in (("train", _plain_text(read_jsonl(ARITHMETIC / "train.jsonl")[:16])), ("eval", pairs)):
            (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
            recipe["data"][split] = str(tmp_path / f"{split}.jsonl")
    run_dir = tmp_path / "run"
    execute(write_recipe(tmp_path / "simpo.yaml", recipe), output_dir=run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["implicit_reward"] == "per_token"

    result = evaluate_run(run_dir, EvalOptions(samples=0, batch_size=3, progress=False))
    reward = result["preference"]["implicit_reward"]
    assert reward["kind"] == "per_token" and reward["beta"] == 2.0
    assert result["definitions"]["preference.implicit_reward.kind"].startswith("per_token: beta * log pi(y|x) / |y|")
    model, tok = _models(run_dir, tiny_model_dir)
    margins, log_ratio_margins = [], []
    for pair in pairs:
        if data_format == "chat":
            prompt = tok.apply_chat_template(pair["prompt"], add_generation_prompt=True)["input_ids"]
            full = {k: tok.apply_chat_template(pair["prompt"] + pair[k])["input_ids"] for k in PAIRS}
        else:
            prompt = tok(text=pair["prompt"])["input_ids"]
            full = {k: tok(text=pair["prompt"] + pair[k] + tok.eos_token)["input_ids"] for k in PAIRS}
            assert all(ids[-1] == tok.eos_token_id for ids in full.values())
            # the noise benchmark scores plain text without it, as its recorded runs were scored
            assert pair_ids(tok, pair, plain_text_eos=False)[1] == full["chosen"][len(prompt) : -1]
        assert all(ids[: len(prompt)] == prompt for ids in full.values())
        answers = {k: ids[len(prompt) :] for k, ids in full.items()}
        (pc, rc), (pr, rr) = (_both(model, prompt, answers[k]) for k in PAIRS)
        margins.append(2.0 * (pc / len(answers["chosen"]) - pr / len(answers["rejected"])))
        log_ratio_margins.append(2.0 * ((pc - rc) - (pr - rr)))
    # relative: 4 steps of the tiny model move a margin by about 0.005, and leaving out the EOS shifts it by 2%
    assert reward["mean_margin"] == pytest.approx(sum(margins) / 8, rel=1e-3)
    assert reward["accuracy"] == sum(m > 0 for m in margins) / 8
    assert reward["mean_margin"] != pytest.approx(sum(log_ratio_margins) / 8, rel=0.1)  # not the DPO reward
    final = summary["final_metrics"]
    assert reward["accuracy"] == final["eval_rewards/accuracies"]
    assert reward["mean_margin"] == pytest.approx(final["eval_rewards/margins"], rel=1e-3)


def test_a_run_without_the_reward_named_is_told_by_its_logged_metrics(run_dir, tmp_path):
    """summary.json written before it named its reward: every loss logged rewards/accuracies, a loss with a reference
    also logratios/* and the KL; a summary that cannot tell, or names a reward no one knows, is a one-line error."""
    from dpo.analysis.evaluate import implicit_reward_kind
    from dpo.errors import UserError

    older = tmp_path / "older"
    older.mkdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.pop("implicit_reward") == "log_ratio"
    (older / "summary.json").write_text(json.dumps(summary))
    assert implicit_reward_kind(older) == "log_ratio"
    final = summary["final_metrics"]
    without = {k: v for k, v in final.items() if "logratios/" not in k and "kl" not in k}
    (older / "summary.json").write_text(json.dumps({**summary, "final_metrics": without, "initial_metrics": {}}))
    assert implicit_reward_kind(older) == "per_token"
    never_logged = {"stop_reason": "completed", "final_metrics": {"eval_step": None}, "initial_metrics": {}}
    expected = {
        "no implicit_reward and no logged rewards/accuracies: cannot tell which implicit reward the run trained":
            never_logged,
        "implicit_reward: unknown 'log_odds' (valid: log_ratio, per_token)": {**summary, "implicit_reward": "log_odds"},
    }  # fmt: skip
    for message, cannot_tell in expected.items():
        (older / "summary.json").write_text(json.dumps(cannot_tell))
        with pytest.raises(UserError) as error:
            implicit_reward_kind(older)
        assert str(error.value) == f"{older / 'summary.json'}: {message}"  # one line, naming the file


_ABSENT = object()  # the summary has no reward_beta (written before the key)


@pytest.mark.parametrize("schedule", [{"type": "linear", "end": 0.5}, {"type": "adaptive"}])
def test_a_scheduled_beta_run_is_scored_with_the_beta_of_its_final_weights(tmp_path, tiny_model_dir, schedule):
    """With a beta schedule (0.1 to 0.5) or the adaptive beta the last evaluation scales the reward by a beta that is
    not loss.beta: summary.json names it (reward_beta) and eval.json's margins equal the run's last logged
    eval_rewards/margins; a summary written before the key falls back to loss.beta (margins scaled, accuracy the
    same), a value that is no positive number is a one-line error."""
    from dpo.errors import UserError
    from tests.conftest import tiny_recipe_dict, write_recipe

    training = {"learning_rate": 3e-2, "max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 4}
    recipe = tiny_recipe_dict(tiny_model_dir, 16, training)
    recipe["loss"] = {"type": "sigmoid", "beta": 0.1, "beta_schedule": schedule}
    run_dir = tmp_path / "run"
    execute(write_recipe(tmp_path / "scheduled.yaml", recipe), output_dir=run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final_metrics"]
    assert summary["final_weights"] == "last" and final["eval_step"] == 4
    beta = summary["reward_beta"]
    assert beta == final["eval_beta"] and beta != pytest.approx(0.1)
    if schedule["type"] == "linear":
        assert beta == pytest.approx(0.5)

    options = EvalOptions(samples=0, batch_size=3, progress=False)
    reward = evaluate_run(run_dir, options)["preference"]["implicit_reward"]
    assert reward["beta"] == beta
    assert reward["mean_margin"] == pytest.approx(final["eval_rewards/margins"], rel=1e-3)
    assert reward["accuracy"] == final["eval_rewards/accuracies"]
    definitions = json.loads((run_dir / "eval.json").read_text())["definitions"]
    assert definitions["preference.implicit_reward.mean_margin"].endswith(
        f"beta: summary.json's reward_beta = {beta}, the beta of the run's final weights"
    )

    for value in (_ABSENT, 0.0, -0.5, None, True, "0.5", float("inf")):
        older = {k: v for k, v in summary.items() if k != "reward_beta"}
        if value is not _ABSENT:
            older["reward_beta"] = value
        (run_dir / "summary.json").write_text(json.dumps(older))
        if value is _ABSENT:
            before = evaluate_run(run_dir, options)["preference"]["implicit_reward"]
            assert before["beta"] == 0.1
            assert before["mean_margin"] == pytest.approx(reward["mean_margin"] * 0.1 / beta, rel=1e-5)
            assert before["accuracy"] == reward["accuracy"]
            continue
        with pytest.raises(UserError) as error:
            evaluate_run(run_dir, options)
        message = f"reward_beta: must be a positive number, got {value!r}"
        assert str(error.value) == f"{run_dir / 'summary.json'}: {message}"


def _copy_run(run_dir, to, **data) -> dict:
    """A copy of the run directory whose recipe.yaml's data keys are replaced by `data`; returns the recipe."""
    import yaml

    shutil.copytree(run_dir, to)
    recipe = yaml.safe_load((to / "recipe.yaml").read_text())
    recipe["data"].update(data)
    (to / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def test_held_out_pairs_that_changed_since_the_run_are_an_error_naming_the_data_card_and_the_file(run_dir, tmp_path):
    """eval recomputes the held-out split from the data files recipe.yaml names: the same pairs (the file moved)
    are evaluated; an edited file gives other pairs, which the data card's content hash catches (exit 2, one
    line, nothing written); a data card without the hash (an older run) is not checked."""
    from tests.conftest import invoke_dpo

    eval_file = tmp_path / "eval.jsonl"
    shutil.copy(ARITHMETIC / "eval.jsonl", eval_file)
    copy = tmp_path / "run"
    _copy_run(run_dir, copy, eval=str(eval_file))
    (copy / "eval.json").unlink(missing_ok=True)
    options = EvalOptions(samples=0, batch_size=8, progress=False)
    recorded = json.loads((copy / "data_card.json").read_text())["content_hash"]["eval"]
    assert evaluate_run(copy, options)["data"]["content_hash"] == recorded  # the same pairs, from another path

    rows = read_jsonl(eval_file)
    rows[0]["chosen"], rows[0]["rejected"] = rows[0]["rejected"], rows[0]["chosen"]  # one label flipped by hand
    eval_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (copy / "eval.json").unlink()
    proc = invoke_dpo("eval", copy, "--samples", "0")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"error: {copy / 'data_card.json'}: the held-out pairs recomputed from {eval_file} are not those the run held "
        f"out (content_hash.eval {recorded[:12]}..., now {proc.stderr.split('now ')[1][:12]}...): the data files, or "
        "how this version of dpo prepares them, changed since the run; evaluate the pairs you mean with --data FILE\n"
    )
    assert not (copy / "eval.json").exists()

    card = json.loads((copy / "data_card.json").read_text())
    del card["content_hash"]  # written before data cards recorded it
    (copy / "data_card.json").write_text(json.dumps(card))
    assert evaluate_run(copy, options)["data"]["content_hash"] != recorded


@pytest.mark.parametrize("foreign_card", [None, "sorting", "arithmetic"])
def test_held_out_pairs_from_mixed_sources_are_scored_by_a_gold_reward_only_when_it_fits_every_prompt(
    run_dir, tmp_path, foreign_card
):
    """docs/data.md's mix: the arithmetic pairs plus another file. The arithmetic reward raises on any other prompt,
    so it scored the foreign prompts only to fail after all the scoring (a traceback, no eval.json): now the generation
    is skipped, with the reason in eval.json, when a source's card names no reward or another one, or when the named
    reward cannot read a prompt; the preference numbers are still written."""
    foreign = tmp_path / "colours" / "pairs.jsonl"
    foreign.parent.mkdir()
    rows = [{"prompt": [{"role": "user", "content": f"Name colour number {i}."}],
             "chosen": [{"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "assistant", "content": "Seven."}]} for i in range(4)]  # fmt: skip
    foreign.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if foreign_card:
        (foreign.parent / "card.json").write_text(json.dumps({"gold_reward": foreign_card}))
    copy = tmp_path / "run"
    _copy_run(run_dir, copy, eval=[{"path": str(ARITHMETIC / "eval.jsonl"), "count": 4}, str(foreign)])
    card = json.loads((copy / "data_card.json").read_text())
    del card["content_hash"]  # the held-out pairs are others now: not the point here
    (copy / "data_card.json").write_text(json.dumps(card))

    result = evaluate_run(copy, EvalOptions(samples=8, max_new_tokens=2, batch_size=8, progress=False))
    assert result["data"]["pairs"] == 8 and result["preference"]["policy"]["accuracy"] is not None
    assert result["generation"] is None and "samples" not in result
    expected = {
        None: f"no card.json next to the data ({foreign.parent / 'card.json'}) names a gold reward (the held-out pairs "
        "come from 2 sources: one reward must score them all)",
        "sorting": f"the held-out sources' cards name different gold rewards ({ARITHMETIC / 'card.json'}: arithmetic, "
        f"{foreign.parent / 'card.json'}: sorting): none scores every prompt",
        "arithmetic": "the gold reward 'arithmetic' cannot score the held-out prompt 'Name colour number ",
    }[foreign_card]
    assert result["generation_skipped"].startswith(expected)
    assert json.loads((copy / "eval.json").read_text())["generation_skipped"] == result["generation_skipped"]


def test_a_gold_reward_that_raises_on_a_generated_answer_skips_the_generation_not_the_eval_json(
    run_dir, tmp_path, monkeypatch
):
    def picky(prompt: str, answer: str) -> float:  # reads the probes ("" and "0"), raises on anything generated
        if answer not in ("", "0"):
            raise ValueError(f"cannot read {answer!r}")
        return 0.0

    monkeypatch.setitem(GOLD_REWARDS, "picky", picky)
    data = tmp_path / "picky" / "pairs.jsonl"
    data.parent.mkdir()
    shutil.copy(ARITHMETIC / "eval.jsonl", data)
    (data.parent / "card.json").write_text(json.dumps({"gold_reward": "picky"}))
    options = EvalOptions(data=data, samples=2, max_new_tokens=3, batch_size=2, progress=False)
    result = evaluate_run(run_dir, options)
    assert result["generation"] is None and result["preference"]["policy"]["accuracy"] is not None
    assert result["generation_skipped"].startswith("the gold reward 'picky' cannot score the held-out prompt ")
    assert "cannot read" in json.loads((run_dir / "eval.json").read_text())["generation_skipped"]


def test_an_ld_dpo_run_is_scored_with_the_weighting_its_rewards_were_logged_with(tmp_path, tiny_model_dir):
    """regularizers.ld_alpha (recipes/ld-dpo.yaml): the trainer's rewards read the shared prefix of a pair's answers in
    full and the longer answer's tail ld_alpha times, for policy and reference. eval.json's implicit reward does the
    same (dpo/logps.py, the trainer's own reduction), so it equals the run's last held-out evaluation; the plain
    log-prob margins, which the policy's and the reference's preference keep, give another number."""
    from tests.conftest import tiny_recipe_dict, write_recipe

    training = {"learning_rate": 3e-2, "max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 4}
    recipe = tiny_recipe_dict(tiny_model_dir, 16, training)
    recipe["loss"] = {"type": "sigmoid", "beta": 1.0}
    recipe["regularizers"] = {"ld_alpha": 0.2}
    pairs = read_jsonl(ARITHMETIC / "eval.jsonl")[:8]
    assert sum(len(p["chosen"][0]["content"]) != len(p["rejected"][0]["content"]) for p in pairs) >= 2  # a tail
    run_dir = tmp_path / "run"
    execute(write_recipe(tmp_path / "ld.yaml", recipe), output_dir=run_dir)
    final = json.loads((run_dir / "summary.json").read_text())["final_metrics"]

    result = evaluate_run(run_dir, EvalOptions(samples=0, batch_size=3, progress=False))
    pref = result["preference"]
    reward = pref["implicit_reward"]
    assert reward["mean_margin"] == pytest.approx(final["eval_rewards/margins"], rel=1e-3)
    assert reward["accuracy"] == final["eval_rewards/accuracies"]
    plain = pref["policy"]["mean_logp_margin"] - pref["reference"]["mean_logp_margin"]  # beta 1: the unweighted one
    assert abs(plain - reward["mean_margin"]) > 100 * abs(reward["mean_margin"] - final["eval_rewards/margins"])
    assert "regularizers.ld_alpha = 0.2" in result["definitions"]["preference.implicit_reward.kind"]


def test_a_tr_dpo_run_says_its_reward_is_against_the_base_model_not_the_synced_reference(tmp_path, tiny_model_dir):
    """regularizers.sync_ref (recipes/tr-dpo.yaml) moves the trainer's reference toward the policy, and the run's
    eval_rewards/* are measured against it; final/ holds the policy only, so dpo eval's reference is the base model:
    its margin differs from the logged one, and eval.json's definitions say so."""
    from tests.conftest import tiny_recipe_dict, write_recipe

    training = {"learning_rate": 1e-2, "max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 4}
    recipe = tiny_recipe_dict(tiny_model_dir, 16, training)
    recipe["peft"] = None
    recipe["loss"] = {"type": "sigmoid", "beta": 1.0}
    recipe["regularizers"] = {"sync_ref": {"every": 2, "mixup": 0.5}}
    run_dir = tmp_path / "run"
    execute(write_recipe(tmp_path / "tr.yaml", recipe), output_dir=run_dir)
    final = json.loads((run_dir / "summary.json").read_text())["final_metrics"]

    result = evaluate_run(run_dir, EvalOptions(samples=0, batch_size=8, progress=False))
    assert result["preference"]["implicit_reward"]["mean_margin"] != pytest.approx(
        final["eval_rewards/margins"], rel=1e-2
    )
    reference = result["definitions"]["reference"]
    assert "TR-DPO run (regularizers.sync_ref)" in reference and "will not match" in reference


def test_a_data_card_that_is_not_an_object_is_an_error_not_a_skipped_check(run_dir, tmp_path):
    """A broken data card once read as {}: the length check and the held-out hash were skipped, unsaid."""
    from dpo.errors import UserError

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "data_card.json").write_text("[1]")
    with pytest.raises(UserError) as caught:
        evaluate_run(copy, EvalOptions(samples=0, batch_size=8, progress=False))
    assert str(caught.value) == f"{copy / 'data_card.json'}: not a JSON object (it holds an array)"


@pytest.mark.parametrize(
    ("card_bytes", "message"),
    [(b'{"gold_reward": ["arithmetic"]}', "gold_reward: unknown reward ['arithmetic']"),
     (b'{"gold_reward": "\xe9"}', "not valid JSON")],
)  # fmt: skip
def test_a_card_json_with_a_gold_reward_of_another_kind_or_other_bytes_is_one_error_naming_it(
    tmp_path, card_bytes, message
):
    from dpo.analysis.evaluate import gold_reward_name
    from dpo.errors import UserError

    (tmp_path / "card.json").write_bytes(card_bytes)  # a list where a name belongs; Latin-1, not UTF-8
    with pytest.raises(UserError) as caught:
        gold_reward_name(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'card.json'}") and message in str(caught.value)


def test_an_answer_after_an_empty_prompt_is_scored_from_its_second_token_as_trl_does():
    """A bigram model: the logits at a position depend on its token only, so each token's log-prob is known.
    With an empty prompt nothing predicts the first answer token (the slice once began at -1, the last column)."""
    from types import SimpleNamespace

    from dpo.analysis.evaluate import sequence_logps

    table = torch.randn(10, 10, generator=torch.Generator().manual_seed(0))

    def model(input_ids, attention_mask):
        return SimpleNamespace(logits=table[input_ids])

    def logp(prev, token):
        return torch.log_softmax(table[prev], dim=-1)[token].item()

    scores = sequence_logps(model, [[], [3]], [[5, 6, 7], [5, 6]], batch_size=2, pad_id=0)
    assert scores == pytest.approx([logp(5, 6) + logp(6, 7), logp(3, 5) + logp(5, 6)], abs=1e-5)
