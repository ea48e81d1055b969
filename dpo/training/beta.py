"""The KL strength beta over training: fixed, scheduled (linear / cosine from beta0 to beta1), or adaptive.

Adaptive is beta-DPO (Wu et al. 2024, arXiv 2407.08639, Sec. 4): per batch,
    M_i   = (log pi/pi_ref)(y_w) - (log pi/pi_ref)(y_l)        the implicit reward gap of pair i
    M_0, sigma                                                 moving mean / std of M_i (momentum m)
    beta  = beta0 * (1 + alpha * (mean_i M_i - M_0))           Eq. 7, clamped to stay positive
and, optionally, beta-guided data filtering (Eq. 8): keep a fraction rho of the batch, drawn without
replacement with probability proportional to exp(-(M_i - M_0)^2 / (2 sigma^2)), which drops outlier
pairs (often mislabelled ones) from the gradient.

The kinds are one table, BETA_SCHEDULES: a kind's recipe keys (`loss.beta_schedule.end`, ...) are the keyword-only
parameters of its beta function, with their constraints, and `adaptive` is a capability of the kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge, Gt, Interval, doc

from dpo.config.signatures import REQUIRED, keyword_parameters

MIN_BETA = 1e-3  # adaptive beta never reaches 0 (the loss would lose its KL anchor)

End = Annotated[float, Gt(0), doc("the final beta: beta at the last step (it starts at loss.beta)")]


def constant(beta0: float, progress: float) -> float:
    return beta0


def linear(beta0: float, progress: float, *, end: End) -> float:
    return beta0 + (end - beta0) * progress


def cosine(beta0: float, progress: float, *, end: End) -> float:
    return end + (beta0 - end) * 0.5 * (1 + math.cos(math.pi * progress))


def adaptive(
    beta0: float,
    progress: float,
    *,
    alpha: Annotated[float, Ge(0), doc("sensitivity to the batch's reward gap")] = 0.6,
    momentum: Annotated[float, Interval(ge=0, lt=1), doc("moving-average momentum m of the gap")] = 0.9,
    keep_fraction: Annotated[
        float, Interval(gt=0, le=1), doc("rho, the share of each batch kept by beta-guided data filtering")
    ] = 1.0,
) -> float:
    """beta before the first training batch; BetaController.adapt moves it with each batch from then on."""
    return beta0


@dataclass(frozen=True)
class BetaSchedule:
    """A kind of `loss.beta_schedule`.

    beta      beta at a point of training, (beta0, progress in [0, 1], **keys) -> beta; its keyword-only
              parameters are the kind's recipe keys, with their constraints and defaults
    summary   what it does (docs)
    adaptive  beta also follows each training batch (BetaController.adapt), which may filter the batch
    moves     beta changes during training: a held-out metric that beta scales is not comparable across evaluations
    """

    beta: Callable[..., float]
    summary: str
    adaptive: bool = False
    moves: bool = True

    @property
    def keys(self) -> dict[str, object]:
        """The recipe keys of this kind with their defaults (signatures.REQUIRED: none)."""
        return keyword_parameters(self.beta)


# The one table of beta schedules: recipe validation, the trainer and the docs read it.
BETA_SCHEDULES: dict[str, BetaSchedule] = {
    "constant": BetaSchedule(constant, "beta = `loss.beta` throughout", moves=False),
    "linear": BetaSchedule(linear, "from `loss.beta` at step 0 to `end` at the last step, linearly"),
    "cosine": BetaSchedule(cosine, "from `loss.beta` at step 0 to `end` at the last step, on a half cosine"),
    "adaptive": BetaSchedule(
        adaptive,
        "beta-DPO (arXiv 2407.08639): per batch, beta = beta0 (1 + alpha (mean gap - moving mean gap)); with "
        "`keep_fraction` < 1 the pairs whose reward gap is far from the moving mean are dropped from the gradient",
        adaptive=True,
    ),
}


def schedule_keys() -> list[str]:
    """Every key some beta schedule takes, in table order."""
    return list(dict.fromkeys(key for schedule in BETA_SCHEDULES.values() for key in schedule.keys))


def markdown_table() -> str:
    """A table of the beta schedules for the docs, built from BETA_SCHEDULES."""
    rows = ["| `loss.beta_schedule.type` | keys (default) | what it does |", "|---|---|---|"]
    for name, schedule in BETA_SCHEDULES.items():
        keys = ", ".join(f"`{k}`" if v is REQUIRED else f"`{k}` ({v})" for k, v in schedule.keys.items())
        rows.append(f"| `{name}` | {keys or '-'} | {schedule.summary} |")
    return "\n".join(rows)


def pairs_kept(keep_fraction: float, batch: int) -> int:
    """How many pairs of a (micro-)batch of `batch` beta-guided data filtering keeps: rho x batch, rounded, >= 1."""
    return max(1, round(keep_fraction * batch))


def smallest_filtered_batch(keep_fraction: float) -> int | None:
    """The smallest (micro-)batch from which `keep_fraction` drops a pair (None for 1: it never does)."""
    if keep_fraction >= 1:
        return None
    batch = max(2, math.floor(0.5 / (1 - keep_fraction)) - 1)  # below 0.5 / (1 - rho) the rounding keeps every pair
    while pairs_kept(keep_fraction, batch) >= batch:
        batch += 1
    return batch


@dataclass
class BetaController:
    """Gives the beta for the current step; adaptive kinds also update their statistics from each batch.

    Its fields are what a checkpoint saves (Trainer.dpo_state): the kind, the keys of the kinds in
    BETA_SCHEDULES (None: not taken, or the kind's default), and the adaptive state."""

    beta0: float
    kind: str = "constant"  # a name in BETA_SCHEDULES
    end: float | None = None  # linear / cosine: beta1
    alpha: float | None = None  # adaptive: sensitivity to the batch's gap
    momentum: float | None = None  # adaptive: moving-average momentum m
    keep_fraction: float | None = None  # adaptive: rho, share of each batch kept by the data filter
    mean_gap: float | None = None  # M_0
    std_gap: float | None = None  # sigma
    current: float | None = None  # adaptive: the beta of the last training batch (used for evaluation too)

    def __post_init__(self):
        for key, default in self.schedule.keys.items():
            if getattr(self, key) is None and default is not REQUIRED:
                setattr(self, key, default)

    @property
    def schedule(self) -> BetaSchedule:
        return BETA_SCHEDULES[self.kind]

    @property
    def adaptive(self) -> bool:
        return self.schedule.adaptive

    def scheduled(self, step: int, max_steps: int) -> float:
        """beta at `step` for the fixed and scheduled kinds (adaptive: beta0 before it has seen a batch)."""
        if self.adaptive and self.current is not None:
            return self.current
        progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
        return self.schedule.beta(self.beta0, progress, **{key: getattr(self, key) for key in self.schedule.keys})

    def adapt(
        self,
        gaps: torch.Tensor,
        generator: torch.Generator | None = None,
        sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[float, torch.Tensor]:
        """Adaptive beta for one training batch of gaps M_i, and the mask of pairs the filter keeps.

        Under data parallelism each process holds a slice of the (micro-)batch: `sum_over_processes` (the
        accelerator's all-reduce, a sum) makes the statistics and the beta those of the whole batch, the same on every
        process. Each process filters its own slice, so with keep_fraction < 1 the pairs kept (each slice's share
        rounded) may differ from what one process with the whole batch keeps; with keep_fraction 1 the beta is
        exactly that one process's."""
        all_processes = sum_over_processes or (lambda t: t)
        gaps = gaps.detach().double()
        count, sum_, sum_sq = all_processes(torch.stack([gaps.new_tensor(gaps.numel()), gaps.sum(), gaps.pow(2).sum()]))
        batch_mean = (sum_ / count).item()
        batch_std = (sum_sq / count - (sum_ / count) ** 2).clamp_min(0).sqrt().item()  # the population std
        if self.mean_gap is None:
            self.mean_gap, self.std_gap = batch_mean, batch_std
        else:
            self.mean_gap = self.momentum * self.mean_gap + (1 - self.momentum) * batch_mean
            self.std_gap = self.momentum * self.std_gap + (1 - self.momentum) * batch_std
        keep = torch.ones_like(gaps, dtype=torch.bool)
        n_keep = pairs_kept(self.keep_fraction, gaps.numel())
        if n_keep < gaps.numel():
            sigma = max(self.std_gap, 1e-6)
            weights = torch.exp(-((gaps - self.mean_gap) ** 2) / (2 * sigma**2)).clamp_min(1e-12)
            chosen = torch.multinomial(weights.cpu(), n_keep, replacement=False, generator=generator)
            keep = torch.zeros_like(keep)
            keep[chosen.to(keep.device)] = True
        kept_count, kept_sum = all_processes(torch.stack([keep.sum().to(gaps.dtype), gaps[keep].sum()]))
        beta = self.beta0 * (1 + self.alpha * ((kept_sum / kept_count).item() - self.mean_gap))
        self.current = max(beta, MIN_BETA)
        return self.current, keep
