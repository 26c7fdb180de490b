"""The search's parts that need no running cluster: the plan, ASHA's rungs, and what Optuna is told."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from tuner import constants as C
from tuner import storage, sweep
from tuner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec():
    return load_spec(ROOT / "search_spaces" / "tiny.yaml")


def test_asha_rungs_match_rays_milestones():
    assert sweep.asha_rungs(16384, 200320, 2) == [16384, 32768, 65536, 131072]
    assert sweep.asha_rungs(100, 1000, 3) == [100, 300, 900]
    assert sweep.asha_rungs(1000, 1000, 2) == []


def test_plan_derives_max_t_from_the_largest_epoch_count(spec):
    plan = sweep.make_plan(spec, train_tokens=100_000)
    assert plan.max_t == 2 * 100_000  # num_train_epochs: int 1..2
    assert plan.grace_period == 16384
    assert plan.budget_tokens == 8 * 200_000
    assert plan.budget_reports == 8 * math.ceil(200_000 / 16384)
    assert "trial-reports" in plan.describe()


def test_plan_without_data_says_when_the_budget_is_known(spec):
    plan = sweep.make_plan(spec, train_tokens=None)
    assert plan.max_t is None and plan.budget_tokens is None
    assert "known once the data is prepared" in plan.describe()


def test_each_sampler_is_built_and_seeded(spec):
    for name, cls in [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                      ("cmaes", optuna.samplers.CmaEsSampler), ("qmc", optuna.samplers.QMCSampler)]:
        spec.search.sampler = name
        first, second = sweep._sampler(spec), sweep._sampler(spec)
        assert isinstance(first, cls)
        study_a = optuna.create_study(sampler=first)
        study_b = optuna.create_study(sampler=second)
        dist = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
        a = [study_a.ask({"lr": dist}).params["lr"] for _ in range(3)]
        b = [study_b.ask({"lr": dist}).params["lr"] for _ in range(3)]
        assert a == b  # same seed, same samples


def _searcher(spec, tmp_path):
    spec.storage = str(tmp_path)
    spec.search.baseline = None
    return sweep._searcher(spec, tmp_path)


def _report(tokens, loss, status=C.RUNNING, final=False):
    return {C.EVAL_LOSS: loss, C.TOKENS_SEEN: tokens, C.TRIAL_STATUS: status, C.FINAL: final}


@pytest.mark.parametrize("status, error, state", [
    (C.STOPPED_ASHA, False, optuna.trial.TrialState.PRUNED),
    (C.STOPPED_BUDGET, False, optuna.trial.TrialState.PRUNED),
    (C.DIVERGED, False, optuna.trial.TrialState.FAIL),
    (C.RUNNING, True, optuna.trial.TrialState.FAIL),
])
def test_optuna_learns_how_each_trial_really_ended(spec, tmp_path, status, error, state):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _report(1000, 5.0))
    last = _report(2000, math.nan if status == C.DIVERGED else 4.5, status)
    searcher.on_trial_complete("t1", result=None if error else last, error=error)
    trial, = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{storage.local_study(tmp_path)}").trials
    assert trial.state == state
    assert trial.user_attrs["ray_trial_id"] == "t1"
    if state == optuna.trial.TrialState.PRUNED:
        assert trial.intermediate_values == {1000: 5.0, 2000: 4.5}


def test_a_completed_trial_is_valued_at_its_best_report(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("t1")
    for tokens, loss in [(1000, 5.0), (2000, 4.2)]:
        searcher.on_trial_result("t1", _report(tokens, loss))
    searcher.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))
    trial, = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{storage.local_study(tmp_path)}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == 4.2
    assert trial.intermediate_values == {1000: 5.0, 2000: 4.2, 3000: 4.4}


def test_a_restored_searcher_fails_and_requeues_trials_its_snapshot_missed(spec, tmp_path):
    """A driver died after suggesting t3 but before Tune's snapshot held it: on restore t3 is FAIL
    (`lost`), its configuration is asked next, and the sampler does not draw it a second time."""
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.save(str(tmp_path / "snapshot.pkl"))
    lost_params = searcher.suggest("t3")
    restored = _searcher(spec, tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{storage.local_study(tmp_path)}")
    lost = next(t for t in study.trials if t.user_attrs.get("ray_trial_id") == "t3")
    assert lost.state == optuna.trial.TrialState.FAIL and lost.user_attrs[C.LOST]
    assert restored.suggest("t4") == lost_params
    assert restored.suggest("t5") != lost_params  # the snapshot's random state would draw t3's again
    copy = next(t for t in study.get_trials() if t.user_attrs.get("ray_trial_id") == "t4")
    assert copy.user_attrs["retry_of"] == lost.number


def test_a_trial_optuna_was_told_of_before_the_driver_died_is_not_told_again(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot, from before the trial ended
    searcher.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))
    searcher = _searcher(spec, tmp_path)
    searcher.restore(str(tmp_path / "snapshot.pkl"))
    searcher.on_trial_result("t1", _report(3000, 4.4, C.COMPLETED, final=True))
    searcher.on_trial_complete("t1", result=_report(3000, 4.4, C.COMPLETED, final=True))  # no "already finished"
    trial, = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{storage.local_study(tmp_path)}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 4.4


def test_ashas_rungs_survive_a_driver_restart_through_the_ledgers_state(spec, tmp_path):
    """Tune saves no scheduler state: the ledger's, saved with every snapshot, carries ASHA's."""
    from types import SimpleNamespace

    spec.storage = str(tmp_path)
    plan = sweep.make_plan(spec, train_tokens=100_000)

    def asha_with_ledger():
        scheduler = sweep._scheduler(spec, plan)
        return scheduler, sweep._ledger_class()(spec, plan, say=lambda _: None, scheduler=scheduler)

    before, ledger = asha_with_ledger()
    for trial_id, loss in [("a", 5.0), ("b", 4.0), ("c", 6.0)]:
        trial = SimpleNamespace(trial_id=trial_id)
        before.on_trial_add(None, trial)
        before.on_trial_result(None, trial, {C.TOKENS_SEEN: plan.grace_period, C.EVAL_LOSS: loss})
    after, restored = asha_with_ledger()
    restored.set_state(ledger.get_state())
    recorded = lambda asha: [dict(rung) for bracket in asha._brackets for _, rung in bracket._rungs]
    assert recorded(after) == recorded(before) and any(recorded(after))
    late = SimpleNamespace(trial_id="d")  # worse than the cutoff the three set: stopped at once
    after.on_trial_add(None, late)
    assert after.on_trial_result(None, late, {C.TOKENS_SEEN: plan.grace_period, C.EVAL_LOSS: 7.0}) == "STOP"


def test_classify():
    assert sweep.classify(None, error=True) == C.FAILED
    assert sweep.classify({C.TRIAL_STATUS: C.COMPLETED}, error=False) == C.COMPLETED
    assert sweep.classify({C.TRIAL_STATUS: C.RUNNING}, error=False) == C.STOPPED_BUDGET


def test_a_local_runtime_has_no_dashboard_and_would_bind_it_to_localhost(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    sweep.init_ray(None)
    sweep.init_ray("10.0.0.1:6379")  # a cluster's dashboard is the cluster's (cluster.yaml binds it)
    assert calls[0]["address"] == "local" and calls[0]["include_dashboard"] is False
    assert calls[0]["dashboard_host"] == "127.0.0.1"
    assert calls[1] == {"address": "10.0.0.1:6379", "log_to_driver": False, "configure_logging": False}


def test_a_grace_period_past_the_derived_max_t_is_refused(spec):
    from tuner.errors import UserError
    from tuner.pipeline import check_plan

    raw = spec.to_dict()
    raw.pop("origin")
    raw["scheduler"]["grace_period"] = 50_000
    spec = load_spec(raw)
    check_plan(spec, sweep.make_plan(spec, train_tokens=30_000))  # 2 epochs: max_t 60000
    with pytest.raises(UserError, match=r"scheduler.grace_period: got 50000, larger than max_t=40000 tokens"):
        check_plan(spec, sweep.make_plan(spec, train_tokens=20_000))
