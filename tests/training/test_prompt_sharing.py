"""Prompt sharing (dpo/training/packing.py): one row [prompt | chosen | rejected] per pair gives the log-probs, losses
and gradients of the ordinary two-sequence forward; and the reference log-probs are computed only where needed."""

from __future__ import annotations

import pytest
import torch

import dpo.training.trainer as trainer_module
from dpo.training.execute import build_trainer
from dpo.training.gate import check
from dpo.training.losses import LOSSES, LossPlan
from dpo.training.packing import pack_pairs
from tests.conftest import TINY_TRAINING, tiny_recipe_dict, write_recipe

# hyperparameters some losses need to be defined (the others take none)
_HYPERPARAMETERS = {"discopop": {"discopop_tau": 0.05}, "dpop": {"dpop_lambda": 50.0}}


def test_packed_layout_hand_worked():
    # pair 0: prompt [5, 6, 7], chosen [8, 9], rejected [10]; pair 1: prompt [11], chosen [12], rejected [13, 14]
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 0, 0, 0], [5, 6, 7, 10, 0], [11, 13, 14, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    completion = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 1, 0, 0]])
    layout = pack_pairs(ids, attention, completion, pad_token_id=0)
    # the prompt's last token (7; 11) starts each branch: its hidden state predicts each answer's first token
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 10], [11, 12, 11, 13, 14, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 0, 1, 2, 0, 0]]
    assert layout.segment.tolist() == [[0, 0, 1, 1, 1, 2, 2], [1, 1, 2, 2, 2, -1, -1]]
    assert layout.shift_labels.tolist() == [[-100, -100, 8, 9, -100, 10, -100], [12, -100, 13, 14, -100, -100, -100]]
    mask = layout.attention_mask("sdpa", torch.float32)[0, 0]
    assert mask[5].tolist() == [True, True, False, False, False, True, False]  # rejected: shared part + itself
    assert mask[4].tolist() == [True, True, True, True, True, False, False]  # chosen: causal
    eager = layout.attention_mask("eager", torch.float32)[0, 0]
    assert eager[5, 2] == torch.finfo(torch.float32).min and eager[5, 1] == 0
    # back to the ordinary (2B, T - 1) layout: the value at each scored position, 0 elsewhere
    per_token = torch.arange(14, dtype=torch.float32).view(2, 7)
    assert layout.unpack(per_token).tolist() == [
        [0, 0, 2, 3],
        [7, 0, 0, 0],
        [0, 0, 5, 0],
        [9, 10, 0, 0],
    ]


def test_rows_with_different_prompts_are_not_packed():
    ids = torch.tensor([[5, 6, 8], [5, 7, 9]])  # the rows of the pair disagree on the prompt (left truncation)
    ones = torch.ones_like(ids)
    completion = torch.tensor([[0, 0, 1], [0, 0, 1]])
    assert pack_pairs(ids, ones, completion, pad_token_id=0) is None


