"""How many preference labels are flipped, and which: a cross-fitted linear reward model and a mirrored mixture.

Pure functions of tensors (torch only); dpo/training/audit.py feeds them the features of a frozen model.

1. `cross_fitted_margins`: a Bradley-Terry reward model r(x) = w . f(x), linear in per-answer features f, is fitted
   by L2-regularised logistic regression on the feature differences d = f(chosen) - f(rejected) of the labels as
   given (noisy), K-fold and seeded, so that every pair is scored by a model that never saw it (cross-fitting: a
   model that saw a flipped pair would have learnt it). The L2 strength is picked by cross-validation.
   Under symmetric label noise the logistic fit keeps the clean direction of w (its scale shrinks), so the
   out-of-fold margin m = w . d is large and positive for pairs the model finds right, negative for suspects.
2. `fit_flip_mixture`: the margins of clean pairs follow some distribution D with positive mean; a flipped pair's
   margin is the negative of what its clean label would give, so the observed margins follow the mirrored mixture
   (1 - e) D(m) + e D(-m). With D = N(mu, sigma^2), EM gives e, mu, sigma and each pair's posterior probability
   of being flipped (its E-step responsibility). The profile likelihood of e gives its interval.

Assumptions (docs/audit.md says when they fail): flips are symmetric and independent of the content (random
annotator mistakes, not a systematic bias the model shares); the features carry the preference well enough that
clean margins sit away from zero (e is identifiable only through that separation: `separation` = mu / sigma);
clean margins are roughly Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FOLDS = 5
MIN_PAIRS = 2 * FOLDS  # every fold needs pairs to fit on and pairs to score


def check_auditable(loaded, pairs: list[dict]) -> None:
    """The audit's own requirement of the data, checked by the gate (dpo/training/gate.py) before anything is
    written, and again by the audit itself (`dpo data audit`)."""
    from dpo.errors import UserError

    if len(pairs) < MIN_PAIRS:
        raise UserError(
            f"the audit needs at least {MIN_PAIRS} training pairs ({FOLDS} folds), the data have {len(pairs)}",
            where=loaded.where("data.train"),
        )


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # per-pair L2 strengths tried by the inner cross-validation
EM_ITERATIONS = 500
EM_TOLERANCE = 1e-7  # EM stops when no parameter moves by more than this (relative to sigma)
PROFILE_POINTS = 51  # flip rates 0, 0.01, ..., 0.5 at which the profile likelihood is computed
EM_STARTS = (0.05, 0.2, 0.35, 0.45)  # flip rates EM starts from; the best likelihood wins


def _standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Scale each difference feature by its root mean square on the training folds. No centering: the reward
    model is antisymmetric (swapping chosen and rejected negates d and must negate the margin)."""
    scale = train.pow(2).mean(0).sqrt().clamp_min(1e-8)
    return (train / scale, *(o / scale for o in others))


def fit_reward(diffs: Tensor, l2: float, iterations: int = 100) -> Tensor:
    """w minimising mean(softplus(-w . d)) + l2/2 |w|^2: Bradley-Terry with every label as given (chosen wins)."""
    w = torch.zeros(diffs.shape[1], dtype=diffs.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(diffs @ w)).mean() + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def _folds(n: int, k: int, generator: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=generator).chunk(k))


def _choose(diffs: Tensor, k: int, generator: torch.Generator, feature_sets: dict[str, Tensor]) -> tuple[str, float]:
    """The feature set and L2 strength with the best inner out-of-fold log-likelihood of the labels as given."""
    folds = _folds(len(diffs), k, generator)
    best, best_ll = (next(iter(feature_sets)), L2_GRID[0]), -float("inf")
    for name, columns in feature_sets.items():
        for l2 in L2_GRID:
            ll = 0.0
            for held in folds:
                mask = torch.ones(len(diffs), dtype=torch.bool)
                mask[held] = False
                train, test = _standardize(diffs[mask][:, columns], diffs[held][:, columns])
                ll += -torch.nn.functional.softplus(-(test @ fit_reward(train, l2))).sum().item()
            if ll > best_ll:
                best, best_ll = (name, l2), ll
    return best


