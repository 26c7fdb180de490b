"""The searcher: Ray Tune's `OptunaSearch`, telling Optuna the truth about how each trial ended.

Imported by the driver only (it imports Ray); the study's files are `study`'s.
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any, cast

import optuna
from ray.train._internal.storage import get_fs_and_path
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from tuner import constants as C
from tuner import records, space, study, warmstart
from tuner.interrupt import Interrupt
from tuner.samplers import sampler
from tuner.spec import Spec

log = logging.getLogger("tuner")


def classify(result: dict[str, Any] | None, error: bool) -> str:
    """A finished trial's status from its last result (annotated by the ledger)."""
    if error:
        return C.FAILED
    status = (result or {}).get(C.TRIAL_STATUS, C.RUNNING)
    return C.STOPPED_BUDGET if status == C.RUNNING else status


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that records how a trial really ended.

    Ray's tells Optuna every ended trial is COMPLETE with its last value: that teaches TPE from
    early-rung losses and counts failures as results. Here scheduler stops are PRUNED (with their
    intermediate values, by tokens seen), failed, diverged and cut-off trials FAIL, and a completed
    trial's value is its best report, the checkpoint promotion would take. With several objectives
    (Optuna prunes none of those, and takes no intermediate values) a completed trial's values are
    those of its best report on the first objective, the others from that same report.

    `limit` caps the trials this experiment suggests in all: a restored experiment whose dead driver
    finished trials after Tune's last snapshot keeps their records, so it suggests that many fewer.
    """

    # The study: None until OptunaSearch's `_setup_study`, which runs before any trial is suggested (the
    # sweep gives the metric and mode up front), so every method here sees one; `restore` brings the
    # snapshot's. Ray leaves the attribute unannotated, so mypy takes its type, None, from __init__.
    _ot_study: optuna.Study  # type: ignore[assignment]

    def __init__(self, *args: Any, limit: int | None = None, sweep_id: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limit, self.sweep_id = limit, sweep_id

    def suggest(self, trial_id: str):
        if self.limit is not None and trial_id not in self._ot_trials and len(self._ot_trials) >= self.limit:
            return Searcher.FINISHED
        params = super().suggest(trial_id)
        if params is not None:
            self._ot_trials[trial_id].set_user_attr(study.RAY_TRIAL_ID, trial_id)
        return params

    @property
    def multi(self) -> bool:
        """Several objectives (`search.metrics`): Optuna takes no intermediate values for them."""
        return isinstance(self.metric, list)

    @property
    def metrics(self) -> list[str]:
        """The objectives' names, when `multi`: Ray keeps their list in `metric`, which it types as one name."""
        return cast("list[str]", self.metric)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(C.REPEAT) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return  # a closing copy of a report already told, or a trial told already
        if self.multi:
            self._keep_best(trial_id, result)
            return
        value = result.get(self.metric)
        if records.finite(value):
            self._ot_trials[trial_id].report(value, int(result[C.TOKENS_SEEN]))

    def _keep_best(self, trial_id: str, result: dict) -> None:
        """Several objectives: the values of the trial's best report on the first so far, kept on the
        study's trial (a user attribute: it outlives this driver), where `trial.report` would keep one."""
        first = result.get(self.metrics[0])
        if not records.finite(first):
            return
        ot_trial = self._ot_trials[trial_id]
        kept = self._frozen(ot_trial).user_attrs.get(study.BEST_VALUES)
        if kept is None or records.better(first, kept[0], self.mode[0]):
            ot_trial.set_user_attr(study.BEST_VALUES, study.values_of(result, self.metrics))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        status = classify(result, error)
        if result:
            self._tell_last(trial_id, ot_trial, result)  # a stopping report skips on_trial_result
        value = self._best_value(ot_trial)
        ot_trial.set_user_attr("status", status)
        state = study.final_state(status, value is not None)
        if state == optuna.trial.TrialState.COMPLETE:
            self._ot_study.tell(ot_trial, value)
        else:
            self._ot_study.tell(ot_trial, state=state)
        self._completed_trials.add(trial_id)

    def _tell_last(self, trial_id: str, ot_trial, result: dict) -> None:
        """The trial's last report, unless told already (one objective: its tokens have a value)."""
        if self.multi or result.get(C.TOKENS_SEEN) not in self._frozen(ot_trial).intermediate_values:
            self.on_trial_result(trial_id, result)

    def _best_value(self, ot_trial) -> float | list[float] | None:
        """What a completed trial tells Optuna: its best report's value (several objectives: that
        report's values); None when it reported no finite one."""
        frozen = self._frozen(ot_trial)
        if self.multi:
            kept = frozen.user_attrs.get(study.BEST_VALUES)
            return kept if kept is not None and all(records.finite(v) for v in kept) else None
        finite = [v for v in frozen.intermediate_values.values() if math.isfinite(v)]
        if not finite:
            return None
        return min(finite) if self.mode == "min" else max(finite)

    def _frozen(self, ot_trial) -> optuna.trial.FrozenTrial:
        """The one trial as stored: reading the study's every trial grew with the sweep, at each end."""
        return self._ot_study._storage.get_trial(ot_trial._trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's last snapshot, reconciled once with the study, which the dead driver kept writing
        after it.

        The snapshot pickles the study's storage as the dead driver had it: the searcher is bound
        again to this driver's study (a moved or copied sweep never writes into the original's).
        Trials the study already finished are not told again; trials it holds RUNNING that the
        snapshot never suggested (no Tune trial will finish them) are marked FAIL and their
        configurations queued again, so the search still runs each once; a queued baseline the
        study has already run is dropped."""
        storage, limit, sweep_id = self._storage, self.limit, self.sweep_id
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(_SnapshotUnpickler(f).load())  # what OptunaSearch.restore does, detached
        self._storage, self.limit, self.sweep_id = storage, limit, sweep_id
        self._rebind()
        known = set(self._ot_trials)
        trials = self._ot_study.get_trials(deepcopy=False)
        self._completed_trials.update(t.user_attrs[study.RAY_TRIAL_ID] for t in trials
                                      if t.state.is_finished() and t.user_attrs.get(study.RAY_TRIAL_ID) in known)
        if study.fail_and_requeue(self._ot_study, known):
            # The sampler's random state is the snapshot's, from before it drew the lost trials:
            # left as it is, it would draw them again, next to their re-queued copies.
            self._ot_study.sampler.reseed_rng()

    def _rebind(self) -> None:
        """The restored study object and its trials, on this driver's storage."""
        restored = self._ot_study
        assert self._storage is not None  # `make` always gives the study's storage
        self._ot_study = optuna.load_study(study_name=restored.study_name, storage=self._storage,
                                           sampler=restored.sampler, pruner=restored.pruner)
        by_number = {t.number: t._trial_id for t in self._ot_study.get_trials(deepcopy=False)}
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, by_number[t.number])
                           for tid, t in self._ot_trials.items() if t.number in by_number}


