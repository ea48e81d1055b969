"""The autopilot (`autopilot:` recipe section, off by default): at each evaluation it reads the overfitting diagnostics
and changes one control within the bounds the recipe sets; every decision is logged and replayed on resume.

    autopilot: {enabled: true, max_label_smoothing: 0.3, min_lr_factor: 0.125}

RULES is the one table of what it does (name, condition, action, bounds); docs/overfitting.md shows it, built by
`markdown_table()`. At each evaluation the rules are tried in table order; a rule fires when its condition holds,
acts when its control is below its bound, and then rests for `cooldown` evaluations so its effect can show. Each
control changes at most once per evaluation. Conditions use the noise rule of dpo/noise.py (k =
`early_stopping.noise_sigmas`): a number within k standard errors of its threshold does not fire a rule.

The controls act on the running trainer: the NLL term's weight, DPOP's lambda, DPO-Shift's factor and the label
smoothing replace the trainer's LossPlan (dpo/training/losses.py), which its loss computation reads at every step;
a learning-rate cut scales the optimizer's learning rates and the scheduler's base rates (so a decaying schedule
continues from the cut value); a stop ends training like early stopping and the best checkpoint is restored.

Resume: the callback's state (controls, decisions, counters) is saved in every checkpoint (transformers'
ExportableState); `load_state` puts it back and `apply_loss_controls` re-applies the loss controls to the new trainer.
The optimizer's and scheduler's learning rates come back with the checkpoint itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from dpo.config.loading import LoadedRecipe
from dpo.config.schema import AutopilotSection
from dpo.errors import UserError
from dpo.noise import NoiseRule, logged_error
from dpo.rundir.files import append_metrics
from dpo.training.beta import BETA_SCHEDULES
from dpo.training.losses import LOSSES, PLAIN_DPO_LINK, LossPlan

NLL_TERM = "sft"  # the loss in LOSSES that is the NLL of the chosen answers (regularizers.nll_weight adds it)
# DPO-Shift's loss, and the loss it equals at factor 1 (with the same label smoothing): the autopilot lowers the
# factor on a run of either, turning a (c)DPO run into DPO-Shift, the control the noise benchmark found strongest.
SHIFTED, UNSHIFTED = "dpo_shift", "sigmoid"
EVENT = "autopilot"  # the key of a decision's line in metrics.jsonl, and of the summary.json block
STOP_REASON = "autopilot"
# The recipe keys of the controls that change the loss (and so what eval_loss measures).
LOSS_CONTROLS = {"regularizers.nll_weight", "loss.dpop_lambda", "loss.label_smoothing", "loss.shift_lambda"}


def audit_flip_rate(card: dict) -> float | None:
    """The label audit's estimate of the training label-flip rate from data_card.json, or None when there is none.

    The audit (dpo/training/audit_use.py) writes `audit.expected_flip_rate_after`: the flip rate of the pairs that
    are trained on, after its `data.audit.suspects` action dropped or flipped the most suspect ones."""
    audit = card.get("audit")
    value = audit.get("expected_flip_rate_after") if isinstance(audit, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Controls:
    """The controls the autopilot may change; None where the recipe's losses do not take one."""

    nll_weight: float | None = 0.0  # None: a loss of the recipe holds the NLL term itself (ORPO): no second one
    dpop_lambda: float | None = None
    label_smoothing: float | None = None
    shift_lambda: float | None = None  # DPO-Shift's factor on the rejected log-ratio; 1.0 on a plain (c)DPO run
    lr_factor: float = 1.0  # the learning rate as a fraction of what the recipe's schedule gives

    @classmethod
    def of(cls, plan: LossPlan) -> Controls:
        """The controls as the recipe set them."""
        names = [name for name, _ in plan.terms]

        def taken(key: str) -> float | None:
            defaults = [LOSSES[n].hyperparameters[key] for n in names if key in LOSSES[n].hyperparameters]
            return plan.hyperparameters.get(key, defaults[0]) if defaults else None

        shift = taken("shift_lambda")
        if SHIFTED in names and plan.hyperparameters.get("shift_lambda_end") is not None:
            shift = None  # the recipe schedules the factor itself
        elif shift is None and UNSHIFTED in names and plan.f_divergence == PLAIN_DPO_LINK:
            shift = 1.0  # sigmoid takes the linked scores, DPO-Shift the log-ratios: the same only under reverse KL
        nll = float(sum(weight for name, weight in plan.terms if name == NLL_TERM))
        if any(LOSSES[name].includes_nll for name in names if name != NLL_TERM):
            nll = None  # the recipe check refuses an NLL term beside one: the autopilot must not add it either
        return cls(nll_weight=nll, dpop_lambda=taken("dpop_lambda"), label_smoothing=taken("label_smoothing"),
                   shift_lambda=shift)  # fmt: skip

    def loss_plan(self, plan: LossPlan) -> LossPlan:
        """`plan` with these controls: the NLL term's weight, sigmoid turned into DPO-Shift once its factor is below
        1 (only where the shift control is the sigmoid's: a recipe that has a dpo_shift term shifts that one), and
        the hyperparameters the losses take."""
        names = [name for name, _ in plan.terms]
        swap = self.shift_lambda is not None and self.shift_lambda < 1 and SHIFTED not in names
        terms = [(SHIFTED if swap and name == UNSHIFTED else name, w) for name, w in plan.terms if name != NLL_TERM]
        if self.nll_weight:
            terms.append((NLL_TERM, self.nll_weight))
        hyperparameters = dict(plan.hyperparameters)
        as_recipe = Controls.of(plan)
        for key in ("dpop_lambda", "label_smoothing"):
            # only a value a rule changed: the one Controls.of read is the first loss's default, and writing it would
            # give it to every loss that takes the key (EXO's label_smoothing is its epsilon, which must stay > 0)
            if getattr(self, key) is not None and getattr(self, key) != getattr(as_recipe, key):
                hyperparameters[key] = getattr(self, key)
        if self.shift_lambda is not None and any(name == SHIFTED for name, _ in terms):  # None: the recipe schedules it
            hyperparameters["shift_lambda"] = self.shift_lambda
        return dataclasses.replace(plan, terms=tuple(terms), hyperparameters=hyperparameters)


