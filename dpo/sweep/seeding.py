"""Samplers whose random draws depend on (the spec's seed, the trial's number) alone.

optuna's RandomSampler and TPESampler draw from one random stream seeded once, when the sampler is built. Every
`dpo sweep` process builds its own, so a resumed sweep (or a second machine on a shared --storage) would start
that stream again: its first new trial would repeat trial 0's parameters, the next trial 1's, and so on. With
--workers N optuna also reseeds the stream from the clock in each worker thread (`reseed_rng`), so the seed had
no effect. Here each trial gets its own stream, seeded from (seed, trial number) in `before_trial` (optuna calls it
from `study.ask`, in the thread that then samples the trial): trial N draws the same values in every process,
and no two trials share a stream.

The grid sampler needs none of this: it shuffles the grid once from the seed (the same order in every process)
and gives trial N < grid size point N; later trials (numbers taken by retries) take points not yet visited.

The subclasses keep optuna's names; their options are optuna's, checked against optuna's classes (spec.py).
"""

from __future__ import annotations

import threading

import numpy as np
import optuna

# One stream per sampler that draws in a trial: TPE samples its first trials through a RandomSampler of its own.
RANDOM_STREAM, TPE_STREAM = 0, 1


class TrialRandomState:
    """Stands in for optuna's LazyRandomState (its `rng` attribute): a RandomState per thread, seeded per trial.

    Per thread because --workers runs trials in threads that share one sampler: a trial seeding a shared state
    while another trial samples from it would hand the second trial the first one's draws."""

    def __init__(self, seed: int, stream: int) -> None:
        self._seed = seed
        self._stream = stream
        self._local = threading.local()

    def start_trial(self, number: int) -> None:
        state = np.random.SeedSequence([self._seed, number, self._stream]).generate_state(1)[0]
        self._local.rng = np.random.RandomState(state)

    @property
    def rng(self) -> np.random.RandomState:
        if getattr(self._local, "rng", None) is None:  # a draw outside any trial (optuna 5 makes none): seeded too
            self._local.rng = np.random.RandomState(
                np.random.SeedSequence([self._seed, self._stream]).generate_state(1)[0]
            )
        return self._local.rng


class RandomSampler(optuna.samplers.RandomSampler):
    """optuna's RandomSampler, each trial's draws seeded from (seed, trial number)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._rng = TrialRandomState(seed, RANDOM_STREAM)

    def reseed_rng(self) -> None:
        """Nothing to do: each trial is seeded in `before_trial` (optuna calls this per --workers thread)."""

    def before_trial(self, study, trial) -> None:
        self._rng.start_trial(trial.number)
        super().before_trial(study, trial)


class TPESampler(optuna.samplers.TPESampler):
    """optuna's TPESampler (options as optuna's), each trial's draws seeded from (seed, trial number): its random
    first trials, and its draws of candidates after them."""

    def __init__(self, *, seed: int, **options) -> None:
        super().__init__(seed=seed, **options)
        self._rng = TrialRandomState(seed, TPE_STREAM)
        self._random_sampler = RandomSampler(seed=seed)  # its before_trial seeds it (TPE's calls it)

    def reseed_rng(self) -> None:
        """Nothing to do: each trial is seeded in `before_trial` (optuna calls this per --workers thread)."""

    def before_trial(self, study, trial) -> None:
        self._rng.start_trial(trial.number)
        super().before_trial(study, trial)
