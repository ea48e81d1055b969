"""The autopilot (dpo/training/autopilot.py): each rule's decision on hand-made evaluations, its bounds, the checks
of its recipe keys, and on the tiny model: the controls it changes reach the loss and the optimizer mid-run, every
decision is logged, and a resumed run replays them exactly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

import dpo.training.trainer as trainer_module
from dpo.config.schema import AutopilotSection
from dpo.errors import UserError
from dpo.noise import NoiseRule
from dpo.training.autopilot import RULES, Autopilot, Controls, audit_flip_rate, describe, markdown_table
from dpo.training.execute import execute
from dpo.training.gate import check
from dpo.training.losses import LossPlan
from tests.conftest import REPO, read_jsonl

SETTINGS = AutopilotSection(enabled=True).model_dump()
SIGMOID = LossPlan(terms=(("sigmoid", 1.0),))


def pilot(plan=SIGMOID, metric="eval_rewards/accuracies", sigmas=2.0, flip_rate=None, **settings) -> Autopilot:
    return Autopilot({**SETTINGS, **settings}, plan, NoiseRule(metric, sigmas=sigmas), flip_rate=flip_rate)


def evaluation(**values) -> dict:
    base = {"eval_loss": 0.69, "eval_rewards/margins": 0.0, "eval_rewards/accuracies": 0.5,
            "eval_logratios/chosen": 0.0, "eval_gap/accuracies": 0.0}  # fmt: skip
    return base | {k.replace("__", "/"): v for k, v in values.items()}


def test_controls_of_a_plan_and_back():
    plan = LossPlan(terms=(("sigmoid", 1.0), ("sft", 0.5)), hyperparameters={"label_smoothing": 0.1})
    controls = Controls.of(plan)
    assert controls == Controls(nll_weight=0.5, dpop_lambda=None, label_smoothing=0.1, shift_lambda=1.0, lr_factor=1.0)
    assert Controls.of(LossPlan(terms=(("dpop", 1.0),))).dpop_lambda == 50.0  # the loss's own default
    assert Controls.of(LossPlan(terms=(("ipo", 1.0),))).label_smoothing is None
    controls.nll_weight, controls.label_smoothing = 1.0, 0.2
    changed = controls.loss_plan(plan)
    assert changed.terms == (("sigmoid", 1.0), ("sft", 1.0)) and changed.hyperparameters == {"label_smoothing": 0.2}
    controls.nll_weight = 0.0
    assert controls.loss_plan(plan).terms == (("sigmoid", 1.0),)


def test_shift_control_turns_dpo_into_dpo_shift_and_keeps_the_smoothing():
    plan = LossPlan(terms=(("sigmoid", 1.0), ("sft", 0.5)), hyperparameters={"label_smoothing": 0.1})
    controls = Controls.of(plan)
    controls.shift_lambda = 0.75
    shifted = controls.loss_plan(plan)
    assert shifted.terms == (("dpo_shift", 1.0), ("sft", 0.5))
    assert shifted.hyperparameters == {"label_smoothing": 0.1, "shift_lambda": 0.75}
    assert Controls.of(LossPlan(terms=(("dpo_shift", 1.0),), hyperparameters={"shift_lambda": 0.8})).shift_lambda == 0.8
    assert Controls.of(LossPlan(terms=(("dpo_shift", 1.0),))).shift_lambda == 0.9  # the loss's own default
    # no shift control: a scheduled factor (the recipe moves it), another f-divergence link (sigmoid then reads the
    # linked scores, DPO-Shift the log-ratios), a loss with no rejected-term factor
    scheduled = LossPlan(terms=(("dpo_shift", 1.0),), hyperparameters={"shift_lambda": 0.5, "shift_lambda_end": 0.9})
    assert Controls.of(scheduled).shift_lambda is None
    assert Controls.of(LossPlan(f_divergence="js_divergence")).shift_lambda is None
    assert Controls.of(LossPlan(terms=(("ipo", 1.0),))).shift_lambda is None
    # and nothing shifts, nor breaks, on a later change of another control
    controls = Controls.of(scheduled)
    controls.lr_factor = 0.5
    unchanged = controls.loss_plan(scheduled)
    assert unchanged.terms == scheduled.terms
    assert unchanged.hyperparameters == scheduled.hyperparameters  # no rule changed the smoothing: not written
    # with both losses in the recipe the control is dpo_shift's: the sigmoid term stays sigmoid
    both = LossPlan(terms=(("sigmoid", 1.0), ("dpo_shift", 1.0)), hyperparameters={"shift_lambda": 0.9})
    controls = Controls.of(both)
    assert controls.shift_lambda == 0.9 and controls.loss_plan(both).terms == both.terms
    controls.shift_lambda = 0.75
    shifted = controls.loss_plan(both)
    assert shifted.terms == both.terms and shifted.hyperparameters["shift_lambda"] == 0.75


def test_only_what_a_rule_changed_is_written_into_the_plan():
    """EXO's label_smoothing is its epsilon (default 1e-3, and 0 makes its loss infinite); sigmoid's default is 0.
    Controls.of reads the first loss's default: writing it back after an unrelated decision (a learning-rate cut)
    gave EXO epsilon 0. Only a value a rule changed is written, and then to every loss that takes the key, as the
    recipe's own loss.label_smoothing would be."""
    plan = LossPlan(terms=(("sigmoid", 1.0), ("exo_pair", 1.0)))
    controls = Controls.of(plan)
    assert controls.label_smoothing == 0.0
    controls.lr_factor = 0.5
    assert controls.loss_plan(plan).hyperparameters == {}
    controls.label_smoothing = 0.1
    assert controls.loss_plan(plan).hyperparameters == {"label_smoothing": 0.1}