def _trainer(tmp_path, tiny_model_dir, overrides=(), peft=True):
    recipe = tiny_recipe_dict(tiny_model_dir, 16, TINY_TRAINING)
    if not peft:
        recipe["peft"] = None
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    checked = check(path, ["training.precompute_ref_log_probs=false", *overrides], output_dir=tmp_path / "run")
    return build_trainer(checked, [])


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _both_layouts(trainer, fn):
    results = []
    for share in (True, False):
        trainer.share_prompt = share
        trainer.model.zero_grad(set_to_none=True)
        results.append(fn())
    trainer.share_prompt = True
    return results


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_every_loss_gives_the_same_value_and_gradients(tmp_path, tiny_model_dir, peft):
    trainer = _trainer(tmp_path, tiny_model_dir, peft=peft)
    assert trainer.share_prompt
    batch = _batch(trainer)
    trainer.model.train()
    shared, ordinary = _both_layouts(trainer, lambda: trainer._sequence_logps(trainer.model, batch)[1].detach())
    assert torch.allclose(shared, ordinary, atol=1e-4, rtol=0)
    pairs = batch["input_ids"].size(0) // 2
    for name in LOSSES:
        trainer.loss_plan = LossPlan(terms=((name, 1.0),), hyperparameters=_HYPERPARAMETERS.get(name, {}))
        # ODPO's score gap travels with the pair (a column the model never sees); other losses leave it alone
        batch.pop("score_gap", None)
        if LOSSES[name].needs_score_gaps:
            batch["score_gap"] = torch.arange(1, pairs + 1, dtype=torch.float32)

        def loss_and_grads():
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            return loss.detach(), _grads(trainer.model)

        (loss_a, grads_a), (loss_b, grads_b) = _both_layouts(trainer, loss_and_grads)
        assert torch.allclose(loss_a, loss_b, atol=1e-5), name
        assert grads_a.keys() == grads_b.keys() and grads_a
        for key in grads_a:
            # float32 sums in another order: an error of a few units in the last place of the tensor's largest
            # entries (sppo_hard's squared loss: lm_head gradients up to 13, 1e-5 apart), so atol grows with them
            atol = 1e-5 * max(1.0, grads_b[key].abs().max().item())
            assert torch.allclose(grads_a[key], grads_b[key], atol=atol, rtol=1e-4), (name, key)


def test_gradient_checkpointing_and_eager_attention(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, ["training.gradient_checkpointing=true"])
    trainer.model.config._attn_implementation = "eager"
    batch = _batch(trainer)
    trainer.model.train()

    def loss_and_grads():
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.detach(), _grads(trainer.model)

    (loss_a, grads_a), (loss_b, grads_b) = _both_layouts(trainer, loss_and_grads)
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert all(torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4) for k in grads_a)


def test_neftune_noise_reaches_the_policy_only_and_equally(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, ["regularizers.neftune_alpha=5.0"])
    # deterministic noise, a function of each embedding: the same token gets the same noise in both layouts
    trainer._neftune_noise = lambda embeddings, scale: scale * torch.sin(1000 * embeddings)
    batch = _batch(trainer)
    trainer.model.train()
    scales = []
    original = trainer._neftune_noise
    trainer._neftune_noise = lambda e, scale: scales.append(scale) or original(e, scale)
    noisy, ordinary = _both_layouts(trainer, lambda: trainer._sequence_logps(trainer.model, batch)[1].detach())
    assert torch.allclose(noisy, ordinary, atol=1e-4, rtol=0)
    assert scales[0] == scales[1]  # scaled by the ordinary batch's length in both layouts
    clean = trainer._sequence_logps(trainer.model, batch, own_training_forward=False)[1].detach()
    assert not torch.allclose(noisy, clean, atol=1e-4)  # the noise was applied
    ref_a, ref_b = _both_layouts(trainer, lambda: torch.cat(trainer.compute_ref_log_probs(trainer.model, batch)))
    assert torch.allclose(ref_a, ref_b, atol=1e-4) and torch.allclose(ref_a, clean, atol=1e-4)  # no noise there


@pytest.mark.parametrize("dropout", [True, False], ids=["dropout", "no-dropout"])
def test_with_dropout_the_policys_training_forward_runs_two_sequences(tmp_path, tiny_model_dir, capsys, dropout):
    """Shared, the prompt would get one dropout draw that both answers see, and the DPO loss, which reads their
    difference, would cancel most of it: a weaker regulariser than asked for. With dropout active the policy's
    training forward runs two sequences (TRL's layout, a draw per answer), said once; evaluation and the reference
    keep the prompt shared. Without dropout (TRL's default disable_dropout) the training forward shares it too."""
    overrides = ["peft.dropout=0.5", "training.disable_dropout=false"] if dropout else []
    trainer = _trainer(tmp_path, tiny_model_dir, overrides)
    assert trainer.share_prompt and trainer._dropout_apart is dropout
    said = "prompt sharing: off in the policy's training forward (dropout: 4 dropout layers with p > 0)"
    assert capsys.readouterr().out.count(said) == (1 if dropout else 0)  # LoRA's, on q_proj and v_proj of 2 layers
    batch = _batch(trainer)
    trainer.model.train()
    trainer._sequence_logps(trainer.model, batch)  # the policy's training forward
    expected = {"shared": 0, "two_sequences": 1} if dropout else {"shared": 1, "two_sequences": 0}
    assert trainer.layouts_used == expected
    trainer.compute_ref_log_probs(trainer.model, batch)  # the reference: the adapter disabled, in training mode
    trainer.model.eval()
    trainer._sequence_logps(trainer.model, batch)  # an evaluation forward
    assert trainer.layouts_used["shared"] == (2 if dropout else 3)