@dataclass
class Observation:
    """What the rules read at one evaluation: its metrics, the earlier evaluations, and the watched metric's state."""

    metrics: dict
    evaluations: list[dict]  # every evaluation so far, this one last
    rule: NoiseRule  # the watched metric (early_stopping.metric) under the noise rule
    flip_rate: float | None
    loss_since: int = -1  # the step of the last change to the loss: held-out losses before it measured another loss
    lr_factor: float = 1.0  # the learning-rate factor as this evaluation found it, before any rule cut it here
    beta_moves: bool = False  # loss.beta_schedule moves beta: eval_loss and the margin change where the model did not

    def error(self, key: str) -> float:
        return logged_error(self.metrics, key)

    @property
    def watched(self) -> list[tuple[int, float, float]]:
        """(step, value, standard error) of the watched metric at each evaluation that logged it finitely."""
        metric = self.rule.metric
        return [
            (e["step"], e[metric], logged_error(e, metric))
            for e in self.evaluations
            if isinstance(e.get(metric), int | float) and math.isfinite(e[metric])
        ]

    def best(self) -> tuple[int, float, float] | None:
        points = self.watched
        if not points:
            return None
        best = points[0]
        for point in points[1:]:
            if self.rule.improves(point[1], best[1]):  # no standard error given: better by more than min_delta
                best = point
        return best

    def since_best(self) -> int:
        """Evaluations since the watched metric's best (0: this one is the best)."""
        best = self.best()
        return 0 if best is None else sum(1 for step, _, _ in self.watched if step > best[0])

    def learned(self) -> bool:
        points, best = self.watched, self.best()
        return bool(points) and best is not None and self.rule.learned(points[0][1], best[1], best[2], len(points))

    def fallen(self) -> bool:
        """Has the latest watched value fallen below the best beyond the noise?"""
        points, best = self.watched, self.best()
        if not points or best is None:
            return False
        return self.rule.fallen(points[-1][1], best[1], points[-1][2])


Settings = dict  # the recipe's autopilot section as a dict (dpo/config/schema.py AutopilotSection)
Numbers = dict[str, float]


# ---- conditions: the numbers that triggered the rule, or None ----