def test_no_second_nll_term_beside_a_loss_that_holds_one():
    """ORPO's loss holds the NLL term; the recipe check refuses regularizers.nll_weight beside it, so the
    displacement rule must not add one either: it has nothing to raise there."""
    plan = LossPlan(terms=(("orpo", 1.0), ("ipo", 1.0)))
    assert Controls.of(plan).nll_weight is None
    autopilot = pilot(plan=plan)
    assert autopilot.decide(0, evaluation(eval_logratios__chosen=-3.0)) == []
    assert autopilot.controls.loss_plan(plan).terms == plan.terms


def test_a_checkpoint_without_newer_controls_resumes_with_the_recipes_values():
    """A checkpoint written before the shift control existed has no `shift_lambda`: it comes from the recipe (1.0
    on plain DPO), so the resumed run can still shift; keys this version does not know are ignored."""
    autopilot = pilot()
    old = {"nll_weight": 0.25, "dpop_lambda": None, "label_smoothing": 0.1, "lr_factor": 0.5, "gone": 1}
    autopilot.load_state({"attributes": {"controls": old}})
    assert autopilot.controls == Controls(nll_weight=0.25, label_smoothing=0.1, shift_lambda=1.0, lr_factor=0.5)
    # a checkpoint written before ORPO's own NLL term was counted holds nll_weight 0.0: it stays None
    orpo = pilot(plan=LossPlan(terms=(("orpo", 1.0), ("ipo", 1.0))))
    orpo.load_state({"attributes": {"controls": {"nll_weight": 0.0, "lr_factor": 0.5}}})
    assert orpo.controls.nll_weight is None and orpo.controls.lr_factor == 0.5
    assert orpo.decide(0, evaluation(eval_logratios__chosen=-3.0)) == []


def test_displacement_lowers_the_shift_then_turns_on_the_nll_term_to_its_bound_with_cooldowns():
    autopilot = pilot(max_nll_weight=0.5)
    made = []
    for step in range(0, 130, 10):
        made += autopilot.decide(step, evaluation(eval_logratios__chosen=-3.0))
    assert [(d["step"], d["rule"], d["changed"]) for d in made] == [
        (0, "displacement", {"loss.shift_lambda": [1.0, 0.75]}),  # plain DPO becomes DPO-Shift
        (30, "displacement", {"regularizers.nll_weight": [0.0, 0.25]}),  # rests 2 evaluations; shift at its bound
        (60, "displacement", {"regularizers.nll_weight": [0.25, 0.5]}),  # then the NLL term is at its bound too
    ]
    assert made[0]["because"]["eval_logratios/chosen"] == -3.0
    no_shift = pilot(min_shift_lambda=1.0).decide(0, evaluation(eval_logratios__chosen=-3.0))
    assert no_shift[0]["changed"] == {"regularizers.nll_weight": [0.0, 0.25]}
    # within the noise of the threshold (0 - 0.5 - 2 x 0.1 = -0.7): no signal
    assert pilot().decide(0, evaluation(eval_logratios__chosen=-0.6, **{"eval_se/logratios/chosen": 0.1})) == []


