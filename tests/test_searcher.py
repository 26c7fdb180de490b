"""The searcher: what Optuna is told about each trial, and how a restored searcher squares its
snapshot with the study the dead driver kept writing."""

from __future__ import annotations

import math
import shutil

import optuna
import pytest
from ray.tune.search import Searcher

from tests.conftest import TINY
from tuner import constants as C
from tuner import samplers, searcher, study
from tuner.spec import load_spec

SWEEP_ID = "sweep0000001"


@pytest.fixture
def spec(tmp_path):
    return load_spec(TINY, [f"storage={tmp_path}", "search.baseline=null"])


def make(spec, tmp_path, limit=None, live=None):
    """The Optuna searcher inside the SearchGenerator Tune gets."""
    return searcher.make(spec, live or tmp_path / "live.db", SWEEP_ID, queue_baseline=False, limit=limit).searcher


def trials(path, spec):
    return optuna.load_study(study_name=spec.name, storage=study.url(path)).trials


def _report(tokens, loss, status=C.RUNNING, final=False):
    return {C.EVAL_LOSS: loss, C.TOKENS_SEEN: tokens, C.TRIAL_STATUS: status, C.FINAL: final}


def test_each_sampler_is_built_and_seeded(spec):
    for name, cls in [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                      ("cmaes", optuna.samplers.CmaEsSampler), ("qmc", optuna.samplers.QMCSampler)]:
        spec.search.sampler = name
        first, second = samplers.sampler(spec), samplers.sampler(spec)
        assert isinstance(first, cls)
        study_a = optuna.create_study(sampler=first)
        study_b = optuna.create_study(sampler=second)
        dist = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
        a = [study_a.ask({"lr": dist}).params["lr"] for _ in range(3)]
        b = [study_b.ask({"lr": dist}).params["lr"] for _ in range(3)]
        assert a == b  # same seed, same samples


@pytest.mark.parametrize("status, error, state", [
    (C.STOPPED_ASHA, False, optuna.trial.TrialState.PRUNED),
    (C.STOPPED_BUDGET, False, optuna.trial.TrialState.PRUNED),
    (C.DIVERGED, False, optuna.trial.TrialState.FAIL),
    (C.TIMED_OUT, False, optuna.trial.TrialState.FAIL),
    (C.STALLED, False, optuna.trial.TrialState.FAIL),
    (C.RUNNING, True, optuna.trial.TrialState.FAIL),
])
def test_optuna_learns_how_each_trial_really_ended(spec, tmp_path, status, error, state):
    search = make(spec, tmp_path)
    search.suggest("t1")
    search.on_trial_result("t1", _report(1000, 5.0))
    last = _report(2000, math.nan if status == C.DIVERGED else 4.5, status)
    search.on_trial_complete("t1", result=None if error else last, error=error)
    trial, = trials(tmp_path / "live.db", spec)
    assert trial.state == state
    assert trial.user_attrs["ray_trial_id"] == "t1"
    if state == optuna.trial.TrialState.PRUNED:
        assert trial.intermediate_values == {1000: 5.0, 2000: 4.5}


def test_a_completed_trial_is_valued_at_its_best_report(spec, tmp_path):
    search = make(spec, tmp_path)
    search.suggest("t1")
    for tokens, loss in [(1000, 5.0), (2000, 4.2)]:
        search.on_trial_result("t1", _report(tokens, loss))
    search.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))
    trial, = trials(tmp_path / "live.db", spec)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == 4.2
    assert trial.intermediate_values == {1000: 5.0, 2000: 4.2, 3000: 4.4}


