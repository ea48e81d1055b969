"""Parts of the trainer's bookkeeping checked on a bare trainer object (no model loaded): what a resumed run saves and
logs, and when the reference log-probs are computed up front; and a mixture-of-experts model: router logits where
its router loss needs them, the loss gap without that loss, trained and evaluated."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dpo.training.beta import BetaController
from dpo.training.trainer import Trainer


def bare_trainer(**attributes) -> Trainer:
    trainer = object.__new__(Trainer)
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


def test_a_checkpoint_of_a_resumed_attempt_saves_the_loss_sum_of_every_attempt():
    """transformers restarts its loss sum at each train(): a checkpoint of the second attempt saved only that
    attempt's, so after a second resume train_loss left out the first attempt's steps. Steps 1-2 summed to 1.5
    before the resume; this attempt has 0.7 drained and 0.2 not yet logged: 2.4."""
    trainer = bare_trainer(
        beta_controller=BetaController(beta0=0.1), _since_eval={}, _total_train_tokens=0, runtime_before=0.0,
        clock_start=time.time(), resumed_from=[2], _loss_sum_before=(1.5, 2), _total_loss_scalar=0.7,
        _tr_loss=torch.tensor(0.2),
    )  # fmt: skip
    assert trainer.dpo_state()["train_loss_sum"] == pytest.approx(2.4)
    trainer._loss_sum_before = None  # the first attempt
    assert trainer.dpo_state()["train_loss_sum"] == pytest.approx(0.9)


def test_under_fsdp_the_reference_is_computed_up_front_while_trls_temporary_copy_exists(monkeypatch):
    """Full fine-tuning with training.precompute_ref_log_probs: outside FSDP TRL keeps no copy and the pass runs;
    under FSDP TRL loads a copy for the pass alone and frees it after, so the pass must run then too (it was skipped
    as if the copy stayed, and the training pairs then met the moving policy as their reference). A copy that stays
    (one passed in, or TRL's without precompute) needs no pass."""
    from trl import DPOTrainer

    ran = []
    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", lambda self, dataset, name, size: ran.append(name) or 1)

    def precompute(fsdp: bool, copy: object | None, given: bool = False):
        ran.clear()
        trainer = bare_trainer(loss_plan=SimpleNamespace(needs_reference=True), model=torch.nn.Linear(1, 1),
                               ref_model=copy, is_fsdp_enabled=fsdp, _ref_model_given=given,
                               _decide_prompt_sharing=lambda: None)  # fmt: skip
        return trainer._precompute_ref_logps("pairs", "train", 8), list(ran)

    assert precompute(fsdp=False, copy=None) == (1, ["train"])
    assert precompute(fsdp=True, copy=torch.nn.Linear(1, 1)) == (1, ["train"])
    assert precompute(fsdp=False, copy=torch.nn.Linear(1, 1)) == ("pairs", [])
    assert precompute(fsdp=True, copy=torch.nn.Linear(1, 1), given=True) == ("pairs", [])


def test_train_runtime_of_a_resumed_run_covers_every_attempt(tmp_path, monkeypatch):
    """The metric table says train_runtime covers every attempt of a resumed run, as the end line of a run resumed
    into finish_from_checkpoint did; after a resumed train() it held the last attempt's time alone. Both now log the
    earlier attempts' time (runtime_before, from the checkpoint) plus this attempt's; the rates stay this attempt's."""
    from transformers import TrainerState
    from trl import DPOTrainer

    logged = []
    monkeypatch.setattr(DPOTrainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs)))
    trainer = bare_trainer(
        _evaluating=False, heldout_kl=False, model=torch.nn.Linear(1, 1), _eval_pairs={}, _since_eval=defaultdict(list),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _preference_losses=[], runtime_before=100.0,
        _loss_sum_before=(1.5, 2), state=SimpleNamespace(global_step=4),
    )  # fmt: skip
    trainer.log({"train_runtime": 20.0, "train_samples_per_second": 1.6, "train_loss": 0.5})  # a resumed train()
    assert logged[-1]["train_runtime"] == 120.0 and logged[-1]["train_samples_per_second"] == 1.6
    assert logged[-1]["train_loss"] == pytest.approx((1.5 + 0.5 * 2) / 4)

    checkpoint = tmp_path / "checkpoint-4"  # a run resumed where training had already ended
    checkpoint.mkdir()
    TrainerState(global_step=4, total_flos=7.0).save_to_json(str(checkpoint / "trainer_state.json"))
    trainer._load_from_checkpoint = lambda path: None
    output = trainer.finish_from_checkpoint(str(checkpoint))
    assert logged[-1]["train_runtime"] == 100.0 == output.metrics["train_runtime"]  # every attempt's, not twice

    trainer.runtime_before, trainer._loss_sum_before = 0.0, None  # a run never resumed: transformers' own value
    trainer.log({"train_runtime": 20.0, "train_loss": 0.5})
    assert logged[-1]["train_runtime"] == 20.0