def test_displacement_counts_the_fall_from_the_peak_not_from_zero():
    """A chosen log-ratio that rose to +1.2 and fell to +0.4 is still above the reference, but it fell by 0.8:
    more than displacement_nats (0.5) plus 2 standard errors (0.2). A fall to +0.6 is within that."""
    se = {"eval_se/logratios/chosen": 0.1}
    within, beyond = pilot(), pilot()
    for autopilot in (within, beyond):
        autopilot.decide(0, evaluation(**se))
        autopilot.decide(10, evaluation(eval_logratios__chosen=1.2, **se))
    assert within.decide(20, evaluation(eval_logratios__chosen=0.6, **se)) == []
    (decision,) = beyond.decide(20, evaluation(eval_logratios__chosen=0.4, **se))
    assert decision["because"] == {"eval_logratios/chosen": 0.4, "peak": 1.2, "standard_error": 0.1,
                                   "threshold": pytest.approx(0.7)}  # fmt: skip


def test_displacement_raises_dpop_lambda_where_a_loss_takes_it():
    autopilot = pilot(plan=LossPlan(terms=(("dpop", 1.0),), hyperparameters={"dpop_lambda": 60.0}))
    (decision,) = autopilot.decide(0, evaluation(eval_logratios__chosen=-3.0))
    assert decision["changed"] == {"loss.dpop_lambda": [60.0, 120.0]}


def test_memorising_raises_smoothing_then_cuts_the_learning_rate_at_the_bound():
    autopilot = pilot(max_label_smoothing=0.1, cooldown=0)
    changes = [d["changed"] for s in (0, 10, 20) for d in autopilot.decide(s, evaluation(eval_gap__accuracies=0.6))]
    assert changes == [{"loss.label_smoothing": [0.0, 0.1]}, {"lr_factor": [1.0, 0.5]}, {"lr_factor": [0.5, 0.25]}]
    ipo = pilot(plan=LossPlan(terms=(("ipo", 1.0),)))  # no smoothing to raise: the learning rate instead
    assert ipo.decide(0, evaluation(eval_gap__accuracies=0.6))[0]["changed"] == {"lr_factor": [1.0, 0.5]}


def test_confident_but_wrong_needs_the_loss_up_and_the_margin_up():
    autopilot = pilot()
    assert autopilot.decide(0, evaluation(eval_loss=0.60, eval_rewards__margins=0.1)) == []
    assert autopilot.decide(10, evaluation(eval_loss=0.62, eval_rewards__margins=0.5)) == []  # +3%: not 10%
    (decision,) = autopilot.decide(20, evaluation(eval_loss=0.75, eval_rewards__margins=0.9))
    assert decision["rule"] == "confident_but_wrong" and decision["because"]["min_step"] == 0
    assert decision["changed"] == {"loss.label_smoothing": [0.0, 0.1]}
    # the same numbers under a beta that moves: a rising beta raises loss and margin with no change in the model
    moving = pilot(plan=LossPlan(terms=(("sigmoid", 1.0),), beta_schedule={"kind": "linear", "end": 0.5}))
    for step, loss, margin in ((0, 0.60, 0.1), (10, 0.62, 0.5), (20, 0.75, 0.9)):
        assert moving.decide(step, evaluation(eval_loss=loss, eval_rewards__margins=margin)) == []


def test_label_audit_sets_the_smoothing_to_the_estimate_within_its_bound():
    (decision,) = pilot(flip_rate=0.2).decide(0, evaluation())
    assert decision["changed"] == {"loss.label_smoothing": [0.0, 0.2]}
    (decision,) = pilot(flip_rate=0.45).decide(0, evaluation())
    assert decision["changed"] == {"loss.label_smoothing": [0.0, 0.3]}
    assert audit_flip_rate({"audit": {"expected_flip_rate_after": 0.25}}) == 0.25 and audit_flip_rate({}) is None


