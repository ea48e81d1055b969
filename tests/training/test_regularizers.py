"""beta schedules (fixed, scheduled, adaptive beta-DPO) and the regularizers: values and where they apply."""

from __future__ import annotations

import math

import pytest
import torch

from dpo.config.loading import load_recipe
from dpo.errors import UserError
from dpo.training.beta import BETA_SCHEDULES, MIN_BETA, BetaController, markdown_table
from dpo.training.execute import build_trainer, execute
from dpo.training.gate import check
from dpo.training.loss_plan import loss_plan
from tests.conftest import read_jsonl


def test_linear_and_cosine_schedules_hand_values():
    """linear 0.1 -> 0.3 over 4 steps: 0.1 + 0.2 * k/4. cosine: 0.3 + (0.1 - 0.3) * (1 + cos(pi k/4)) / 2."""
    linear = BetaController(beta0=0.1, kind="linear", end=0.3)
    assert [round(linear.scheduled(k, 4), 10) for k in range(5)] == [0.1, 0.15, 0.2, 0.25, 0.3]
    cosine = BetaController(beta0=0.1, kind="cosine", end=0.3)
    # k=2: cos(pi/2) = 0 -> 0.3 - 0.2 * 0.5 = 0.2; k=1: cos(pi/4) = 0.70711 -> 0.3 - 0.1 * 1.70711 = 0.129289
    assert cosine.scheduled(0, 4) == pytest.approx(0.1)
    assert cosine.scheduled(1, 4) == pytest.approx(0.3 - 0.1 * (1 + math.sqrt(0.5)))
    assert cosine.scheduled(2, 4) == pytest.approx(0.2)
    assert cosine.scheduled(4, 4) == pytest.approx(0.3)
    assert BetaController(beta0=0.1).scheduled(3, 4) == 0.1


def test_adaptive_beta_hand_values():
    """beta-DPO Eq. 7 with alpha 0.6, m 0.9, beta0 0.1.

    Batch 1, gaps [1, 2, 3]: M0 = 2 (initialised from the batch), beta = 0.1 * (1 + 0.6 * (2 - 2)) = 0.1.
    Batch 2, gaps [3, 3, 3]: M0 = 0.9 * 2 + 0.1 * 3 = 2.1, beta = 0.1 * (1 + 0.6 * (3 - 2.1)) = 0.154.
    Batch 3, gaps [-20, -20]: M0 = 0.9 * 2.1 + 0.1 * -20 = -0.11, beta = 0.1 * (1 + 0.6 * -19.89) < 0 -> MIN_BETA.
    """
    controller = BetaController(beta0=0.1, kind="adaptive", alpha=0.6, momentum=0.9)
    beta, keep = controller.adapt(torch.tensor([1.0, 2.0, 3.0]))
    assert beta == pytest.approx(0.1) and keep.all()
    assert controller.std_gap == pytest.approx(math.sqrt(2 / 3))
    beta, _ = controller.adapt(torch.tensor([3.0, 3.0, 3.0]))
    assert controller.mean_gap == pytest.approx(2.1) and beta == pytest.approx(0.154)
    assert controller.scheduled(10, 100) == pytest.approx(0.154)  # evaluation uses the last training beta
    beta, _ = controller.adapt(torch.tensor([-20.0, -20.0]))
    assert beta == MIN_BETA


def _and_another_process(slice_: list[float]):
    """An all-reduce (sum) over this process and one holding `slice_`, which keeps all its pairs. It tells adapt's two
    reductions apart by their length: first (count, sum, sum of squares) of the gaps, then (count, sum) of the kept
    ones."""
    other = torch.tensor(slice_, dtype=torch.float64)
    stats = {3: torch.stack([other.new_tensor(len(slice_)), other.sum(), other.pow(2).sum()]),
             2: torch.stack([other.new_tensor(len(slice_)), other.sum()])}  # fmt: skip
    return lambda t: t + stats[len(t)]