class _DetachedStorage:
    """An Optuna RDBStorage as a snapshot pickled it, never connected: its database may be on a
    machine that is gone, or be another sweep's (a copied directory)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "RDBStorage" and module.startswith("optuna.storages"):
            return _DetachedStorage
        return super().find_class(module, name)


class SweepSearch(SearchGenerator):
    """Tune's SearchGenerator, whose restored experiment creates new trials where the sweep is now.

    A restored Tune run takes the experiment pickled in its snapshot, storage path included: in a
    sweep directory that was moved or copied, new trials would be written to the old place (Tune
    moves the restored trials themselves, not the experiment new ones come from)."""

    def __init__(self, searcher: Searcher, location: str, interrupt: Interrupt | None = None):
        super().__init__(searcher)
        self.location = location
        self.interrupt = interrupt  # after Ctrl-C or SIGTERM no new trial starts

    def next_trial(self):
        if self.interrupt is not None and self.interrupt.requested:
            return None
        return super().next_trial()

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        assert self._experiment is not None  # the state just set holds the experiment Tune pickled
        storage = self._experiment.spec["storage"]  # the same object as the experiment's own
        storage.storage_filesystem, storage.storage_fs_path = get_fs_and_path(self.location)


def queued_configs(spec: Spec) -> list[dict[str, Any]]:
    """The configs that run before the sampler's own, in order: the baseline, then `search.enqueue`."""
    return [*([spec.search.baseline] if spec.search.baseline else []), *(spec.search.enqueue or [])]


def make(spec: Spec, live: Path, sweep_id: str, queue_baseline: bool, limit: int | None = None,
         concurrency: int | None = None, interrupt: Interrupt | None = None) -> SweepSearch | None:
    """OptunaSearch on the sweep's one study, at most `concurrency` trials at once (None for a fixed
    config: nothing to sample). Only the sweep's first experiment, on its first run, queues the
    baseline, the enqueued configs and a warm start's best configs."""
    distributions = space.distributions(spec)
    if not distributions:
        return None
    queued = [dict(p) for p in [*queued_configs(spec), *warmstart.queued(live, spec.name)]] if queue_baseline else []
    metrics = spec.search.metrics
    searcher: Searcher = TruthfulOptunaSearch(
        space=space.ConditionalSpace(spec) if space.is_conditional(spec) else distributions,
        # several objectives: lists, which OptunaSearch makes a study of as many directions
        metric=[m.name for m in metrics] if metrics else spec.search.metric,
        mode=[m.mode for m in metrics] if metrics else spec.search.mode, points_to_evaluate=queued or None,
        sampler=sampler(spec), study_name=spec.name, storage=optuna.storages.RDBStorage(study.url(live)),
        limit=limit, sweep_id=sweep_id)
    study.claim(live, spec.name, sweep_id)
    if concurrency:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    return SweepSearch(searcher, spec.location, interrupt)