def cross_fitted_margins(
    diffs: Tensor, seed: int, folds: int = 5, feature_sets: dict[str, Tensor] | None = None
) -> tuple[Tensor, dict]:
    """Each pair's margin w . d under a reward model fitted on the other folds, and the model chosen. `feature_sets`
    (name -> column indices; default: all columns) are candidate feature subsets; the subset and the L2 strength are
    chosen by an inner cross-validation over all pairs."""
    diffs = diffs.double()
    generator = torch.Generator().manual_seed(seed)
    feature_sets = feature_sets or {"all": torch.arange(diffs.shape[1])}
    # Picked once on all pairs, not per fold: two scalars cannot memorise a pair, and it saves K-fold the fits.
    name, l2 = _choose(diffs, folds, generator, feature_sets)
    diffs = diffs[:, feature_sets[name]]
    margins = torch.empty(len(diffs), dtype=diffs.dtype)
    for held in _folds(len(diffs), folds, generator):
        mask = torch.ones(len(diffs), dtype=torch.bool)
        mask[held] = False
        train, test = _standardize(diffs[mask], diffs[held])
        margins[held] = test @ fit_reward(train, l2)
    return margins, {"features": name, "l2": l2}


def _normal_log_pdf(x: Tensor, mean: Tensor, sigma: Tensor) -> Tensor:
    return -0.5 * ((x - mean) / sigma).pow(2) - sigma.log()


def _em_from(
    m: Tensor, e: Tensor, mu: Tensor, sigma: Tensor, iterations: int, fixed_e: bool = False
) -> tuple[Tensor, ...]:
    """EM for (1 - e) N(mu, sigma) + e N(-mu, sigma) from one start, batched over the rows of `m` (B, N); with
    `fixed_e` only mu and sigma move (the profile likelihood of e). Returns e, mu, sigma (B,), the log-odds of the
    responsibilities, log P(flipped | m) / P(clean | m) (B, N), and the mean log-likelihood (B,)."""
    for step in range(iterations + 1):
        log_clean = (1 - e).log()[:, None] + _normal_log_pdf(m, mu[:, None], sigma[:, None])
        log_flip = e.clamp_min(1e-12).log()[:, None] + _normal_log_pdf(m, -mu[:, None], sigma[:, None])
        log_odds = log_flip - log_clean
        r = torch.sigmoid(log_odds)
        if step == iterations:
            break
        before = torch.stack([e, mu, sigma])
        if not fixed_e:
            e = r.mean(1).clamp(0.0, 0.5)
        mu = ((1 - 2 * r) * m).mean(1)
        sigma = ((1 - r) * (m - mu[:, None]).pow(2) + r * (m + mu[:, None]).pow(2)).mean(1).sqrt().clamp_min(1e-8)
        if (torch.stack([e, mu, sigma]) - before).abs().max() < EM_TOLERANCE * sigma.min():
            iterations = step + 1  # converged: one more E-step for the final responsibilities
    return e, mu, sigma, log_odds, torch.logaddexp(log_clean, log_flip).mean(1)