def test_adaptive_beta_statistics_are_of_the_whole_batch_across_processes():
    """A process holding [1, 2, 3] of the batch [1, 2, 3, 6, 6, 9] (the other process holds [6, 6, 9]): beta and the
    moving statistics are those of the whole batch, as one process with all of it computes them, not of its slice.
    Batch 1: M0 = 4.5, beta = 0.1. Batch 2, [3, 3, 3] + [3, 3, 9]: mean 4, M0 = 0.9 * 4.5 + 0.1 * 4 = 4.45,
    beta = 0.1 * (1 + 0.6 * (4 - 4.45)) = 0.073."""
    alone, one_of_two = (BetaController(beta0=0.1, kind="adaptive", alpha=0.6, momentum=0.9) for _ in range(2))
    for mine, others in (([1.0, 2.0, 3.0], [6.0, 6.0, 9.0]), ([3.0, 3.0, 3.0], [3.0, 3.0, 9.0])):
        whole, _ = alone.adapt(torch.tensor(mine + others))
        beta, keep = one_of_two.adapt(torch.tensor(mine), sum_over_processes=_and_another_process(others))
        assert beta == pytest.approx(whole) and keep.tolist() == [True] * 3
        assert (one_of_two.mean_gap, one_of_two.std_gap) == pytest.approx((alone.mean_gap, alone.std_gap))
    assert beta == pytest.approx(0.073)  # its slice alone: M0 = 2.1, beta = 0.154
    # keep_fraction 0.5: this process keeps 2 of its 4 pairs; the kept mean is over those 2 and the other's 3
    filtering = BetaController(beta0=0.1, kind="adaptive", alpha=0.6, momentum=0.9, keep_fraction=0.5)
    mine, others = torch.tensor([0.0, 1.0, 2.0, 5.0]), [1.0, 1.0, 1.0]
    beta, keep = filtering.adapt(mine, torch.Generator().manual_seed(0), _and_another_process(others))
    assert keep.sum() == 2 and filtering.mean_gap == pytest.approx(11 / 7)
    assert beta == pytest.approx(0.1 * (1 + 0.6 * ((mine[keep].sum().item() + 3) / 5 - 11 / 7)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # 0.95 x 8 = 7.6 rounds to 8; from 11 pairs (10.45 -> 10) one is dropped
            ["training.per_device_train_batch_size=8", "loss.beta_schedule.keep_fraction=0.95"],
            "--set: loss.beta_schedule.keep_fraction: has no effect: keeping 0.95 of each training micro-batch "
            "(training.per_device_train_batch_size 8) rounds to keeping every pair, so the filter drops none; it drops "
            "pairs from a micro-batch of 11 or more",
        ),
        (  # accumulation makes the step's batch larger, not the micro-batch the filter works on
            [
                "training.per_device_train_batch_size=1",
                "training.gradient_accumulation_steps=4",
                "loss.beta_schedule.keep_fraction=0.5",
            ],
            "--set: loss.beta_schedule.keep_fraction: has no effect: keeping 0.5 of each training micro-batch "
            "(training.per_device_train_batch_size 1) rounds to keeping every pair, so the filter drops none; it drops "
            "pairs from a micro-batch of 2 or more",
        ),
    ],
)
def test_a_keep_fraction_that_keeps_every_pair_of_a_micro_batch_is_an_error(tiny_recipe, overrides, message):
    adaptive = "loss.beta_schedule.type=adaptive"
    with pytest.raises(UserError) as raised:
        check(tiny_recipe, [adaptive, *overrides])
    assert str(raised.value) == message
    assert check(tiny_recipe, [adaptive, "loss.beta_schedule.keep_fraction=0.75"])  # 3 of the tiny recipe's 4 pairs