def test_a_restored_searcher_fails_and_requeues_trials_its_snapshot_missed(spec, tmp_path):
    """A driver died after suggesting t3 but before Tune's snapshot held it: on restore t3 is FAIL
    (`lost`), its configuration is asked next, and the sampler does not draw it a second time."""
    search = make(spec, tmp_path)
    search.suggest("t1")
    search.suggest("t2")
    search.save(str(tmp_path / "snapshot.pkl"))
    lost_params = search.suggest("t3")
    restored = make(spec, tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    found = trials(tmp_path / "live.db", spec)
    lost = next(t for t in found if t.user_attrs.get("ray_trial_id") == "t3")
    assert lost.state == optuna.trial.TrialState.FAIL and lost.user_attrs[C.LOST]
    assert restored.suggest("t4") == lost_params
    assert restored.suggest("t5") != lost_params  # the snapshot's random state would draw t3's again
    copy = next(t for t in trials(tmp_path / "live.db", spec) if t.user_attrs.get("ray_trial_id") == "t4")
    assert copy.user_attrs["retry_of"] == lost.number


def test_a_trial_optuna_was_told_of_before_the_driver_died_is_not_told_again(spec, tmp_path):
    search = make(spec, tmp_path)
    search.suggest("t1")
    search.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot, from before the trial ended
    search.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))
    search = make(spec, tmp_path)
    search.restore(str(tmp_path / "snapshot.pkl"))
    search.on_trial_result("t1", _report(3000, 4.4, C.COMPLETED, final=True))
    search.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))  # no "already finished"
    trial, = trials(tmp_path / "live.db", spec)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 4.4


def test_a_restored_searcher_writes_to_this_drivers_study_not_the_snapshots(spec, tmp_path):
    """Tune's snapshot pickles the study's storage as the dead driver had it. A sweep copied (or
    moved) elsewhere restores into its own study; the original's study is never written."""
    original, copy = tmp_path / "original.db", tmp_path / "copy.db"
    search = make(spec, tmp_path, live=original)
    search.suggest("t1")
    search.save(str(tmp_path / "snapshot.pkl"))
    shutil.copy(original, copy)
    before = original.read_bytes()
    restored = make(spec, tmp_path, live=copy)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    restored.on_trial_result("t1", _report(1000, 5.0))
    restored.on_trial_complete("t1", result=_report(2000, 4.5, C.COMPLETED, final=True))
    restored.suggest("t2")
    assert original.read_bytes() == before
    assert [t.state for t in trials(copy, spec)][0] == optuna.trial.TrialState.COMPLETE
    assert [t.state for t in trials(original, spec)] == [optuna.trial.TrialState.RUNNING]


def test_a_capped_search_suggests_no_more_than_its_limit(spec, tmp_path):
    """A restored experiment whose dead driver finished trials after Tune's snapshot counts them."""
    search = make(spec, tmp_path, limit=2)
    assert search.suggest("t1") and search.suggest("t2")
    assert search.suggest("t3") == Searcher.FINISHED
    assert search.suggest("t1")  # a trial already suggested is asked again, not refused


def test_classify():
    assert searcher.classify(None, error=True) == C.FAILED
    assert searcher.classify({C.TRIAL_STATUS: C.COMPLETED}, error=False) == C.COMPLETED
    assert searcher.classify({C.TRIAL_STATUS: C.RUNNING}, error=False) == C.STOPPED_BUDGET


def test_a_restored_search_creates_new_trials_where_the_sweep_is_now(spec, tmp_path):
    """Tune pickles its experiment, storage path included, with the search's state: restored in a
    moved sweep directory, new trials must go to the new place."""
    from ray.tune import Experiment

    spec.storage = str(tmp_path / "old")
    old = searcher.make(spec, tmp_path / "live.db", SWEEP_ID, queue_baseline=False)
    old.add_configurations([Experiment("tune", run=lambda config: None, storage_path=str(tmp_path / "old"))])
    state = old.get_state()
    spec.storage = str(tmp_path / "new")
    moved = searcher.make(spec, tmp_path / "live.db", SWEEP_ID, queue_baseline=False)
    moved.set_state(state)
    assert moved._experiment.storage.storage_fs_path == str(tmp_path / "new")
    assert moved._experiment.spec["storage"].experiment_fs_path == f"{tmp_path}/new/tune"


def test_the_search_holds_at_most_the_concurrency_it_is_given(spec, tmp_path):
    search = searcher.make(spec, tmp_path / "live.db", SWEEP_ID, queue_baseline=False, concurrency=2)
    assert search.searcher.max_concurrent == 2 and isinstance(search.searcher.searcher, searcher.TruthfulOptunaSearch)
