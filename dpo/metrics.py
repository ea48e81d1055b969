"""The metrics a run logs to metrics.jsonl: one table, and everything derived from it.

Each row is one name as the trainer logs it during training (`rewards/margins`); its held-out value, logged at
every evaluation, is the same name with `eval_` in front (`eval_rewards/margins`). A row says where the name is
logged (train steps, evaluations, or both), what it means, which direction is better (None where neither is, as for
logits or the learning rate), whether it is a headline number, and which chart of report.html draws it.

Read by: early stopping and reduce-on-plateau (the names they may watch and the direction under `mode: auto`), the
sweep objective (its default direction), the overfitting diagnostics (the train counterpart of a held-out metric),
the trainer (the train-minus-held-out gaps), the progress line, the console summary, report.html (its charts and
headline table) and the wandb summary (the headline numbers of the best step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HELD_OUT_PREFIX = "eval_"
# The standard error of a per-pair held-out metric is logged as eval_se/<name> (dpo/noise.py says how it is used).
STANDARD_ERROR_PREFIX = "se/"

# Where a name is logged: in the events of train steps (as `name`), of evaluations (as `eval_` + name), or both.
TRAIN, HELD_OUT, BOTH = "train", "held-out", "both"

# Keys every metrics.jsonl event carries besides its metrics: the x axes, not measurements.
EVENT_KEYS = ("step", "epoch")

Direction = Literal["max", "min"]

# The implicit reward that rewards/* hold, by the name summary.json gives it ("implicit_reward"); `dpo eval`
# recomputes the one the run trained. A loss with a reference is scored by its log-ratio; the reference-free losses
# (SimPO, ORPO) by the length-normalised log-prob they train on, as TRL's CPO and ORPO trainers log it.
IMPLICIT_REWARDS = {
    "log_ratio": "beta * log pi(y|x)/pi_ref(y|x), the DPO implicit reward (every loss with a reference)",
    "per_token": "beta * log pi(y|x) / |y|, |y| the answer's token count (reference-free losses: SimPO, ORPO)",
}


def implicit_reward_of(needs_reference: bool) -> str:
    """The IMPLICIT_REWARDS name of a loss plan's reward: the log-ratio where it has a reference model."""
    return "log_ratio" if needs_reference else "per_token"


@dataclass(frozen=True)
class Metric:
    name: str  # as logged in train events; held-out: HELD_OUT_PREFIX + name
    meaning: str
    direction: Direction | None  # which way is better; None: neither (a setting, a counter, a raw statistic)
    logged: str = BOTH  # TRAIN, HELD_OUT or BOTH
    headline: bool = False  # console summary, progress line, report headline table, wandb summary
    chart: str | None = None  # title of the report.html chart that draws it
    series: str | None = None  # its legend name on a chart it shares with related metrics ("chosen", "rejected")
    watchable: bool = True  # early stopping, reduce-on-plateau and a sweep objective may watch its held-out value
    gap_of: str | None = None  # a gap: how much better the train metric `gap_of` is than its held-out value
    per_pair: bool = False  # a mean over held-out pairs: its standard error is logged as eval_se/<name> (dpo/noise.py)
    chance: float | None = None  # its value for a policy that guesses (an accuracy: 0.5); see dpo/noise.py
    needs_reference: bool = False  # logged only when the loss plan has a reference model (not for simpo, orpo)
    # beta multiplies it (a reward, a margin, a loss of beta times a log-ratio): under a beta that moves during
    # training its values at two evaluations differ even where the model did not change
    scales_with_beta: bool = False

    @property
    def held_out_name(self) -> str:
        return HELD_OUT_PREFIX + self.name

    @property
    def in_train(self) -> bool:
        return self.logged in (TRAIN, BOTH)

    @property
    def in_held_out(self) -> bool:
        return self.logged in (HELD_OUT, BOTH)


_LOGPS_CHART = "Log-probs of chosen and rejected answers"
_REWARDS_CHART = "Rewards of chosen and rejected answers"
_LOGRATIOS_CHART = "log pi/pi_ref (< 0 for chosen: likelihood displacement)"
_GAP_CHART = "Train minus held-out gap"

