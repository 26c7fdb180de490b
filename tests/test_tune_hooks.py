"""Every Ray internal tuner reaches for is still there, in the shape it is used.

tuner/tune_hooks.py and tuner/searcher.py go past Ray Tune's public API (see their docstrings).
These tests touch each internal without running a sweep, so a Ray upgrade that moves one fails
here, by name, rather than in the middle of a user's sweep. pyproject.toml pins Ray to the minor
version these tests passed on.
"""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import optuna

from tuner import tune_hooks

ROOT = Path(__file__).resolve().parents[1]


def test_the_ray_pin_is_the_minor_version_under_test():
    text = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"ray\[[^\]]*\]>=(\d+\.\d+),<(\d+\.\d+)"', text).groups()
    major, minor = map(int, metadata.version("ray").split(".")[:2])
    assert low == f"{major}.{minor}" and high == f"{major}.{minor + 1}"


def test_the_checkpoint_internals_take_what_tune_hooks_gives():
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    assert list(inspect.signature(_TrainingResult).parameters) == ["checkpoint", "metrics"]
    assert list(inspect.signature(_CheckpointManager).parameters) == ["checkpoint_config"]


def test_a_trial_has_the_attributes_tune_hooks_reads_and_sets(tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="e", trial_dir_name="t")
    trial = Trial("fake", config={}, storage=storage, stub=True)
    for name in ("checkpoint", "on_checkpoint", "invalidate_json_state", "run_metadata", "temporary_state",
                 "max_failures", "trial_id", "last_result", "status", "path"):
        assert hasattr(trial, name), name
    assert isinstance(trial.storage.current_checkpoint_index, int)
    assert trial.storage.storage_filesystem is not None
    assert callable(trial.run_metadata.invalidate_cache)
    assert hasattr(trial.run_metadata.checkpoint_manager, "checkpoint_config")
    assert hasattr(trial.temporary_state, "ray_actor")


def test_tune_still_propagates_credentials_through_the_class_cache():
    """keep_credentials_out_of_runtime_env edits this set: if Tune stops using it, the edit does
    nothing and this fails, to be looked at again."""
    from ray.tune.execution import class_cache

    # Tune's own set, read afresh: a sweep run earlier in this process has edited the module's
    stock = _fresh("ray.tune.execution.class_cache").ENV_VARS_TO_PROPAGATE
    assert tune_hooks.CREDENTIAL_VARS & set(stock)
    assert "ENV_VARS_TO_PROPAGATE" in inspect.getsource(class_cache._ActorClassCache.get)


def _fresh(name: str):
    """A new copy of module `name`, executed apart from the one in sys.modules."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dropping_the_credentials_keeps_what_else_tune_propagates(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE))
    others = set(class_cache.ENV_VARS_TO_PROPAGATE) - tune_hooks.CREDENTIAL_VARS
    tune_hooks.keep_credentials_out_of_runtime_env()
    assert set(class_cache.ENV_VARS_TO_PROPAGATE) == others


def test_the_optuna_searcher_keeps_the_state_tuner_reconciles():
    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="min")
    for name in ("_ot_trials", "_ot_study", "_completed_trials", "_storage"):
        assert hasattr(searcher, name), name
    assert list(inspect.signature(get_fs_and_path).parameters)[:2] == ["storage_path", "storage_filesystem"]
    trial = searcher._ot_study.ask()
    assert isinstance(trial._trial_id, int)  # Optuna's own: searcher re-binds trials by it
    assert searcher._ot_study._storage.get_trial(trial._trial_id).number == trial.number  # and reads one by it


def test_tune_run_installs_the_stop_signal_handler_end_experiment_calls():
    from ray.tune import tune as tune_module

    assert "signal.signal(signal.SIGUSR1" in inspect.getsource(tune_module).replace("\n", "")


def test_the_scheduler_state_round_trips_through_its_own_save():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler = ASHAScheduler(metric="m", mode="min", time_attr="t", max_t=100, grace_period=10)
    scheduler._counter = 7  # state a fresh one lacks
    saved = tune_hooks.scheduler_state(scheduler)
    again = ASHAScheduler(metric="m", mode="min", time_attr="t", max_t=100, grace_period=10)
    tune_hooks.restore_scheduler(again, saved)
    assert again._counter == 7 and tune_hooks.scheduler_state(again) == saved
    assert tune_hooks.scheduler_state(FIFOScheduler()) is None  # it has no save of its own


def test_a_trial_checkpoint_no_longer_forces_a_snapshot(tmp_path):
    from types import SimpleNamespace

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="e")
    controller = SimpleNamespace(_storage=storage, _checkpoint_period="auto",
                                 _trial_checkpoint_config=SimpleNamespace(num_to_keep=1))
    trial = Trial("fake", config={}, storage=storage, stub=True)
    original = TuneController._create_checkpoint_manager  # patched already if a sweep ran in this process
    try:
        TuneController._create_checkpoint_manager = getattr(original, "_stock", original)
        stock = TuneController._create_checkpoint_manager(controller)
        stock.on_trial_checkpoint(trial)
        assert stock._should_force_sync_up  # Tune's way: a snapshot after every checkpoint
        tune_hooks.snapshot_on_schedule()
        tune_hooks.snapshot_on_schedule()  # once only
        ours = TuneController._create_checkpoint_manager(controller)
        ours.on_trial_checkpoint(trial)
        assert not ours._should_force_sync_up and ours.auto_checkpoint_enabled
    finally:
        TuneController._create_checkpoint_manager = original
