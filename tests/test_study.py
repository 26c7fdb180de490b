"""The sweep owns its study: kept under the sweep's id, copied whole, another sweep's refused."""

from __future__ import annotations

import json
import sqlite3

import optuna
import pytest

from tuner import constants as C
from tuner import study
from tuner.errors import UserError
from tuner.records import TrialRecord


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))


def test_the_study_copy_is_a_consistent_sqlite_database_put_in_place_by_rename(tmp_path):
    live = tmp_path / "live.db"
    with sqlite3.connect(live) as db:
        db.execute("create table t (x)")
        db.executemany("insert into t values (?)", [(i,) for i in range(100)])
    reader = sqlite3.connect(tmp_path / "copy.db")  # a dashboard holding the old copy open
    reader.execute("create table old (y)")
    study.copy(live, tmp_path / "copy.db")
    assert reader.execute("select count(*) from old").fetchone() == (0,)  # its file was replaced, not rewritten
    with sqlite3.connect(tmp_path / "copy.db") as db:
        assert db.execute("select count(*) from t").fetchone() == (100,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "live.db"]  # no temporary left


def test_the_live_study_is_kept_under_the_sweep_id_and_its_directory(tmp_path):
    path = study.live_path(tmp_path / "runs" / "s", "id1")
    assert path.is_relative_to(tmp_path / "cache") and path.name == "optuna.db"
    assert study.live_path(tmp_path / "runs" / "s", "id1") == path
    assert study.live_path(tmp_path / "runs" / "s", "id2") != path  # the same path, a new sweep
    assert study.live_path(tmp_path / "copy" / "s", "id1") != path  # a copy of the sweep


def test_a_new_sweep_never_opens_a_study_left_under_the_same_name_and_path(tmp_path):
    """`rm -rf runs/X` and a new sweep X: a new id, so a new study, whatever the cache holds."""
    sweep_dir = tmp_path / "runs" / "x"
    old = optuna.create_study(study_name="x", storage=study.url(study.live_path(sweep_dir, "old")))
    old.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=3)
    fresh = study.restore(sweep_dir, str(sweep_dir), "new")
    assert not fresh.exists()


def test_a_study_of_another_sweep_is_refused_and_one_of_none_is_claimed(tmp_path):
    path = tmp_path / "optuna.db"
    found = optuna.create_study(study_name="x", storage=study.url(path))
    study.claim(path, "x", "mine")
    assert optuna.load_study(study_name="x", storage=study.url(path)).user_attrs[study.SWEEP_ID] == "mine"
    study.claim(path, "x", "mine")
    with pytest.raises(UserError, match=r"optuna.db: the Optuna study 'x' belongs to sweep mine, not to this "
                                        r"sweep \(theirs\); .*--restart-search"):
        study.claim(path, "x", "theirs")
    assert found is not None


def test_an_unreadable_study_is_refused_with_the_choices(tmp_path):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "optuna.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match=r"optuna.db: the Optuna study cannot be read .*--restart-search"):
        study.check(sweep_dir, str(sweep_dir), "id1", "s")


def test_a_rebuilt_study_holds_the_finished_trials_as_the_searcher_told_them(tmp_path):
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    history = [{C.EVAL_LOSS: 5.0, C.TOKENS_SEEN: 100}, {C.EVAL_LOSS: 4.0, C.TOKENS_SEEN: 200}]
    ended = [TrialRecord("a", status=C.COMPLETED, params={"learning_rate": 1e-4}, best_metric=4.0, history=history),
             TrialRecord("b", status=C.STOPPED_ASHA, params={"learning_rate": 2e-4}, best_metric=5.0,
                         history=history[:1]),
             TrialRecord("c", status=C.TIMED_OUT, params={"learning_rate": 3e-4}, best_metric=4.5, history=history),
             TrialRecord("d", status=C.FAILED, params={"learning_rate": 4e-4})]
    path = tmp_path / "rebuilt.db"
    assert study.rebuild(path, "x", "id1", C.EVAL_LOSS, "min", dist, ended) == 4
    rebuilt = optuna.load_study(study_name="x", storage=study.url(path))
    states = {t.user_attrs[study.RAY_TRIAL_ID]: (t.state.name, t.value) for t in rebuilt.trials}
    assert states == {"a": ("COMPLETE", 4.0), "b": ("PRUNED", None), "c": ("FAIL", None), "d": ("FAIL", None)}
    assert rebuilt.user_attrs[study.SWEEP_ID] == "id1"
    assert rebuilt.trials[0].intermediate_values == {100: 5.0, 200: 4.0}


@pytest.mark.parametrize("snapshot_kept", [True, False])
def test_a_trial_optuna_was_told_ended_but_whose_record_says_running_is_closed_not_rerun(tmp_path, snapshot_kept):
    """Tune tells its searcher before its callbacks write the record: a driver killed between the two
    leaves this. Set aside, its configuration would never run again (Optuna will not queue it)."""
    from tuner import records, restore, state

    sweep_dir = tmp_path / "s"
    progress = state.SweepState(spec_hash="h", experiments=[state.Experiment("exp", 3)])
    live = study.live_path(sweep_dir, progress.sweep_id)
    ot = optuna.create_study(study_name="s", storage=study.url(live))
    for ray_id, status in (("told", C.STOPPED_ASHA), ("running", None)):
        trial = ot.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
        trial.set_user_attr(study.RAY_TRIAL_ID, ray_id)
        trial.report(5.0, 100)
        if status:
            trial.set_user_attr("status", status)
            ot.tell(trial, state=optuna.trial.TrialState.PRUNED)
    for ray_id in ("told", "running"):
        records.save(TrialRecord(ray_id, experiment="exp", status=C.RUNNING, params={"learning_rate": 1e-4},
                                 checkpoint_step=8, history=[{C.STEP: 8, C.EVAL_LOSS: 5.0}]), sweep_dir)
    tune = sweep_dir / "tune" / "exp"
    tune.mkdir(parents=True)
    if snapshot_kept:
        (tune / "experiment_state-2026.json").write_text(json.dumps({"trial_data": [
            [json.dumps({"trial_id": "running"}), {}]]}))

    snapshot = restore.plan(progress, sweep_dir, str(sweep_dir / "tune"), "s", restart_search=True)

    found = {r.trial_id: r for r in records.load_all(sweep_dir)}
    assert found["told"].status == C.STOPPED_ASHA and found["told"].ended_at is not None
    assert found["told"].history == [{C.STEP: 8, C.EVAL_LOSS: 5.0}]
    if snapshot_kept:
        assert found["running"].status == C.RUNNING and not records.load_lost(sweep_dir)
        assert snapshot is not None and snapshot.limit == 2  # "told" ended after the snapshot: it counts
    else:  # the one still running is set aside and Optuna queues its configuration again
        assert snapshot is None and [r.trial_id for r in records.load_lost(sweep_dir)] == ["running"]
        queued = [t for t in optuna.load_study(study_name="s", storage=study.url(live)).trials
                  if t.state == optuna.trial.TrialState.WAITING]
        assert len(queued) == 1 and "running" not in found