def test_attention_dropout_counts_as_dropout():
    """Attention modules apply attention dropout as a float, which TRL's disable_dropout (it sets nn.Dropout's p to 0)
    leaves alone; a dropout layer with p 0 draws nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    small = {"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
    small.update(num_attention_heads=2, num_key_value_heads=1)
    assert trainer_module._active_dropout(LlamaForCausalLM(LlamaConfig(**small, attention_dropout=0.0))) is None
    model = LlamaForCausalLM(LlamaConfig(**small, attention_dropout=0.1))
    assert trainer_module._active_dropout(model) == "dropout: attention dropout 0.1"
    model.model.dropouts = torch.nn.ModuleList([torch.nn.Dropout(0.2), torch.nn.Dropout(0.0)])
    assert trainer_module._active_dropout(model) == "dropout: 1 dropout layer with p > 0, attention dropout 0.1"


def test_an_attention_implementation_that_cannot_take_it_falls_back(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "SUPPORTED_ATTENTION", ("eager",))
    trainer = _trainer(tmp_path, tiny_model_dir)
    assert not trainer.share_prompt
    assert "prompt sharing: off (attention implementation 'sdpa'" in capsys.readouterr().out
    assert trainer._packed_layout(_batch(trainer)) is None


def test_the_recipe_key_turns_it_off(tmp_path, tiny_model_dir, capsys):
    trainer = _trainer(tmp_path, tiny_model_dir, ["model.share_prompt=false"])
    assert not trainer.share_prompt and "prompt sharing" not in capsys.readouterr().out


def test_precomputed_reference_log_probs_under_full_fine_tuning(tmp_path, tiny_model_dir):
    """Full fine-tuning with precompute keeps no reference copy: TRL's up-front pass, through the shared layout."""
    recipe = tiny_recipe_dict(tiny_model_dir, 8, TINY_TRAINING)
    recipe["peft"] = None
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    checked = check(path, ["training.precompute_ref_log_probs=true"], output_dir=tmp_path / "run")
    trainer = build_trainer(checked, [])
    assert trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names
    assert trainer.share_prompt and trainer.layouts_used["shared"] > 0  # the up-front pass shared the prompt
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()
    trainer.share_prompt = False
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    assert torch.allclose(batch["ref_chosen_logps"], chosen, atol=1e-4)
    assert torch.allclose(batch["ref_rejected_logps"], rejected, atol=1e-4)


