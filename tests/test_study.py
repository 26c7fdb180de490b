"""The sweep owns its study: kept under the sweep's id, copied whole, another sweep's refused."""

from __future__ import annotations

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
