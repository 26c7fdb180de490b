"""The Optuna sampler a spec names, seeded, in a form Tune can drive and pickle.

Tune's searcher asks and tells outside `study.optimize` and pickles the sampler in each experiment
snapshot; two of Optuna's samplers need a small change for that (below).
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

from tuner import space
from tuner.spec import Spec


def sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler, seeded here: OptunaSearch ignores `seed` once given a sampler."""
    search = spec.search
    startup: dict[str, Any] = {} if search.n_startup_trials is None else {"n_startup_trials": search.n_startup_trials}
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, **startup)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed, **startup)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed, **startup)
    if search.sampler == "nsga2":  # its first generation is its random start-up
        population: dict[str, Any] = ({} if search.n_startup_trials is None
                                      else {"population_size": search.n_startup_trials})
        return TuneNSGAIISampler(seed=search.seed, **population)
    if search.sampler == "grid":
        return TuneGridSampler(space.grid(spec), seed=search.seed)
    return optuna.samplers.QMCSampler(seed=search.seed, scramble=True)


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, less its stop: once the last point is told it calls `study.stop()`,
    which only works inside `study.optimize` and raises anywhere else, as in Tune's searcher. Tune
    stops the sweep itself, at `num_samples` (the grid's size)."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


class TuneNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: it holds a thread lock (`_thread_lock`, guarding its generation
    cache), which cannot be pickled; the snapshot leaves it out and a restored sampler makes its own."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()