def tiny_mixtral(tmp_path, tiny_model_dir, **settings) -> Path:
    """A 2-layer Mixtral (2 experts) with the tiny Llama's tokenizer, saved under `tmp_path`."""
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1,
                           max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **settings)  # fmt: skip
    model_dir = tmp_path / "tiny-mixtral"
    MixtralForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def mixtral_trainer(tmp_path, tiny_model_dir) -> Trainer:
    """A LoRA trainer of a tiny Mixtral whose router loss is large (coefficient 0.5) and whose config asks for router
    logits in every forward (output_router_logits true)."""
    from dpo.training.execute import build_trainer
    from dpo.training.gate import check
    from tests.conftest import TINY_TRAINING, tiny_recipe_dict, write_recipe

    model_dir = tiny_mixtral(tmp_path, tiny_model_dir, output_router_logits=True, router_aux_loss_coef=0.5)
    recipe = write_recipe(tmp_path / "moe.yaml", tiny_recipe_dict(model_dir, 8, TINY_TRAINING))
    trainer = build_trainer(check(recipe, ["training.precompute_ref_log_probs=false"], output_dir=tmp_path / "run"), [])
    assert trainer.aux_loss_enabled and not trainer.share_prompt
    return trainer


def test_a_mixture_of_experts_routes_logits_for_the_policys_training_forward_only(tmp_path, tiny_model_dir):
    """The router loss trains the policy only: as TRL, the reference's forward (here also evaluation's) asks for no
    router logits, which would be computed, with an aux loss, and thrown away. It says False: left out, a config with
    output_router_logits true would compute them anyway."""
    trainer = mixtral_trainer(tmp_path, tiny_model_dir)
    base = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
    asked, routed = [], []
    base.register_forward_pre_hook(lambda module, args, kwargs: asked.append(kwargs["output_router_logits"]),
                                   with_kwargs=True)  # fmt: skip
    base.register_forward_hook(lambda module, args, output: routed.append(output.aux_loss is not None))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.compute_ref_log_probs(trainer.model, batch)  # the reference: the adapter disabled, in training mode
    trainer._sequence_logps(trainer.model, batch)  # the policy's training forward
    trainer.model.eval()
    trainer._sequence_logps(trainer.model, batch)  # an evaluation forward
    assert asked == [False, True, False] and routed == [False, True, False]


def test_the_loss_gap_of_a_mixture_of_experts_leaves_the_router_loss_out_of_both(tmp_path, tiny_model_dir):
    """eval_loss is the preference loss alone; transformers' logged train loss adds the router loss. eval_gap/loss took
    that train loss, so it was biased down by the router term; it now takes the train preference loss."""
    trainer = mixtral_trainer(tmp_path, tiny_model_dir)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.aux_loss_enabled = False
    preference = trainer.compute_loss(trainer.model, batch).item()
    trainer.aux_loss_enabled = True
    trained = trainer.compute_loss(trainer.model, batch).item()  # what the optimizer sees: the router term added
    assert trained - preference > 0.1
    trainer.log({"loss": trained})  # transformers' train log line
    assert trainer._since_eval["loss"] == [pytest.approx(preference)] and trainer._preference_losses == []
    metrics = trainer.evaluate()
    assert metrics["eval_gap/loss"] == pytest.approx(metrics["eval_loss"] - preference)


@pytest.mark.slow
def test_a_mixture_of_experts_model_trains_and_evaluates_with_the_held_out_kl(tmp_path, tiny_model_dir):
    """TRL adds the router's load-balancing loss where the model has one; the held-out KL's pass has none, and the
    first evaluation after a step raised TypeError (None times the coefficient). The held-out loss is the preference
    loss alone at every evaluation."""
    from dpo.training.execute import execute
    from tests.conftest import TINY_TRAINING, read_jsonl, tiny_recipe_dict, write_recipe

    model_dir = tiny_mixtral(tmp_path, tiny_model_dir, output_router_logits=True, router_aux_loss_coef=0.01)
    recipe = write_recipe(tmp_path / "moe.yaml", tiny_recipe_dict(model_dir, 16, TINY_TRAINING))
    summary, _ = execute(recipe, [], tmp_path / "run")
    evaluations = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in m]
    assert [m["step"] for m in evaluations] == [0, 2, 4] and all("eval_kl" in m for m in evaluations[1:])
    assert summary["steps"] == 4 and summary["stop_reason"] == "completed"
