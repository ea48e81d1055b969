"""The held-out KL diagnostic (eval_kl): hand-worked on a fixed batch, equal to a direct computation after
training, and the evaluation pass that computes it leaves every other held-out metric unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from dpo.errors import UserError
from dpo.training.execute import execute
from dpo.training.gate import check
from dpo.training.trainer import _token_fields, _token_fields_at
from tests.conftest import read_jsonl


def test_token_fields_hand_worked():
    # one row, two completion tokens, vocabulary of 2; logits chosen so the softmax is easy to write down
    policy = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p = (1/2, 1/2), then (3/4, 1/4)
    ref = torch.tensor([[[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])  # q = (3/4, 1/4) twice
    targets = torch.tensor([[1, 0]])
    mask = torch.tensor([[True, True]])
    fields = _token_fields(policy, ref, targets, mask)
    kl_first = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.1438...
    assert fields["kl"][0].tolist() == pytest.approx([kl_first, 0.0], abs=1e-6)
    assert fields["log_probs"][0].tolist() == pytest.approx([math.log(0.5), math.log(0.75)], abs=1e-6)
    assert fields["ref_log_probs"][0].tolist() == pytest.approx([math.log(0.25), math.log(0.75)], abs=1e-6)
    entropy_second = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert fields["entropy"][0].tolist() == pytest.approx([math.log(2.0), entropy_second], abs=1e-6)
    assert fields["log_sum_sq_probs"][0].tolist() == pytest.approx(
        [math.log(0.5), math.log(0.75**2 + 0.25**2)], abs=1e-6
    )
    assert fields["mean_logits"][0].tolist() == pytest.approx([0.0, math.log(3.0) / 2], abs=1e-6)
    assert fields["is_top1"][0].tolist() == [False, True]  # a tie is not a top-1 hit for token 1; 0 wins at step 2
    masked = _token_fields(policy, ref, targets, torch.tensor([[False, True]]))
    assert masked["kl"][0, 0] == 0 and masked["log_probs"][0, 0] == 0


def test_token_fields_at_the_answers_only_equal_the_full_computation():
    generator = torch.Generator().manual_seed(0)
    policy, ref = torch.randn(2, 2, 3, 5, generator=generator)
    targets = torch.randint(0, 5, (2, 3), generator=generator)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    full, at = _token_fields(policy, ref, targets, mask), _token_fields_at(policy, ref, targets, mask)
    assert full.keys() == at.keys()
    for name in full:
        assert torch.allclose(full[name].float(), at[name].float(), atol=1e-6), name


def _direct_kl(trainer) -> float:
    """KL(pi || pi_ref) summed over each held-out answer's tokens, averaged over answers, computed here with
    plain forwards (the adapter disabled for the reference) over the trainer's own evaluation batches."""
    model = trainer.model
    model.eval()
    per_sequence = []
    for batch in trainer.get_eval_dataloader():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        mask = batch["completion_mask"][:, 1:].bool()
        with torch.no_grad():
            log_p = model(**kwargs).logits[:, :-1].float().log_softmax(-1)
            with model.disable_adapter():
                log_q = model(**kwargs).logits[:, :-1].float().log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        per_sequence.extend((kl * mask).sum(dim=1).tolist())
    return sum(per_sequence) / len(per_sequence)


@pytest.mark.slow
def test_eval_kl_equals_a_direct_computation(tiny_recipe, tmp_path):
    summary, trainer = execute(tiny_recipe, ["training.per_device_eval_batch_size=4"], tmp_path / "run")
    evals = [e for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert evals[0]["eval_kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy = reference
    assert evals[-1]["eval_kl"] > 1e-5  # training moved the policy away
    # the last evaluation is of the last step's weights (no early stopping): recompute it directly
    assert evals[-1]["eval_kl"] == pytest.approx(_direct_kl(trainer), rel=1e-4)
    assert summary["final_metrics"]["eval_kl"] == evals[-1]["eval_kl"]


@pytest.mark.slow
@pytest.mark.parametrize("precompute", [False, True])
def test_kl_pass_leaves_the_other_metrics_unchanged(tiny_recipe, tmp_path, precompute):
    """The KL pass computes the policy's log-probs from full logits instead of TRL's fused head; every other
    held-out metric must be what the fused path gives."""
    runs = {}
    for kl in (True, False):
        overrides = [f"logging.heldout_kl={str(kl).lower()}", f"training.precompute_ref_log_probs={precompute}"]
        execute(tiny_recipe, overrides, tmp_path / f"kl-{kl}")
        runs[kl] = [e for e in read_jsonl(tmp_path / f"kl-{kl}" / "metrics.jsonl") if "eval_loss" in e]
    for with_kl, without in zip(runs[True], runs[False], strict=True):
        assert "eval_kl" in with_kl and "eval_kl" not in without
        for name, value in without.items():
            if name.endswith(("runtime", "per_second", "_time")) or name == "epoch":
                continue
            assert with_kl[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_explicit_kl_without_a_reference_is_an_error(tiny_recipe):
    overrides = ["peft=null", "training.precompute_ref_log_probs=true", "logging.heldout_kl=true"]
    with pytest.raises(UserError, match=r"logging.heldout_kl: needs a reference model at evaluation"):
        check(tiny_recipe, overrides)
    with pytest.raises(UserError, match=r"early_stopping.metric: .*eval_kl.* needs logging.heldout_kl"):
        check(tiny_recipe, ["peft=null", "training.precompute_ref_log_probs=true", "early_stopping.metric=eval_kl"])