def test_plateau_cuts_the_learning_rate_then_stop_after_a_fall_beyond_the_noise():
    """Accuracy at 0.5 (step 0), rising clearly to 0.8, then flat: a plateau cuts the learning rate down to its floor;
    a clear fall after that stops the run. At chance nothing happens at all."""
    se = 0.036
    autopilot = pilot(patience=2, cooldown=0, min_lr_factor=0.25)
    values = [0.5, 0.65, 0.8, 0.8, 0.79, 0.8, 0.78, 0.66, 0.65]
    made = [d for i, v in enumerate(values) for d in autopilot.decide(10 * i, evaluation(
        eval_rewards__accuracies=v, **{"eval_se/rewards/accuracies": se}))]  # fmt: skip
    assert [(d["step"], d["rule"], d["changed"]) for d in made] == [
        (40, "plateau", {"lr_factor": [1.0, 0.5]}),
        (50, "plateau", {"lr_factor": [0.5, 0.25]}),
        (70, "stop", {"stop": [False, True]}),  # 0.66 is 3.9 SE below 0.8 (step 20), 5 >= 2 x patience evaluations on
    ]
    assert autopilot.stopped_at == 70 and autopilot.stop_reason == "autopilot"
    flat = pilot(patience=2, cooldown=0)
    at_chance = evaluation(**{"eval_se/rewards/accuracies": 0.045})
    assert [d for i in range(20) for d in flat.decide(10 * i, at_chance)] == []


def test_stop_waits_for_the_last_learning_rate_cut_to_act():
    """The plateau's last cut and the stop's other conditions arrive at one evaluation (step 30: 2 x patience after
    the best, fallen): the cut to the floor is made and the stop waits for an evaluation at that rate (step 40)."""
    autopilot = pilot(patience=1, cooldown=0, lr_factor=0.5, min_lr_factor=0.25, sigmas=0.0)
    values = [0.5, 0.8, 0.7, 0.6, 0.6]
    made = [d for i, v in enumerate(values) for d in autopilot.decide(10 * i, evaluation(eval_rewards__accuracies=v))]
    assert [(d["step"], d["rule"], d["changed"]) for d in made] == [
        (20, "plateau", {"lr_factor": [1.0, 0.5]}),
        (30, "plateau", {"lr_factor": [0.5, 0.25]}),
        (40, "stop", {"stop": [False, True]}),
    ]


def test_no_stop_at_the_last_step():
    """The curve of the test above, ending at the stop (step 70): when step 70 is the run's last, the budget is spent
    and the autopilot makes no stop (summary.json's stop_reason stays completed)."""
    autopilot = pilot(patience=2, cooldown=0, min_lr_factor=0.25)
    values = [0.5, 0.65, 0.8, 0.8, 0.79, 0.8, 0.78, 0.66]
    made = [d for i, v in enumerate(values) for d in autopilot.decide(10 * i, evaluation(
        eval_rewards__accuracies=v, **{"eval_se/rewards/accuracies": 0.036}), last=i == len(values) - 1)]  # fmt: skip
    assert [(d["step"], d["rule"]) for d in made] == [(40, "plateau"), (50, "plateau")]
    assert autopilot.stopped_at is None and autopilot.stop_reason is None