def _label_audit(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    if o.flip_rate is None or c.label_smoothing is None:
        return None
    if min(o.flip_rate, s["max_label_smoothing"]) > c.label_smoothing + 1e-9:
        return {"flip_rate": o.flip_rate, "label_smoothing": c.label_smoothing}
    return None


def _displacement(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    """The held-out chosen log-ratio has fallen from its highest value so far (0 at the start, where the policy is
    the reference) by more than displacement_nats beyond the noise. From the peak rather than from 0: under
    flipped labels it first rises, then falls for tens of steps before it crosses zero (the noise benchmark's
    validation curves: +1.18 at step 10, +0.71, -0.19, -1.15 at step 40 with plain DPO, arithmetic, 30% flipped)."""
    key = "eval_logratios/chosen"
    value = o.metrics.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    peak = max([0.0, *(e[key] for e in o.evaluations if isinstance(e.get(key), int | float) and math.isfinite(e[key]))])
    error = o.error(key)
    if value < peak - s["displacement_nats"] - o.rule.sigmas * error:
        return {key: value, "peak": peak, "standard_error": error, "threshold": peak - s["displacement_nats"]}
    return None


def _confident_but_wrong(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    """Held-out loss rose from its minimum beyond the noise while the held-out margin grew past its value there.
    Only evaluations after the last change to the loss count: a new term or smoothing changes what eval_loss is.
    Under a beta that moves, every evaluation measures another loss: the rule does not apply."""
    if o.beta_moves:
        return None
    losses = [
        e
        for e in o.evaluations
        if e["step"] > o.loss_since and isinstance(e.get("eval_loss"), int | float) and math.isfinite(e["eval_loss"])
    ]
    if len(losses) < 2:
        return None
    lowest = min(losses, key=lambda e: e["eval_loss"])
    now = o.metrics
    rise = now["eval_loss"] - lowest["eval_loss"]
    margin_now, margin_then = now.get("eval_rewards/margins"), lowest.get("eval_rewards/margins")
    bar = max(s["loss_rise"] * abs(lowest["eval_loss"]), o.rule.sigmas * o.error("eval_loss"))
    if lowest["step"] != now["step"] and rise > bar and margin_now is not None and margin_then is not None:
        if margin_now > margin_then:
            return {"eval_loss": now["eval_loss"], "min_eval_loss": lowest["eval_loss"], "min_step": lowest["step"],
                    "eval_rewards/margins": margin_now, "margin_at_min": margin_then}  # fmt: skip
    return None


def _memorising(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    gap = o.metrics.get("eval_gap/accuracies")
    if not isinstance(gap, int | float) or not math.isfinite(gap):
        return None
    error = o.error("eval_rewards/accuracies")
    if gap > s["accuracy_gap"] + o.rule.sigmas * error:
        return {"eval_gap/accuracies": gap, "standard_error": error, "threshold": s["accuracy_gap"]}
    return None


def _plateau(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    if o.since_best() >= s["patience"] and o.learned():
        best = o.best()
        return {"evaluations_since_best": o.since_best(), "best_step": best[0], "best": best[1]}
    return None


def _stop(o: Observation, s: Settings, c: Controls) -> Numbers | None:
    """Fallen beyond the noise, 2 x patience evaluations after the best, with the learning rate already at its floor:
    at an earlier evaluation (`o.lr_factor`), not cut to it by `plateau` at this one, or that cut would never act."""
    if o.lr_factor > s["min_lr_factor"] + 1e-12 or o.since_best() < 2 * s["patience"]:
        return None
    if o.learned() and o.fallen():
        best = o.best()
        return {"evaluations_since_best": o.since_best(), "best_step": best[0], "best": best[1],
                "latest": o.watched[-1][1]}  # fmt: skip
    return None


# ---- actions: the changes {control: [old, new]}, or None when the control is at its bound or absent ----


def _raise_smoothing(c: Controls, s: Settings, to: float | None = None) -> dict | None:
    if c.label_smoothing is None:
        return None
    new = min(s["max_label_smoothing"], to if to is not None else c.label_smoothing + s["label_smoothing_step"])
    if new <= c.label_smoothing + 1e-12:
        return None
    old, c.label_smoothing = c.label_smoothing, round(new, 6)
    return {"loss.label_smoothing": [old, c.label_smoothing]}


def _lower_shift(c: Controls, s: Settings) -> dict | None:
    """DPO-Shift's factor down by a step (a (c)DPO run becomes DPO-Shift): the rejected term weighs less, so the
    chosen answers' likelihood is pushed down less."""
    if c.shift_lambda is None:
        return None
    new = max(s["min_shift_lambda"], c.shift_lambda - s["shift_lambda_step"])
    if new >= c.shift_lambda - 1e-12:
        return None
    old, c.shift_lambda = c.shift_lambda, round(new, 6)
    return {"loss.shift_lambda": [old, c.shift_lambda]}


def _raise_anchor(c: Controls, s: Settings) -> dict | None:
    """DPOP's lambda where a loss takes it, else the NLL term: both push the chosen answers' likelihood back up."""
    if c.dpop_lambda is not None:
        new = min(s["max_dpop_lambda"], max(c.dpop_lambda * s["dpop_lambda_factor"], 1.0))
        if new > c.dpop_lambda + 1e-12:
            old, c.dpop_lambda = c.dpop_lambda, round(new, 6)
            return {"loss.dpop_lambda": [old, c.dpop_lambda]}
        return None
    if c.nll_weight is None:
        return None  # a loss holds the NLL term already (ORPO)
    new = min(s["max_nll_weight"], c.nll_weight + s["nll_weight_step"])
    if new <= c.nll_weight + 1e-12:
        return None
    old, c.nll_weight = c.nll_weight, round(new, 6)
    return {"regularizers.nll_weight": [old, c.nll_weight]}


def _cut_lr(c: Controls, s: Settings) -> dict | None:
    new = max(s["min_lr_factor"], c.lr_factor * s["lr_factor"])
    if new >= c.lr_factor - 1e-12:
        return None
    old, c.lr_factor = c.lr_factor, round(new, 6)
    return {"lr_factor": [old, c.lr_factor]}


def _shift_or_anchor(c: Controls, s: Settings) -> dict | None:
    return _lower_shift(c, s) or _raise_anchor(c, s)


def _smoothing_or_lr(c: Controls, s: Settings) -> dict | None:
    return _raise_smoothing(c, s) or _cut_lr(c, s)


def _stop_training(c: Controls, s: Settings) -> dict | None:
    return {"stop": [False, True]} if s["may_stop"] else None


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str
    action: str
    bounds: str
    fires: Callable[[Observation, Settings, Controls], Numbers | None]
    act: Callable[..., dict | None]


# The one table of the autopilot's rules, tried in this order at each evaluation. docs/overfitting.md shows it.
RULES: tuple[Rule, ...] = (
    Rule(
        "label_audit",
        "the estimated training label-flip rate (`autopilot.flip_rate`, else the label audit's in data_card.json) "
        "exceeds the label smoothing in use",
        "set `loss.label_smoothing` to the estimate",
        "`max_label_smoothing`; only with a loss that takes `label_smoothing` (sigmoid, robust, ...)",
        _label_audit,
        lambda c, s, o: _raise_smoothing(c, s, to=o.flip_rate),
    ),
    Rule(
        "displacement",
        "held-out chosen log-ratio `eval_logratios/chosen` fallen below its highest value so far (0 at the start) "
        "by more than `displacement_nats` plus k standard errors (likelihood displacement)",
        "lower DPO-Shift's `loss.shift_lambda` by `shift_lambda_step` (plain DPO and cDPO become DPO-Shift); once it "
        "is at its bound, or without such a loss, raise `loss.dpop_lambda` x `dpop_lambda_factor` when a loss takes "
        "it, else turn on / raise `regularizers.nll_weight` by `nll_weight_step`",
        "`min_shift_lambda`, `max_dpop_lambda`, `max_nll_weight`",
        _displacement,
        lambda c, s, o: _shift_or_anchor(c, s),
    ),
    Rule(
        "confident_but_wrong",
        "held-out loss above its minimum by more than max(`loss_rise` x minimum, k standard errors) while the "
        "held-out margin is above its value at that minimum (not under a `loss.beta_schedule` that moves beta: both "
        "scale with it)",
        "raise `loss.label_smoothing` by `label_smoothing_step`; without a smoothing loss, cut the learning rate",
        "`max_label_smoothing`; `min_lr_factor`",
        _confident_but_wrong,
        lambda c, s, o: _smoothing_or_lr(c, s),
    ),
    Rule(
        "memorising",
        "train minus held-out reward accuracy `eval_gap/accuracies` above `accuracy_gap` by more than k standard "
        "errors",
        "raise `loss.label_smoothing` by `label_smoothing_step`; without a smoothing loss, cut the learning rate",
        "`max_label_smoothing`; `min_lr_factor`",
        _memorising,
        lambda c, s, o: _smoothing_or_lr(c, s),
    ),
    Rule(
        "plateau",
        "no new best of `early_stopping.metric` for `patience` evaluations, after the run has learned (its best "
        "clearly beyond the start)",
        "multiply the learning rate by `lr_factor`",
        "`min_lr_factor` (of the recipe's schedule)",
        _plateau,
        lambda c, s, o: _cut_lr(c, s),
    ),
    Rule(
        "stop",
        "learning rate at its floor since an earlier evaluation, no new best for 2 x `patience` evaluations, and "
        "the latest value fallen below the best by more than k standard errors",
        "stop training; the best checkpoint is restored",
        "`may_stop`",
        _stop,
        lambda c, s, o: _stop_training(c, s),
    ),
)
RULE_NAMES = tuple(rule.name for rule in RULES)


def markdown_table() -> str:
    """The rule table of docs/overfitting.md, built from RULES."""
    rows = ["| rule | condition | action | bounds |", "|---|---|---|---|"]
    rows += [f"| `{r.name}` | {r.condition} | {r.action} | {r.bounds} |" for r in RULES]
    return "\n".join(rows)


class Autopilot(TrainerCallback, ExportableState):
    """The callback: decides at each evaluation (`decide`, pure given the history), applies the decision to the
    bound trainer, logs it. `bind(trainer)` before training."""

    RESTORED = ("controls", "decisions", "rested_until", "evaluations", "stopped_at")

    def __init__(self, settings: Settings, plan: LossPlan, rule: NoiseRule, flip_rate: float | None = None,
                 metrics_path: Path | None = None):  # fmt: skip
        self.settings = dict(settings)
        self.base_plan = plan
        self.rule = rule
        self.flip_rate = flip_rate
        self.metrics_path = metrics_path
        self.controls = Controls.of(plan)
        kind = plan.beta_schedule.get("kind", "constant")
        self.beta_moves = BETA_SCHEDULES[kind].moves
        self.decisions: list[dict] = []
        self.rested_until: dict[str, int] = {}  # rule -> the evaluation index before which it rests
        self.evaluations: list[dict] = []
        self.stopped_at: int | None = None
        self.trainer = None

    @property
    def stop_reason(self) -> str | None:
        return STOP_REASON if self.stopped_at is not None else None

    def bind(self, trainer) -> None:
        self.trainer = trainer

    # ---- the decision, pure ----

    def decide(self, step: int, metrics: dict, last: bool = False) -> list[dict]:
        """Feed one evaluation; returns the decisions made at it (and records them, and the new controls). `last`: the
        evaluation at the run's last step, where a stop would end nothing early, so none is made."""
        self.evaluations.append({k: v for k, v in metrics.items() if isinstance(v, int | float)} | {"step": step})
        index = len(self.evaluations)
        observation = Observation(metrics | {"step": step}, self.evaluations, self.rule, self.flip_rate,
                                  self.loss_changed_at(),
                                  lr_factor=self.controls.lr_factor, beta_moves=self.beta_moves)  # fmt: skip
        made, changed = [], set()
        for rule in RULES:
            if self.stopped_at is not None or self.rested_until.get(rule.name, 0) > index:
                continue
            numbers = rule.fires(observation, self.settings, self.controls)
            if numbers is None:
                continue
            before = dataclasses.replace(self.controls)
            change = rule.act(self.controls, self.settings, observation)
            if change is None or changed & set(change) or (last and "stop" in change):
                self.controls = before  # at its bound, that control already changed at this evaluation, or no stop
                continue
            changed |= set(change)
            self.rested_until[rule.name] = index + 1 + self.settings["cooldown"]
            decision = {"step": step, "rule": rule.name, "changed": change, "because": numbers}
            if "stop" in change:
                self.stopped_at = step
            made.append(decision)
        self.decisions.extend(made)
        return made

    def loss_changed_at(self) -> int:
        """The step of the last decision that changed the loss (LOSS_CONTROLS), -1 for none: held-out losses logged
        before it measured another loss, so no rule (nor the end-of-run warnings) compares them with later ones."""
        return max((d["step"] for d in self.decisions if set(d["changed"]) & LOSS_CONTROLS), default=-1)

    # ---- applying it to the trainer ----

    def apply_loss_controls(self) -> None:
        """Put the loss-side controls into the bound trainer's LossPlan (also after a resume)."""
        self.trainer.loss_plan = self.controls.loss_plan(self.base_plan)

    def _scale_lr(self, factor: float, optimizer, scheduler) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= factor
        if hasattr(scheduler, "base_lrs"):  # LambdaLR schedules recompute lr = base_lr * f(step) at every step
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def on_evaluate(self, args, state, control, metrics=None, optimizer=None, lr_scheduler=None, **kwargs):
        if not metrics:
            return control
        made = self.decide(state.global_step, metrics, last=0 < state.max_steps <= state.global_step)
        for decision in made:
            if "lr_factor" in decision["changed"] and optimizer is not None:
                old, new = decision["changed"]["lr_factor"]
                self._scale_lr(new / old, optimizer, lr_scheduler)
            if "stop" in decision["changed"]:
                control.should_training_stop = True
            self._announce(decision, state)
        if made and self.trainer is not None:
            self.apply_loss_controls()
        return control

    def _announce(self, decision: dict, state) -> None:
        if not state.is_world_process_zero:
            return
        if self.metrics_path is not None:
            append_metrics(self.metrics_path, {"step": decision["step"], EVENT: decision})
        print(describe(decision), flush=True)

    # ---- resume ----

    def state(self) -> dict:
        return {"args": {}, "attributes": {
            "controls": dataclasses.asdict(self.controls), "decisions": self.decisions,
            "rested_until": self.rested_until, "evaluations": self.evaluations, "stopped_at": self.stopped_at,
        }}  # fmt: skip

    def load_state(self, saved: dict) -> None:
        """Put back `state()` (from a checkpoint's trainer_state.json) and re-apply the loss controls."""
        attributes = saved.get("attributes", {})
        if "controls" in attributes:  # a checkpoint of an older version lacks newer controls: the recipe's values
            recipe_controls = Controls.of(self.base_plan)
            # a control the recipe's losses do not take stays None: a checkpoint from before ORPO's NLL term counted
            # as one holds nll_weight 0.0, which would let the displacement rule add a second NLL term
            saved_controls = {
                k: v
                for k, v in attributes["controls"].items()
                if k in Controls.__dataclass_fields__ and getattr(recipe_controls, k) is not None
            }
            self.controls = dataclasses.replace(recipe_controls, **saved_controls)
        for name in ("decisions", "rested_until", "evaluations", "stopped_at"):
            if name in attributes:
                setattr(self, name, attributes[name])
        if self.trainer is not None:
            self.apply_loss_controls()

    def summary(self) -> dict:
        """The `autopilot` block of summary.json."""
        return {"decisions": self.decisions, "controls": dataclasses.asdict(self.controls),
                "stopped_at": self.stopped_at}  # fmt: skip


def describe(decision: dict) -> str:
    """One console line for a decision."""
    changes = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in decision["changed"].items())
    because = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in decision["because"].items())
    return f"autopilot @ step {decision['step']}: {decision['rule']}: {changes} (because {because})"


# ---- from a checked recipe ----

# Bounds of controls that only some losses take: setting one away from its default with no such loss is an error.
_NEEDS = {
    "label_smoothing": ("max_label_smoothing", "label_smoothing_step", "flip_rate"),
    "dpop_lambda": ("max_dpop_lambda", "dpop_lambda_factor"),
    "shift_lambda": ("min_shift_lambda", "shift_lambda_step"),
}
# Which losses have the control, where that is more than "the losses that take the hyperparameter" (Controls.of)
_HAVE = {
    "shift_lambda": f"{SHIFTED} with a fixed factor, or {UNSHIFTED} under the {PLAIN_DPO_LINK} link",
}
# The keys of the displacement rule's condition and of its last resort, the NLL term (`_raise_anchor`)
_DISPLACEMENT_KEYS = ("displacement_nats",)
_NLL_KEYS = ("max_nll_weight", "nll_weight_step")
# The learning-rate schedulers that change the rate on a plateau of a held-out metric themselves
_PLATEAU_SCHEDULERS = {
    "reduce_lr_on_plateau": "both cut the learning rate on a plateau of early_stopping.metric",
    "greedy": "transformers' GreedyLR changes the learning rate on a plateau of the held-out loss, and raises it "
    "again, undoing the autopilot's cuts",
}


def _dead_keys(plan: LossPlan, controls: Controls) -> dict[str, str]:
    """Autopilot keys that the recipe's losses leave without effect beyond _NEEDS, each with why."""
    if not plan.needs_reference:  # the displacement rule reads a log-ratio to the reference
        names = [name for name, _ in plan.terms]
        why = f"loss.type {names} uses no reference model, so eval_logratios/chosen (what the displacement rule reads)"
        return {key: f"{why} is not logged" for key in (*_DISPLACEMENT_KEYS, *_NLL_KEYS)}
    if controls.dpop_lambda is not None:
        why = "the displacement rule raises loss.dpop_lambda, which a loss in loss.type takes, never the NLL term"
        return dict.fromkeys(_NLL_KEYS, why)
    if controls.nll_weight is None:
        holders = ", ".join(name for name, _ in plan.terms if LOSSES[name].includes_nll)
        why = f"{holders} in loss.type holds the NLL term already, so the displacement rule has nothing to raise"
        return dict.fromkeys((*_DISPLACEMENT_KEYS, *_NLL_KEYS), why)
    return {}


def check_autopilot(loaded: LoadedRecipe, plan: LossPlan, dpo_config) -> None:
    """The autopilot's keys must take effect: the section on, and each bound set away from its default for a control
    the recipe's losses take. (That its run has evaluations to act on: gate.check_evaluations.)"""
    section = loaded.recipe.autopilot
    changed = [key for key, field in AutopilotSection.model_fields.items() if getattr(section, key) != field.default]
    if not section.enabled:
        if changed:
            raise UserError("has no effect: autopilot.enabled is false", where=loaded.where(f"autopilot.{changed[0]}"))
        return
    scheduler = str(getattr(dpo_config.lr_scheduler_type, "value", dpo_config.lr_scheduler_type))
    if scheduler in _PLATEAU_SCHEDULERS and section.min_lr_factor < 1:
        # two controllers of the learning rate on plateaus: one cut on top of the other, or one undoing the other
        raise UserError(
            f"cannot run beside training.lr_scheduler_type: {scheduler}: {_PLATEAU_SCHEDULERS[scheduler]}; keep one, "
            "or set autopilot.min_lr_factor: 1 (the autopilot cuts none)",
            where=loaded.where("autopilot.enabled"),
        )
    controls = Controls.of(plan)
    for control, keys in _NEEDS.items():
        if getattr(controls, control) is not None:
            continue
        for key in keys:
            if key in changed:
                users = _HAVE.get(control) or ", ".join(
                    sorted(name for name, spec in LOSSES.items() if control in spec.hyperparameters)
                )
                raise UserError(
                    f"has no effect: no loss in loss.type takes {control} (it is used by: {users})",
                    where=loaded.where(f"autopilot.{key}"),
                )
    dead = _dead_keys(plan, controls)
    for key in changed:
        if key in dead:
            raise UserError(f"has no effect: {dead[key]}", where=loaded.where(f"autopilot.{key}"))


def autopilot_for(checked, metrics_path: Path) -> Autopilot | None:
    """The autopilot of a checked recipe (dpo/training/gate.py), or None when it is off."""
    recipe = checked.recipe
    if not recipe.autopilot.enabled:
        return None
    stopping = recipe.early_stopping
    rule = NoiseRule(stopping.metric, stopping.mode, stopping.noise_sigmas, stopping.min_delta)
    flip_rate = recipe.autopilot.flip_rate
    if flip_rate is None:
        flip_rate = audit_flip_rate(checked.data.card)
    settings = recipe.autopilot.model_dump()
    return Autopilot(settings, checked.loss_plan, rule, flip_rate=flip_rate, metrics_path=metrics_path)
