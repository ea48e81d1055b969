"""Reduce-on-plateau that knows its metric's noise: torch's ReduceLROnPlateau under the rule of dpo/noise.py.

transformers steps a plateau scheduler after each evaluation with the watched metric's value only; our trainer
(dpo/training/trainer.py `_evaluate`) steps this one itself, with the value and its standard error. An evaluation
counts as an improvement only when it beats the best by torch's `threshold` and by k standard errors, and no
evaluation counts as bad while the best value is not clearly beyond where the run started (its step-0 evaluation,
or chance for an accuracy): cutting the learning rate before anything is learned only slows learning.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import ReduceLROnPlateau

from dpo.noise import NoiseRule


class NoiseAwarePlateau(ReduceLROnPlateau):
    """ReduceLROnPlateau(optimizer, **kwargs) whose `step(value, error=...)` applies the noise rule to `metric`
    with k = `noise_sigmas` (0: torch's own rule). `start`: the metric at the step-0 evaluation, where the run
    started (None: the first value it is stepped with, an evaluation after some training). Its state (state_dict)
    holds plain numbers only."""

    def __init__(self, optimizer, metric: str, noise_sigmas: float, start: float | None = None, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.metric, self.noise_sigmas = metric, noise_sigmas
        self.first: float | None = start  # where the run started
        self.best_error = 0.0
        self.looks = 0

    def step(self, metrics, epoch=None, error: float = 0.0) -> None:  # type: ignore[override]
        del epoch  # deprecated in torch; evaluations are counted
        current = float(metrics)
        rule = NoiseRule(self.metric, self.mode, self.noise_sigmas)
        self.last_epoch += 1
        self.looks += 1
        if self.first is None:
            self.first = current
        best = self.best if math.isfinite(self.best) else None
        if self._is_better(current, self.best) and rule.improves(current, best, error):
            self.best, self.best_error, self.num_bad_epochs = current, error, 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # torch's rule: bad evaluations in the cooldown do not count
        if not rule.learned(self.first, best if best is not None else self.best, self.best_error, self.looks):
            self.num_bad_epochs = 0  # nothing learned yet: no plateau to leave
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(self.last_epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