def test_rule_table_is_in_the_docs_and_describes_its_bounds():
    assert markdown_table() in (REPO / "docs" / "overfitting.md").read_text()
    for rule in RULES:  # every bound a rule names is a key of the autopilot section (or early stopping's)
        for key in [w.strip("`") for w in rule.bounds.split() if w.startswith("`")]:
            key = key.rstrip("`;,")
            assert key in AutopilotSection.model_fields or key == "label_smoothing", (rule.name, key)
    line = describe({"step": 4, "rule": "displacement", "changed": {"regularizers.nll_weight": [0.0, 0.25]},
                     "because": {"eval_logratios/chosen": -2.5}})  # fmt: skip
    assert line == "autopilot @ step 4: displacement: regularizers.nll_weight 0.0 -> 0.25 (because " \
        "eval_logratios/chosen -2.5)"  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["autopilot.max_nll_weight=2"], "autopilot.max_nll_weight: has no effect: autopilot.enabled is false"),
        (
            ["autopilot.enabled=true", "loss.type=ipo", "autopilot.max_label_smoothing=0.2"],
            "autopilot.max_label_smoothing: has no effect: no loss in loss.type takes label_smoothing",
        ),
        (
            ["autopilot.enabled=true", "autopilot.max_dpop_lambda=10"],
            "autopilot.max_dpop_lambda: has no effect: no loss in loss.type takes dpop_lambda",
        ),
        (
            ["autopilot.enabled=true", "loss.type=ipo", "autopilot.min_shift_lambda=0.5"],
            "autopilot.min_shift_lambda: has no effect: no loss in loss.type takes shift_lambda \\(it is used by: "
            "dpo_shift with a fixed factor, or sigmoid under the reverse_kl link\\)",
        ),
        (
            [
                "autopilot.enabled=true",
                "loss.type=dpo_shift",
                "loss.shift_lambda_end=0.9",
                "autopilot.shift_lambda_step=0.1",
            ],
            "autopilot.shift_lambda_step: has no effect: no loss in loss.type takes shift_lambda",
        ),
        (["autopilot.enabled=true", "training.eval_strategy=no"], "autopilot: needs evaluations"),
        (  # no evaluation before the end either: the autopilot would never act, and said nothing
            ["autopilot.enabled=true", "training.eval_strategy=steps", "training.max_steps=3", "training.eval_steps=5"],
            "autopilot: needs evaluations during training \\(training.eval_steps 5 >= training.max_steps 3\\)",
        ),
        (  # the one evaluation falls on the last step: nothing left to act on
            ["autopilot.enabled=true", "training.eval_strategy=steps", "training.max_steps=4", "training.eval_steps=4"],
            "autopilot: needs evaluations during training \\(training.eval_steps 4 >= training.max_steps 4\\)",
        ),
        (  # evaluations every 2 steps, but none before step 6 of 6
            ["autopilot.enabled=true", "training.max_steps=6", "training.eval_steps=2", "training.eval_delay=5"],
            "autopilot: needs evaluations during training \\(training.eval_delay 5 leaves no evaluation before "
            "training.max_steps 6\\)",
        ),
        (  # one epoch, evaluated at its end, which is the last step: found once the data are read
            [
                "autopilot.enabled=true",
                "training.max_steps=-1",
                "training.num_train_epochs=1",
                "training.eval_strategy=epoch",
            ],
            "autopilot: needs evaluations during training \\(training.eval_strategy 'epoch': an epoch is \\d+ steps "
            "\\(\\d+ training pairs at \\d+ a step\\), not fewer than the run's \\d+ steps",
        ),
        (
            ["autopilot.enabled=true", "training.lr_scheduler_type=reduce_lr_on_plateau"],
            "autopilot.enabled: cannot run beside training.lr_scheduler_type: reduce_lr_on_plateau",
        ),
        (  # transformers 5's GreedyLR: stepped on a plateau of eval_loss, it may raise the rate the autopilot cut
            ["autopilot.enabled=true", "training.lr_scheduler_type=greedy"],
            "autopilot.enabled: cannot run beside training.lr_scheduler_type: greedy: transformers' GreedyLR changes "
            "the learning rate on a plateau of the held-out loss, and raises it again",
        ),
        (  # displacement raises DPOP's lambda where a loss takes it, and never falls through to the NLL term
            ["autopilot.enabled=true", "loss.type=dpop", "autopilot.max_nll_weight=2"],
            "autopilot.max_nll_weight: has no effect: the displacement rule raises loss.dpop_lambda, which a loss in "
            "loss.type takes, never the NLL term",
        ),
        (  # a reference-free loss logs no eval_logratios/chosen: displacement never fires
            ["autopilot.enabled=true", "loss.type=simpo", "autopilot.displacement_nats=1"],
            "autopilot.displacement_nats: has no effect: loss.type \\['simpo'\\] uses no reference model, so "
            "eval_logratios/chosen \\(what the displacement rule reads\\) is not logged",
        ),
        (
            ["autopilot.enabled=true", "loss.type=orpo", "autopilot.nll_weight_step=0.5"],
            "autopilot.nll_weight_step: has no effect: loss.type \\['orpo'\\] uses no reference model",
        ),
        (
            ["autopilot.enabled=true", "loss.type=[orpo, ipo]", "autopilot.max_nll_weight=2"],
            "autopilot.max_nll_weight: has no effect: orpo in loss.type holds the NLL term already, so the "
            "displacement rule has nothing to raise",
        ),
        (["autopilot.enabled=true", "autopilot.max_label_smoothing=0.5"], "less than 0.5"),
        (["autopilot.enabld=true"], "did you mean 'autopilot.enabled'"),
    ],
)
def test_recipe_errors_name_the_key(tiny_recipe, overrides, message):
    with pytest.raises(UserError, match=message):
        check(tiny_recipe, overrides)
    assert check(tiny_recipe, ["autopilot.enabled=true", "loss.type=dpop", "autopilot.max_dpop_lambda=10"])
    # a delay that still leaves one evaluation (step 4 of 6) before the last step passes
    delayed = ["autopilot.enabled=true", "training.max_steps=6", "training.eval_steps=2", "training.eval_delay=3"]
    assert check(tiny_recipe, delayed)
    plateau = ["autopilot.enabled=true", "training.lr_scheduler_type=reduce_lr_on_plateau"]
    assert check(tiny_recipe, [*plateau, "autopilot.min_lr_factor=1"])  # the autopilot cuts no learning rate then
    greedy = ["autopilot.enabled=true", "training.lr_scheduler_type=greedy", "autopilot.min_lr_factor=1"]
    assert check(tiny_recipe, greedy)
    # the NLL keys act once DPO-Shift's factor is at its bound; the section's defaults pass with any loss
    assert check(tiny_recipe, ["autopilot.enabled=true", "autopilot.max_nll_weight=2"])
    assert check(tiny_recipe, ["autopilot.enabled=true", "loss.type=simpo"])
    two_epochs = ["autopilot.enabled=true", "training.max_steps=-1", "training.num_train_epochs=2"]
    assert check(tiny_recipe, [*two_epochs, "training.eval_strategy=epoch"])  # the first epoch's end comes first