def test_adaptive_filter_drops_the_outlier():
    controller = BetaController(beta0=0.1, kind="adaptive", alpha=0.6, momentum=0.9, keep_fraction=0.75)
    controller.adapt(torch.tensor([0.0, 0.1, -0.1, 0.05]))
    generator = torch.Generator().manual_seed(0)
    _, keep = controller.adapt(torch.tensor([0.0, 0.1, -0.1, 50.0]), generator=generator)
    assert keep.tolist() == [True, True, True, False]  # weight of 50 is exp(-(48.7)^2 / (2 * 2.23^2)) ~ 0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["loss.beta_schedule.type=linear"], "needs 'end'"),
        (["loss.beta_schedule.alpha=0.5"], "'alpha' does not apply to beta_schedule type 'constant'"),
        (["regularizers.f_alpha=0.3"], "'f_alpha' applies only to f_divergence 'alpha_divergence'"),
        (["loss.beta_schedule.type=linar"], "unknown beta_schedule type 'linar'; did you mean 'linear'?"),
        (
            ["loss.beta_schedule={type: adaptive, end: 0.3}"],
            "loss.beta_schedule.end: 'end' does not apply to beta_schedule type 'adaptive' (it is used by: linear, "
            "cosine)",
        ),
        (["loss.beta_schedule.momentun=0.5"], "unknown key 'loss.beta_schedule.momentun'; did you mean 'loss."),
        (
            ["loss.beta_schedule={type: adaptive, momentum: 1.0}"],
            "loss.beta_schedule.momentum: Input should be less than 1 (got 1.0)",
        ),
        (["loss.beta_schedule={type: cosine, end: 0}"], "loss.beta_schedule.end: Input should be greater than 0"),
        (["regularizers.f_divergence=js_divergance"], "unknown f-divergence 'js_divergance'; did you mean 'js_dive"),
        (
            ["regularizers.f_divergence=alpha_divergence", "regularizers.f_alpha=0"],
            "regularizers.f_alpha: Input should be greater than 0 (got 0.0)",
        ),
        (
            ["regularizers.f_divergence=js_divergence", "loss.type=nca_pair"],
            "regularizers.f_divergence: does not apply",
        ),
        (["regularizers.wpo=true", "loss.type=aot"], "regularizers.wpo: does not apply to ['aot']"),
        (["regularizers.sync_ref={every: 4}"], "regularizers.sync_ref: needs full fine-tuning (peft: null)"),
        (["regularizers.nll_weight=1", "loss.type=[sigmoid, sft]"], "the NLL term is already in loss.type"),
        (["training.neftune_noise_alpha=5"], "use regularizers.neftune_alpha"),
        (["regularizers.ld_alpha=0.5", "loss.type=orpo"], "regularizers.ld_alpha: does not apply to loss.type"),
    ],
)
def test_regularizer_misuse_is_an_error(tiny_recipe, overrides, fragment):
    with pytest.raises(UserError) as err:
        check(tiny_recipe, overrides)
    assert str(err.value).startswith("--set: ") and fragment in str(err.value)


def test_beta_schedule_and_f_divergence_keys_reach_the_plan(tiny_recipe):
    plan = loss_plan(load_recipe(tiny_recipe, ["loss.beta_schedule={type: adaptive, keep_fraction: 0.5}"]))
    assert plan.beta_schedule == {"kind": "adaptive", "keep_fraction": 0.5}
    controller = BetaController(beta0=plan.beta, **plan.beta_schedule)
    assert controller.adaptive and (controller.alpha, controller.momentum) == (0.6, 0.9)  # the kind's defaults
    assert not BetaController(beta0=0.1, kind="cosine", end=0.3).adaptive
    overrides = ["regularizers.f_divergence=alpha_divergence", "regularizers.f_alpha=0.3"]
    plan = loss_plan(load_recipe(tiny_recipe, overrides))
    assert (plan.f_divergence, plan.f_alpha) == ("alpha_divergence", 0.3)
    logratios = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(plan.link()(logratios), (torch.exp(-0.7 * logratios) - 1) / -0.7)
    # a resolved recipe.yaml of an older version wrote every schedule key out, null where unused
    old = "{type: constant, end: null, alpha: null, momentum: null, keep_fraction: null}"
    assert loss_plan(load_recipe(tiny_recipe, [f"loss.beta_schedule={old}"])).beta_schedule == {"kind": "constant"}


def test_beta_schedule_table_for_the_docs():
    table = markdown_table().splitlines()
    assert table[0] == "| `loss.beta_schedule.type` | keys (default) | what it does |"
    assert [row.split(" | ")[0] for row in table[2:]] == [f"| `{name}`" for name in BETA_SCHEDULES]
    assert "| `linear` | `end` | from `loss.beta` at step 0 to `end`" in table[3]
    assert "`alpha` (0.6), `momentum` (0.9), `keep_fraction` (1.0)" in table[5]


def test_nll_weight_adds_the_sft_term(tiny_recipe):
    plan = loss_plan(load_recipe(tiny_recipe, ["regularizers.nll_weight=0.5"]))
    assert plan.terms == (("sigmoid", 1.0), ("sft", 0.5))