# Row order is the order of the report's charts (a chart sits where its first row is) and of the headline numbers.
METRICS: tuple[Metric, ...] = (
    # TRL's names, computed by our trainer the way TRL computes them
    Metric(
        "loss",
        "loss of the configured loss terms",
        "min",
        headline=True,
        chart="Loss",
        per_pair=True,
        scales_with_beta=True,
    ),
    Metric(
        "rewards/margins",
        "mean implicit reward of chosen minus rejected (beta * log-ratio, or per-token log-prob, difference)",
        "max",
        headline=True,
        chart="Reward margin (chosen - rejected)",
        per_pair=True,
        scales_with_beta=True,
    ),
    Metric(
        "rewards/accuracies",
        "share of pairs whose implicit reward is higher for the chosen answer",
        "max",
        headline=True,
        chart="Reward accuracy",
        per_pair=True,
        chance=0.5,
    ),
    # ours: unlike rewards/accuracies, meaningful at step 0 too
    Metric(
        "logps/accuracies",
        "share of pairs where the policy itself gives the chosen answer the higher log-prob",
        "max",
        headline=True,
        chart="The policy's own preference (log-prob accuracy)",
        per_pair=True,
        chance=0.5,
    ),
    # the chosen answers should gain likelihood and reward and the rejected ones lose them: lower is better there
    Metric(
        "logps/chosen",
        "mean log-prob of the chosen answers under the policy",
        "max",
        chart=_LOGPS_CHART,
        series="chosen",
        per_pair=True,
    ),
    Metric(
        "logps/rejected",
        "mean log-prob of the rejected answers under the policy",
        "min",
        chart=_LOGPS_CHART,
        series="rejected",
        per_pair=True,
    ),
    Metric(
        "rewards/chosen",
        "mean implicit reward of the chosen answers",
        "max",
        chart=_REWARDS_CHART,
        series="chosen",
        per_pair=True,
        scales_with_beta=True,
    ),
    Metric(
        "rewards/rejected",
        "mean implicit reward of the rejected answers",
        "min",
        chart=_REWARDS_CHART,
        series="rejected",
        per_pair=True,
        scales_with_beta=True,
    ),
    # ours
    Metric(
        "logratios/chosen",
        "mean log pi/pi_ref of the chosen answers (< 0: likelihood displacement)",
        "max",
        chart=_LOGRATIOS_CHART,
        series="chosen",
        per_pair=True,
        needs_reference=True,
    ),
    Metric(
        "logratios/rejected",
        "mean log pi/pi_ref of the rejected answers",
        "min",
        chart=_LOGRATIOS_CHART,
        series="rejected",
        per_pair=True,
        needs_reference=True,
    ),
    Metric(
        "kl",
        "KL(policy || reference) summed over each answer's tokens, mean over the answers of the first "
        "logging.heldout_kl_pairs held-out pairs (default 16; null: all) (nats)",
        "min",
        logged=HELD_OUT,
        chart="KL(policy || reference) on the first logging.heldout_kl_pairs held-out pairs, nats per answer",
        per_pair=True,
        needs_reference=True,
    ),
    # Positive gap = the model does better on what it trained on than on held-out data; train values are averaged
    # over the steps since the previous evaluation.
    Metric(
        "gap/accuracies",
        "train minus held-out reward accuracy",
        "min",
        logged=HELD_OUT,
        chart=_GAP_CHART,
        series="accuracy gap",
        gap_of="rewards/accuracies",
    ),
    Metric(
        "gap/margins",
        "train minus held-out reward margin",
        "min",
        logged=HELD_OUT,
        chart=_GAP_CHART,
        series="margin gap",
        gap_of="rewards/margins",
        scales_with_beta=True,
    ),
    Metric(
        "gap/loss",
        "held-out minus train loss (the preference loss: a mixture of experts' router loss is in neither)",
        "min",
        logged=HELD_OUT,
        chart=_GAP_CHART,
        series="loss gap",
        gap_of="loss",
        scales_with_beta=True,
    ),
    Metric("beta", "the DPO beta in use (scheduled or adaptive)", None, chart="beta", watchable=False),
    Metric("learning_rate", "the optimizer's learning rate", None, logged=TRAIN, chart="Learning rate"),
    # TRL's statistics of the policy's token distributions; only top-1 accuracy on chosen answers has a better way
    Metric("logits/chosen", "mean logit over the chosen answers' tokens", None),
    Metric("logits/rejected", "mean logit over the rejected answers' tokens", None),
    Metric("entropy", "mean token entropy of the policy over the answers", None),
    Metric("mean_token_accuracy", "share of chosen-answer tokens that are the policy's top-1 token", "max"),
    Metric("num_tokens", "tokens trained on so far (prompt and answers)", None, watchable=False),
    # transformers' names
    Metric("grad_norm", "gradient norm before clipping", None, logged=TRAIN),
    Metric("runtime", "seconds the evaluation took", None, logged=HELD_OUT, watchable=False),
    Metric("samples_per_second", "held-out pairs evaluated per second", None, logged=HELD_OUT, watchable=False),
    Metric("steps_per_second", "evaluation batches per second", None, logged=HELD_OUT, watchable=False),
    Metric(
        "model_preparation_time",
        "seconds spent preparing the model for evaluation",
        None,
        logged=HELD_OUT,
        watchable=False,
    ),
    # transformers' end-of-training event
    Metric("train_loss", "mean train loss over every step of the run", "min", logged=TRAIN),
    Metric("train_runtime", "seconds of training (all attempts of a resumed run)", None, logged=TRAIN),
    Metric(
        "train_samples_per_second", "pairs trained on per second (a resumed run: its last attempt)", None, logged=TRAIN
    ),
    Metric(
        "train_steps_per_second", "optimizer steps per second (a resumed run: its last attempt)", None, logged=TRAIN
    ),
    Metric("total_flos", "floating-point operations of training, as transformers counts them", None, logged=TRAIN),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

# The held-out metrics early_stopping.metric, reduce-on-plateau and a sweep objective may name, with their meaning.
EVAL_METRICS: dict[str, str] = {m.held_out_name: m.meaning for m in METRICS if m.in_held_out and m.watchable}

# The held-out numbers a person checks first: console summary, progress line, report headline, wandb summary.
HEADLINE: tuple[str, ...] = tuple(m.held_out_name for m in METRICS if m.headline and m.in_held_out)


def headline_values(summary: dict) -> list[tuple[str, list]]:
    """Each headline held-out metric with its values at step 0, at the best step and at the end, as summary.json
    records them (`initial_metrics`, `best_metrics`, `final_metrics`): the table the console, the report, the
    comparison page and the model card show. None where a value, or a whole part (null, or not an object), is
    missing."""
    parts = [summary.get(key) for key in ("initial_metrics", "best_metrics", "final_metrics")]
    parts = [part if isinstance(part, dict) else {} for part in parts]
    return [(name, [part.get(name) for part in parts]) for name in HEADLINE]


# The held-out metrics that are means over pairs: the trainer logs each one's standard error (eval_se/<name>).
PER_PAIR: tuple[str, ...] = tuple(m.name for m in METRICS if m.per_pair and m.in_held_out)

# The train-minus-held-out gaps the trainer logs at each evaluation: train metric -> gap metric.
GAPS: dict[str, str] = {m.gap_of: m.name for m in METRICS if m.gap_of}


def standard_error_key(metric: str) -> str:
    """The metrics.jsonl key of the standard error of held-out `metric`: eval_loss -> eval_se/loss."""
    return HELD_OUT_PREFIX + STANDARD_ERROR_PREFIX + metric.removeprefix(HELD_OUT_PREFIX)


def chance_level(metric: str) -> float | None:
    """The value of held-out `metric` for a policy that guesses (0.5 for an accuracy), or None."""
    row = lookup(metric)
    return row.chance if row is not None else None


def lookup(key: str) -> Metric | None:
    """The row of a metrics.jsonl key (`rewards/margins` or `eval_rewards/margins`); None if it is not a metric.

    `eval_se/<name>`, the standard error of a per-pair held-out metric, gets a row made from its metric's."""
    if key.startswith(HELD_OUT_PREFIX + STANDARD_ERROR_PREFIX):
        measured = lookup(HELD_OUT_PREFIX + key.removeprefix(HELD_OUT_PREFIX + STANDARD_ERROR_PREFIX))
        if measured is None or not measured.per_pair:
            return None
        name = STANDARD_ERROR_PREFIX + measured.name
        meaning = f"standard error of the held-out {measured.name} over pairs"
        return Metric(name, meaning, None, HELD_OUT, watchable=False)
    if key.startswith(HELD_OUT_PREFIX):
        metric = BY_NAME.get(key.removeprefix(HELD_OUT_PREFIX))
        return metric if metric is not None and metric.in_held_out else None
    metric = BY_NAME.get(key)
    return metric if metric is not None and metric.in_train else None


def direction(metric: str, mode: str = "auto") -> Direction:
    """'max' or 'min' for the held-out `metric`: `mode` when it says which, else the table's direction.

    Raises ValueError for a metric without one under mode auto (one the table does not know, such as a metric a
    user callback adds, or one without a better direction); the recipe gate reports that on early_stopping.mode.
    """
    if mode != "auto":
        return mode
    found = known_direction(metric)
    if found is None:
        raise ValueError(f"{metric} has no known better direction; say max or min")
    return found


def known_direction(key: str) -> Direction | None:
    """The table's better direction of a metrics.jsonl key, or None (not in the table, or neither way is better)."""
    metric = lookup(key)
    return metric.direction if metric is not None else None


def train_counterpart(metric: str) -> str | None:
    """The train name of a held-out metric (`eval_loss` -> `loss`), or None when it is only logged held-out."""
    row = lookup(metric)
    return row.name if row is not None and metric.startswith(HELD_OUT_PREFIX) and row.in_train else None


def gap_sign(train_metric: str) -> int:
    """+1 when higher is better for `train_metric`, -1 when lower is: a gap is positive when train does better."""
    return 1 if BY_NAME[train_metric].direction == "max" else -1