def _count_reference_pairs(trainer) -> list[int]:
    calls = []
    original = trainer.compute_ref_log_probs

    def counting(model, inputs):
        calls.append(inputs["input_ids"].size(0) // 2)
        return original(model, inputs)

    trainer.compute_ref_log_probs = counting
    return calls


def test_reference_log_probs_only_where_needed(tmp_path, tiny_model_dir):
    """Under LoRA with precompute: nothing up front; each training pair's reference log-probs once over two epochs;
    the step-0 evaluation runs no reference forward; later ones only the KL subsample's."""
    recipe = tiny_recipe_dict(tiny_model_dir, 8, {**TINY_TRAINING, "max_steps": 4})  # 8 pairs, 4 per step: 2 epochs
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    overrides = ["training.precompute_ref_log_probs=true", "logging.heldout_kl_pairs=3"]
    trainer = build_trainer(check(path, overrides, output_dir=tmp_path / "run"), [])
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names  # no up-front pass
    calls = _count_reference_pairs(trainer)
    kl_calls = []
    original_kl = trainer._heldout_kl_pass
    trainer._heldout_kl_pass = lambda model, inputs: (
        kl_calls.append(inputs["input_ids"].size(0) // 2) or original_kl(model, inputs)
    )
    first = trainer.evaluate()
    assert calls == [] and kl_calls == []  # policy = reference at step 0: their log-probs are the policy's
    assert first["eval_kl"] == 0.0 and first["eval_rewards/margins"] == 0.0
    trainer.train()
    assert sum(calls) == 8  # 8 training pairs over 2 epochs (with 2 evaluations): each pair's reference forward once
    calls.clear()
    kl_calls.clear()
    last = trainer.evaluate()
    assert calls == [] and sum(kl_calls) == 3  # held-out reference log-probs cached; KL on its 3 pairs only
    assert last["eval_kl"] > 0 and "eval_se/kl" in last
    assert trainer._kl_keys is not None and len(trainer._kl_keys) == 3


def test_cached_reference_gives_the_metrics_of_a_fresh_one(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, ["logging.heldout_kl=false"])
    trainer.evaluate()
    trainer.train()
    cached = trainer.evaluate()
    trainer._ref_cache.clear()
    fresh = trainer.evaluate()
    for name, value in fresh.items():
        if name.startswith("eval_") and "runtime" not in name and "per_second" not in name:
            assert cached[name] == pytest.approx(value, abs=1e-5), name


def test_two_sequence_path_equals_trls_forward(tmp_path, tiny_model_dir):
    """Without sharing: no padding mask (right-padded rows under causal attention) and only the completion positions
    through the LM head, and still TRL's own forward's values."""
    trainer = _trainer(tmp_path, tiny_model_dir, ["model.share_prompt=false"])
    batch = _batch(trainer)
    assert trainer._ordinary_kwargs(batch)["attention_mask"] is None
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer._sequence_logps(trainer.model, batch)[0]
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        trl = trainer.model(**kwargs, labels=labels, fused_lm_head=True).log_probs
    assert torch.allclose(ours, trl, atol=1e-5)


def test_sharing_is_used_only_where_it_costs_less(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir)
    # short answers after a long prompt: shared; long answers after a short prompt: the rows' attention outweighs
    assert trainer._sharing_pays(torch.Size([16, 60]), torch.Size([8, 75]))
    assert not trainer._sharing_pays(torch.Size([16, 400]), torch.Size([8, 780]))
    trainer._sequence_logps(trainer.model, _batch(trainer))
    assert trainer.layouts_used == {"shared": 1, "two_sequences": 0}


@pytest.mark.slow
def test_embedded_model_gives_the_same_log_probs(tmp_path):
    """The real model (SmolLM2-135M-Instruct, 30 layers, GQA, tied embeddings) with the quickstart's LoRA: the shared
    layout's per-sequence log-probs and reference log-probs equal the two-sequence forward's within 1e-4 (fp32)."""
    from tests.conftest import REPO

    overrides = ["data.max_train_pairs=8", "data.max_eval_pairs=8", "training.precompute_ref_log_probs=false"]
    trainer = build_trainer(check(REPO / "recipes" / "quickstart.yaml", overrides, output_dir=tmp_path / "run"), [])
    assert trainer.share_prompt
    batch = _batch(trainer)
    assert trainer._packed_layout(batch) is not None  # chat prompts: the shared layout is the cheaper one
    trainer.model.eval()
    with torch.no_grad():
        shared, ordinary = _both_layouts(trainer, lambda: trainer._sequence_logps(trainer.model, batch)[1])
        ref_shared, ref_ordinary = _both_layouts(trainer, lambda: torch.cat(trainer._ref_forward(batch)))
    assert torch.allclose(shared, ordinary, atol=1e-4, rtol=0)
    assert torch.allclose(ref_shared, ref_ordinary, atol=1e-4, rtol=0)
