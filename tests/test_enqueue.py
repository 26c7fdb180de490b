"""`search.enqueue`: configs that run first, in order, after the baseline; checked as the baseline is."""

from __future__ import annotations

import shutil
import tempfile

import optuna
import pytest

from tests.conftest import LIGHT_PROMOTE
from tests.conftest import TINY as TINY_PATH
from tuner import load_spec, run_sweep
from tuner.spec import SpecError

SPACE = ("search.space={learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}, "
         "per_device_train_batch_size: {type: categorical, choices: [8, 16]}}")
BASELINE = "search.baseline={learning_rate: 5.0e-5, per_device_train_batch_size: 8}"
ENQUEUE = ("search.enqueue=[{learning_rate: 3.0e-4, per_device_train_batch_size: 16}, "
           "{learning_rate: 1.0e-3, per_device_train_batch_size: 8}]")


def test_enqueued_configs_are_read_in_order():
    spec = load_spec(TINY_PATH, [SPACE, BASELINE, ENQUEUE])
    assert spec.search.enqueue == [{"learning_rate": 3.0e-4, "per_device_train_batch_size": 16},
                                   {"learning_rate": 1.0e-3, "per_device_train_batch_size": 8}]


@pytest.mark.parametrize("value, needles", [
    ("[{learning_rate: 3.0e-4}]", ["search.enqueue[0]: no value for 'per_device_train_batch_size'; an enqueued "
                                   "config gives a value for every searched field"]),
    ("[{learning_rate: 1.0, per_device_train_batch_size: 8}]",
     ["search.enqueue[0].learning_rate: got 1.0, expected a value in the searched range [1e-05, 0.01]"]),
    ("[{learning_rate: 3.0e-4, per_device_train_batch_size: 32}]",
     ["search.enqueue[0].per_device_train_batch_size: got 32, expected one of the choices [8, 16]"]),
    ("[{learning_rate: 3.0e-4, per_device_train_batch_size: 8, weight_decay: 0.1}]",
     ["search.enqueue[0].weight_decay: 'weight_decay' is not searched in search.space"]),
    ("[{learning_rate: 3.0e-4, per_device_train_batch_size: 8}, {per_device_train_batch_size: 8, "
     "learning_rate: 3.0e-4}]", ["search.enqueue[1]: the same config as search.enqueue[0]; each config runs once"]),
    ("{learning_rate: 3.0e-4}", ["search.enqueue: got {'learning_rate': 0.0003}, expected a list of mappings"]),
    ("[]", ["search.enqueue: got [], expected a list of mappings"]),
])
def test_a_bad_enqueued_config_is_refused_with_its_place(value, needles):
    with pytest.raises(SpecError) as info:
        load_spec(TINY_PATH, [SPACE, BASELINE, f"search.enqueue={value}"])
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def _instant(config, report):
    """Two reports at once; the last with a checkpoint (the tiny model as it is), so the winner exports."""
    from tuner import model

    for step in (1, 2):
        metrics = {"eval_loss": 5.0 - step * 0.1 + abs(config["learning_rate"] - 1e-3) * 100,
                   "tokens_seen": step * 96, "step": step}
        if step == 2:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(model.resolve("builtin:tiny-gpt2"), tmp, dirs_exist_ok=True)
                report(metrics, tmp)
        else:
            report(metrics)


@pytest.mark.integration
def test_the_baseline_then_the_enqueued_configs_run_first_and_the_export_drops_them(ray_runtime, tmp_path):
    result = run_sweep(TINY_PATH, trial_fn=_instant, overrides=[
        SPACE, BASELINE, ENQUEUE, "search.num_samples=4", "search.max_concurrent_trials=1", "scheduler=none",
        "data.max_records=300", *LIGHT_PROMOTE, f"storage={tmp_path / 'queued'}"])
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'queued' / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in trials[:3]] == [
        {"learning_rate": 5.0e-5, "per_device_train_batch_size": 8},
        {"learning_rate": 3.0e-4, "per_device_train_batch_size": 16},
        {"learning_rate": 1.0e-3, "per_device_train_batch_size": 8}]
    assert len(trials) == 4 and trials[3].params not in [t.params for t in trials[:3]]  # then the sampler's own
    assert result.best.params["learning_rate"] == 1.0e-3
    exported = load_spec(result.paths["config"])
    assert exported.search.enqueue is None and exported.search.baseline is None