# ---- on the tiny model ----


class Scripted(TrainerCallback):
    """Overwrites held-out metrics per evaluation step before the autopilot reads them: neutral values, except the
    scripted ones. (Callbacks passed to execute run before dpo's own.)"""

    SCRIPT = {
        2: {"eval_logratios/chosen": -5.0},
        3: {"eval_gap/accuracies": 0.9},
        6: {"eval_logratios/chosen": -5.0, "eval_gap/accuracies": 0.9},
    }

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics.update({"eval_logratios/chosen": 0.0, "eval_gap/accuracies": 0.0})
        metrics.update(self.SCRIPT.get(state.global_step, {}))


class Interrupt(TrainerCallback):
    """Stops the process's run abruptly at the start of `step` (a kill, in-process), after checkpoint step-1."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt


AUTOPILOT_RUN = [
    "autopilot.enabled=true",
    "autopilot.max_label_smoothing=0.1",
    "autopilot.patience=100",  # no plateau decisions from the tiny model's own noise
    "autopilot.loss_rise=100",
    "training.max_steps=8",
    "training.eval_steps=1",
    "training.lr_scheduler_type=constant",
]


@pytest.fixture
def loss_calls(monkeypatch):
    """Every call of a loss function by the trainer during training steps: (loss name, its hyperparameters)."""
    calls = []
    original = trainer_module.compute_loss

    def spy(name, tensors, *, beta, **hyperparameters):
        if torch.is_grad_enabled():
            calls.append((name, dict(hyperparameters)))
        return original(name, tensors, beta=beta, **hyperparameters)

    monkeypatch.setattr(trainer_module, "compute_loss", spy)
    return calls


@pytest.mark.slow
def test_decisions_reach_the_loss_and_the_optimizer_and_are_logged(tiny_recipe, tmp_path, loss_calls, capsys):
    run_dir = tmp_path / "run"
    summary, trainer = execute(tiny_recipe, AUTOPILOT_RUN, output_dir=run_dir, callbacks=[Scripted()])
    decisions = summary["autopilot"]["decisions"]
    assert [(d["step"], d["rule"], d["changed"]) for d in decisions] == [
        (2, "displacement", {"loss.shift_lambda": [1.0, 0.75]}),
        (3, "memorising", {"loss.label_smoothing": [0.0, 0.1]}),
        (6, "displacement", {"regularizers.nll_weight": [0.0, 0.25]}),  # the shift at its bound: the NLL term
        (6, "memorising", {"lr_factor": [1.0, 0.5]}),  # smoothing at its bound: the learning rate instead
    ]
    # the loss of each training step (4 pairs in one batch per step): DPO-Shift from step 3 on, its smoothing from
    # step 4, the NLL term from step 7
    names = [name for name, _ in loss_calls]
    assert names == ["sigmoid"] * 2 + ["dpo_shift"] * 4 + ["dpo_shift", "sft"] * 2
    assert [h.get("shift_lambda") for name, h in loss_calls if name == "dpo_shift"] == [0.75] * 6
    smoothing = [h.get("label_smoothing") for name, h in loss_calls if name != "sft"]
    assert smoothing == [None, None, None, 0.1, 0.1, 0.1, 0.1, 0.1]  # written once a rule changed it (at step 3)
    assert trainer.loss_plan.terms == (("dpo_shift", 1.0), ("sft", 0.25))
    events = read_jsonl(run_dir / "metrics.jsonl")
    lrs = [e["learning_rate"] for e in events if "grad_norm" in e]
    assert lrs == pytest.approx([0.01] * 6 + [0.005] * 2)
    logged = [e["autopilot"] for e in events if "autopilot" in e]
    assert logged == decisions and [e["step"] for e in events if "autopilot" in e] == [2, 3, 6, 6]
    assert "autopilot @ step 2: displacement: loss.shift_lambda 1.0 -> 0.75" in capsys.readouterr().out
    assert summary["autopilot"]["controls"] == {"nll_weight": 0.25, "dpop_lambda": None, "label_smoothing": 0.1,
                                                "shift_lambda": 0.75, "lr_factor": 0.5}  # fmt: skip
    report = (run_dir / "report.html").read_text()
    assert "autopilot displacement: loss.shift_lambda 0.75" in report
    assert "autopilot displacement: regularizers.nll_weight 0.25" in report


def assert_same_decisions(resumed: dict, whole: dict) -> None:
    """The same decisions (step, rule, change, and the numbers that triggered them, to the last digit) and final
    controls: the resumed steps train the same weights and read the same cached reference log-probs."""
    assert resumed["controls"] == whole["controls"] and resumed["stopped_at"] == whole["stopped_at"]
    assert resumed["decisions"] == whole["decisions"]


@pytest.mark.slow
def test_resume_replays_the_decisions_exactly(tiny_recipe, tmp_path, loss_calls):
    whole, _ = execute(tiny_recipe, AUTOPILOT_RUN, output_dir=tmp_path / "whole", callbacks=[Scripted()])
    uninterrupted = list(loss_calls)
    loss_calls.clear()
    run_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_recipe, AUTOPILOT_RUN, output_dir=run_dir, callbacks=[Scripted(), Interrupt(5)])
    loss_calls.clear()
    resumed, trainer = execute(run_dir / "recipe.yaml", [], output_dir=run_dir, resume=True, callbacks=[Scripted()])
    assert resumed["resumed_from"] == [4]
    assert_same_decisions(resumed["autopilot"], whole["autopilot"])
    assert loss_calls == uninterrupted[-len(loss_calls) :]  # steps 5-8 ran with the same loss terms and settings
    assert trainer.loss_plan.terms == (("dpo_shift", 1.0), ("sft", 0.25))
    lrs = [e["learning_rate"] for e in read_jsonl(run_dir / "metrics.jsonl") if "grad_norm" in e]
    assert lrs == pytest.approx([0.01] * 6 + [0.005] * 2)
    assert [e["step"] for e in read_jsonl(run_dir / "metrics.jsonl") if "autopilot" in e] == [2, 3, 6, 6]
    assert_same_decisions(json.loads((run_dir / "summary.json").read_text())["autopilot"], whole["autopilot"])
    # every held-out number of the resumed steps is the uninterrupted run's: the reference log-probs the run cached
    # (at step 0, from the policy) come back with the checkpoint instead of being computed again
    evaluations = [
        {k: v for k, v in e.items() if not k.endswith(("_runtime", "_per_second", "preparation_time"))}
        for d in (tmp_path / "whole", run_dir) for e in read_jsonl(d / "metrics.jsonl") if "eval_loss" in e
    ]  # fmt: skip
    assert len(evaluations) == 18 and evaluations[9:] == evaluations[:9]
    assert (run_dir / "checkpoints" / "checkpoint-8" / "reference_logps.safetensors").is_file()


def test_confident_but_wrong_ignores_losses_measured_before_the_loss_changed():
    autopilot = pilot(cooldown=0)
    assert autopilot.decide(0, evaluation(eval_loss=0.60, eval_rewards__margins=0.1)) == []
    (displaced,) = autopilot.decide(10, evaluation(eval_loss=0.61, eval_logratios__chosen=-3.0))
    assert displaced["rule"] == "displacement"  # the NLL term is added: eval_loss now includes it
    made = autopilot.decide(20, evaluation(eval_loss=1.50, eval_rewards__margins=0.9))
    assert [d["rule"] for d in made] == []  # 1.50 is the first loss of the new kind, not a rise from 0.60