def _em(margins: Tensor, iterations: int = EM_ITERATIONS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The mirrored mixture's maximum-likelihood fit over several starts (EM finds local optima: from a small
    start e, a high flip rate can collapse into mu ~ 0). Returns e, mu, sigma (B,) and the log-odds of
    P(flipped | m) (B, N)."""
    m = margins
    best = None
    for start in EM_STARTS:
        e0 = torch.full(m.shape[:1], start, dtype=m.dtype)
        mu0 = m.mean(1).clamp_min(0) / (1 - 2 * start) + 0.1 * m.std(1)  # E[m] = (1 - 2e) mu
        sigma0 = m.std(1).clamp_min(1e-8)
        fit = _em_from(m, e0, mu0, sigma0, iterations)
        if best is None:
            best = fit
        else:
            better = fit[4] > best[4]
            pick = [better if a.dim() == 1 else better[:, None] for a in fit]
            best = tuple(torch.where(w, a, b) for w, a, b in zip(pick, fit, best, strict=True))
    return best[:4]


@dataclass
class FlipMixture:
    """The fitted mirrored mixture: flip rate `estimate` with its likelihood-ratio interval [low, high], the clean
    margins' mean and spread, and per pair, in input order: its posterior probability of being flipped, the log-odds
    of it (float64, unrounded: where p saturates at 1 they still order the pairs) and the margin it was fitted to."""

    estimate: float
    low: float
    high: float
    mu: float
    sigma: float
    p_flipped: Tensor
    log_odds: Tensor
    margins: Tensor

    def ranking(self) -> list[int]:
        """Pair indices, most suspect first: by the posterior's log-odds, logit(e) - 2 mu m / sigma^2, so by margin
        where p itself rounds (or saturates) to 1; ties (equal margins) in input order, so the ranking is stable."""
        log_odds = self.log_odds.tolist()
        return sorted(range(len(log_odds)), key=lambda i: (-log_odds[i], i))

    @property
    def separation(self) -> float:
        """mu / sigma: how far clean margins sit from zero, in their spread. Near 0: the model cannot tell the
        answers apart, and the estimate says nothing (its interval is then wide)."""
        return self.mu / self.sigma


def profile_log_likelihood(margins: Tensor, grid: Tensor, mu: float, sigma: float) -> Tensor:
    """Total log-likelihood of `margins` at each flip rate of `grid`, maximised over mu and sigma (EM with e held,
    started from the best fit's mu and sigma)."""
    m = margins.double()[None, :].expand(len(grid), -1)
    start = torch.ones(len(grid), dtype=torch.float64)
    ll = _em_from(m, grid.double(), mu * start, sigma * start, EM_ITERATIONS, fixed_e=True)[4]
    return ll * margins.shape[0]


def fit_flip_mixture(margins: Tensor, level: float = 0.95) -> FlipMixture:
    """The mirrored mixture fitted to `margins` by maximum likelihood. The interval holds the flip rates whose
    profile likelihood is within the chi-square(1) cut of the best (the likelihood-ratio interval): where the
    margins cannot tell a flip rate from another, it is wide, as it should be."""
    e, mu, sigma, log_odds = _em(margins.double()[None, :])
    grid = torch.linspace(0.0, 0.5, PROFILE_POINTS, dtype=torch.float64)
    profile = profile_log_likelihood(margins, grid, mu.item(), sigma.item())
    best = max(profile.max().item(), _em_from(margins.double()[None], e, mu, sigma, 0)[4].item() * len(margins))
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2)).item()
    cut = z * z / 2  # half the chi-square(1) quantile: a chi2(1) variable is a squared standard normal
    estimate = e.item()
    low, high = _crossings(margins, grid, profile, best - cut, estimate, mu.item(), sigma.item())
    return FlipMixture(
        estimate=estimate,
        low=low,
        high=high,
        mu=mu.item(),
        sigma=sigma.item(),
        p_flipped=torch.sigmoid(log_odds[0]),
        log_odds=log_odds[0],
        margins=margins.double(),
    )


BISECTIONS = 12  # halvings of a grid step (0.01) for each end of the interval: to within 2.5e-6


def _crossings(margins: Tensor, grid: Tensor, profile: Tensor, level: float, estimate: float, mu: float,
               sigma: float) -> tuple[float, float]:  # fmt: skip
    """The interval's ends: where the profile log-likelihood crosses `level` below and above the inside flip rates
    (the grid points at or above it, and the estimate). Each crossing lies between the outermost inside point and its
    outer grid neighbour; it is found by bisection on the profile (both ends in one batched EM per halving), and the
    outer end of the last bracket is reported, so the interval never shrinks below the true one by the bisection's
    error. An end with no grid point beyond it is the range's end (0 or 0.5). Reporting the inside grid points
    instead cut up to a grid step (0.01) off each side, and an estimate of 0 with good separation got [0, 0]."""
    inside = [*grid[profile >= level].tolist(), estimate]
    values = grid.tolist()
    lo_in, hi_in = min(inside), max(inside)
    below = [g for g in values if g < lo_in]
    above = [g for g in values if g > hi_in]
    if not below and not above:
        return lo_in, hi_in
    # brackets (inside, outside): the crossing lies between; a missing side keeps its inside end, and is not moved
    inner = torch.tensor([lo_in, hi_in], dtype=torch.float64)
    outer = torch.tensor([below[-1] if below else lo_in, above[0] if above else hi_in], dtype=torch.float64)
    for _ in range(BISECTIONS):
        middle = (inner + outer) / 2
        within = profile_log_likelihood(margins, middle, mu, sigma) >= level
        inner, outer = torch.where(within, middle, inner), torch.where(within, outer, middle)
    low, high = outer.tolist()
    return min(max(low, 0.0), estimate), max(min(high, 0.5), estimate)
