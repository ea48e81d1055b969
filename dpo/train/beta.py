"""The KL strength beta over training: fixed, scheduled (linear / cosine from beta0 to beta1), or adaptive.

Adaptive is beta-DPO (Wu et al. 2024, arXiv 2407.08639, Sec. 4): per batch,
    M_i   = (log pi/pi_ref)(y_w) - (log pi/pi_ref)(y_l)        the implicit reward gap of pair i
    M_0, sigma                                                 moving mean / std of M_i (momentum m)
    beta  = beta0 * (1 + alpha * (mean_i M_i - M_0))           Eq. 7, clamped to stay positive
and, optionally, beta-guided data filtering (Eq. 8): keep a fraction rho of the batch, drawn without
replacement with probability proportional to exp(-(M_i - M_0)^2 / (2 sigma^2)), which drops outlier
pairs (often mislabelled ones) from the gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_BETA = 1e-3  # adaptive beta never reaches 0 (the loss would lose its KL anchor)


@dataclass
class BetaController:
    """Gives the beta for the current step; adaptive mode also updates its statistics from each batch."""

    beta0: float
    kind: str = "constant"  # constant | linear | cosine | adaptive
    end: float | None = None  # beta1 for linear / cosine
    alpha: float = 0.6  # adaptive: sensitivity to the batch's gap
    momentum: float = 0.9  # adaptive: moving-average momentum m
    keep_fraction: float = 1.0  # adaptive: rho, share of each batch kept by the data filter
    mean_gap: float | None = None  # M_0
    std_gap: float | None = None  # sigma
    current: float | None = None  # adaptive: the beta of the last training batch (used for evaluation too)

    def scheduled(self, step: int, max_steps: int) -> float:
        """beta at `step` for the fixed and scheduled kinds (adaptive: beta0 before it has seen a batch)."""
        if self.kind == "adaptive":
            return self.current if self.current is not None else self.beta0
        if self.kind == "constant" or self.end is None:
            return self.beta0
        progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
        if self.kind == "linear":
            return self.beta0 + (self.end - self.beta0) * progress
        return self.end + (self.beta0 - self.end) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine

    def adapt(self, gaps: torch.Tensor, generator: torch.Generator | None = None) -> tuple[float, torch.Tensor]:
        """Adaptive beta for one training batch of gaps M_i, and the mask of pairs the filter keeps."""
        gaps = gaps.detach().float()
        batch_mean, batch_std = gaps.mean().item(), gaps.std(unbiased=False).item()
        if self.mean_gap is None:
            self.mean_gap, self.std_gap = batch_mean, batch_std
        else:
            self.mean_gap = self.momentum * self.mean_gap + (1 - self.momentum) * batch_mean
            self.std_gap = self.momentum * self.std_gap + (1 - self.momentum) * batch_std
        keep = torch.ones_like(gaps, dtype=torch.bool)
        n_keep = max(1, round(self.keep_fraction * gaps.numel()))
        if n_keep < gaps.numel():
            sigma = max(self.std_gap, 1e-6)
            weights = torch.exp(-((gaps - self.mean_gap) ** 2) / (2 * sigma**2)).clamp_min(1e-12)
            chosen = torch.multinomial(weights.cpu(), n_keep, replacement=False, generator=generator)
            keep = torch.zeros_like(keep)
            keep[chosen.to(keep.device)] = True
        beta = self.beta0 * (1 + self.alpha * (gaps[keep].mean().item() - self.mean_gap))
        self.current = max(beta, MIN_BETA)
        return self.current, keep