def test_scheduled_beta_is_used_and_logged_each_step(tiny_recipe, tmp_path):
    overrides = ["loss.beta_schedule.type=linear", "loss.beta_schedule.end=0.3"]
    execute(tiny_recipe, overrides, output_dir=tmp_path / "run")
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r and "beta" in r]
    # the loss of step k is computed before the step counter moves: beta = 0.1 + 0.2 * (k - 1) / 4
    assert [round(r["beta"], 6) for r in rows] == [0.1, 0.15, 0.2, 0.25]
    # the rewards are computed with the step's beta: rewards/chosen = beta * logratios/chosen
    for r in rows:
        assert r["rewards/chosen"] == pytest.approx(r["beta"] * r["logratios/chosen"], rel=1e-5, abs=1e-7)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_neftune_noises_the_policy_forward_only(tiny_recipe, tmp_path):
    checked = check(tiny_recipe, ["regularizers.neftune_alpha=50"], output_dir=tmp_path)
    trainer = build_trainer(checked, callbacks=[])
    batch = _batch(trainer)
    trainer.model.train()
    with torch.no_grad():
        _, first, _ = trainer._sequence_logps(trainer.model, batch)
        _, second, _ = trainer._sequence_logps(trainer.model, batch)
        ref_a = torch.cat(trainer._reference_logps(batch))
        ref_b = torch.cat(trainer._reference_logps(batch))
        trainer.model.eval()
        _, clean_a, _ = trainer._sequence_logps(trainer.model, batch)
        _, clean_b, _ = trainer._sequence_logps(trainer.model, batch)
    assert not torch.equal(first, second)  # training forward of the policy: noisy
    assert torch.equal(ref_a, ref_b)  # reference forward (same module, adapter off): never noisy
    assert torch.equal(clean_a, clean_b)  # evaluation: no noise
    # LoRA B starts at zero, so the clean policy equals the reference exactly
    torch.testing.assert_close(clean_a, ref_a)


def test_ld_dpo_reduction_hand_values():
    """dpo/logps.py, which the trainer and dpo eval share. Pair 1: chosen 3 tokens, rejected 2: the chosen answer's
    third token counts alpha times. Pair 2: both 1 token: nothing down-weighted. Rows [chosen 1, 2; rejected 1, 2]."""
    from dpo.logps import reduce_logps

    logps = torch.tensor([[-1.0, -2.0, -4.0], [-3.0, 0.0, 0.0], [-1.0, -5.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    assert reduce_logps(logps, mask).tolist() == [-7.0, -3.0, -6.0, -2.0]  # the plain sum
    assert reduce_logps(logps, mask, 0.25).tolist() == [-1.0 - 2.0 - 0.25 * 4.0, -3.0, -6.0, -2.0]
    assert reduce_logps(logps, mask, 0.0).tolist() == [-3.0, -3.0, -6.0, -2.0]


@pytest.mark.parametrize(
    "overrides",
    [
        ["regularizers.wpo=true"],
        ["regularizers.ld_alpha=0.5"],
        ["regularizers.f_divergence=alpha_divergence", "regularizers.f_alpha=0.5"],
        ["loss.beta_schedule.type=adaptive", "loss.beta_schedule.keep_fraction=0.5"],
        ["peft=null", "regularizers.sync_ref={every: 2, mixup: 0.5}", "training.learning_rate=1e-3"],
    ],
    ids=["wpo", "ld-dpo", "alpha-divergence", "beta-dpo", "tr-dpo"],
)
def test_each_regularizer_trains_end_to_end(tiny_recipe, tmp_path, overrides):
    summary, trainer = execute(tiny_recipe, overrides + ["training.max_steps=2"], output_dir=tmp_path / "run")
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    if any(o.startswith("regularizers.sync_ref") for o in overrides):
        # after a sync at step 2 the reference moved toward the policy: it no longer equals the initial weights
        from transformers import AutoModelForCausalLM

        initial = AutoModelForCausalLM.from_pretrained(trainer.model.config._name_or_path).state_dict()
        ref = trainer.ref_model.state_dict()
        assert any(not torch.equal(ref[k], initial[k]) for k in initial)


@pytest.mark.parametrize(("disable", "expected_p"), [(True, 0.0), (False, 0.3)])
def test_dropout_is_off_by_default_and_one_key_away(tiny_recipe, tmp_path, disable, expected_p):
    """TRL zeroes every Dropout (training.disable_dropout, default true); false keeps the LoRA dropout. A LoRA
    dropout set while TRL would zero it is an error naming the key, not a knob silently ignored."""
    from dpo.errors import UserError

    if disable:
        with pytest.raises(UserError, match=r"peft.dropout: has no effect: training.disable_dropout is true"):
            check(tiny_recipe, ["peft.dropout=0.3"], output_dir=tmp_path)
        overrides = ["peft.dropout=0.05"]  # the default passes (every resolved recipe.yaml writes it); zeroed too
    else:
        overrides = ["peft.dropout=0.3", "training.disable_dropout=false"]
    trainer = build_trainer(check(tiny_recipe, overrides, output_dir=tmp_path), callbacks=[])
    dropouts = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == expected_p for p in dropouts)
