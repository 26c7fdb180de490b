"""`search.sampler` beyond TPE: grid, gp and nsga2, each validated, seeded, and run on a tiny sweep."""

from __future__ import annotations

import itertools
import pickle

import optuna
import pytest
import yaml

from tests.conftest import LIGHT_PROMOTE
from tests.conftest import TINY as TINY_PATH
from tuner import constants as C
from tuner import grid, load_spec, run_sweep, samplers
from tuner.records import load_all as load_records
from tuner.spec import SpecError

GRID = ["search.space={learning_rate: {type: categorical, choices: [1.0e-4, 1.0e-3, 3.0e-3]}, "
        "per_device_train_batch_size: {type: int, low: 8, high: 16, step: 8}, "
        "warmup_ratio: {type: float, low: 0.0, high: 0.1, step: 0.05}}"]
BASELINE = "search.baseline={learning_rate: 1.0e-3, per_device_train_batch_size: 8, warmup_ratio: 0.0}"


def test_grid_values_of_each_kind():
    assert grid.values({"type": "categorical", "choices": ["a", 1]}) == ["a", 1]
    assert grid.values({"type": "int", "low": 2, "high": 9, "step": 3}) == [2, 5, 8]
    assert grid.values({"type": "int", "low": 1, "high": 4, "log": True}) == [1, 2, 3, 4]
    assert grid.values({"type": "float", "low": 0.0, "high": 0.3, "step": 0.1}) == [0.0, 0.1, 0.2, 0.3]
    assert grid.values({"type": "float", "low": "1e-5", "high": 1e-3}) is None  # continuous


def _without_num_samples() -> dict:
    raw = yaml.safe_load(TINY_PATH.read_text())
    del raw["search"]["num_samples"]
    return raw


def test_a_grid_sets_num_samples_to_its_size_and_one_more_for_a_baseline():
    spec = load_spec(_without_num_samples(), [*GRID, "search.sampler=grid", "search.baseline=null"])
    assert spec.search.num_samples == 3 * 2 * 3
    with_baseline = load_spec(_without_num_samples(), [*GRID, "search.sampler=grid", BASELINE])
    assert with_baseline.search.num_samples == 3 * 2 * 3 + 1
    fewer = load_spec(TINY_PATH, [*GRID, "search.sampler=grid", "search.baseline=null", "search.num_samples=5"])
    assert fewer.search.num_samples == 5  # the first 5 of the seeded order, as Optuna's n_trials
    assert load_spec(TINY_PATH, [*GRID, "search.baseline=null"]).search.num_samples == 8  # other samplers


@pytest.mark.parametrize("overrides, needles", [
    (["search.space.learning_rate={type: float, low: 1.0e-5, high: 1.0e-3, log: true}"],
     ["search.space.learning_rate: a float range from 1e-05 to 0.001 has no finite list of values for sampler "
      "grid; list them instead, e.g. type: categorical, choices: [1e-05, 0.0001, 0.001]"]),
    (["search.space.warmup_ratio={type: float, low: 0.0, high: 0.2}"],
     ["search.space.warmup_ratio: a float range from 0.0 to 0.2 has no finite list of values for sampler grid; "
      "add `step:` (e.g. step: 0.05)"]),
    (["search.space.lora_r={type: int, low: 4, high: 8, when: {use_lora: true}}",
      "search.space.use_lora={type: categorical, choices: [true, false]}"],
     ["search.space.lora_r.when: sampler grid runs every combination", "drop `when:` or use sampler tpe"]),
    (["search.space.per_device_train_batch_size={type: int, low: 1, high: 20000}"],
     ["search.sampler: got 'grid', but the space has 180,000 combinations (at most 10,000)"]),
    (["search.num_samples=19"],
     ["search.num_samples: got 19, but the grid has 18 points; a grid runs each once", "drop num_samples"]),
])
def test_a_space_that_makes_no_grid_is_refused_with_the_fix(overrides, needles):
    with pytest.raises(SpecError) as info:
        load_spec(TINY_PATH, [*GRID, "search.sampler=grid", "search.baseline=null", *overrides])
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def _lr(spec):
    study = optuna.create_study(sampler=samplers.sampler(spec))
    dists = {"learning_rate": optuna.distributions.CategoricalDistribution([1.0e-4, 1.0e-3, 3.0e-3]),
             "per_device_train_batch_size": optuna.distributions.IntDistribution(8, 16, step=8),
             "warmup_ratio": optuna.distributions.FloatDistribution(0.0, 0.1, step=0.05)}
    asked = []
    for _ in range(5):
        trial = study.ask(dists)
        study.tell(trial, 1.0)  # the grid's last point told outside `optimize` must not raise
        asked.append(tuple(trial.params.values()))
    pickle.loads(pickle.dumps(study.sampler))  # Tune's experiment snapshot pickles the searcher
    return asked


@pytest.mark.parametrize("name, cls", [("grid", samplers.TuneGridSampler), ("gp", optuna.samplers.GPSampler),
                                       ("nsga2", samplers.TuneNSGAIISampler)])
def test_each_new_sampler_is_built_and_seeded(name, cls):
    spec = load_spec(TINY_PATH, [*GRID, f"search.sampler={name}", "search.baseline=null", "search.seed=7"])
    assert isinstance(samplers.sampler(spec), cls)
    assert _lr(spec) == _lr(spec)  # same seed, same trials
    other = load_spec(TINY_PATH, [*GRID, f"search.sampler={name}", "search.baseline=null", "search.seed=8"])
    assert _lr(other) != _lr(spec)


def _instant(config, report):
    """A trial that reports three times at once, its loss a function of its values."""
    for step in (1, 2, 3):
        loss = 5.0 - step * 0.1 + abs(config["learning_rate"] - 1e-3) * 100 + config["warmup_ratio"]
        report({"eval_loss": loss, "tokens_seen": step * 96, "step": step})


@pytest.mark.integration
def test_a_grid_sweep_runs_every_point_once_then_stops(ray_runtime, tmp_path):
    result = run_sweep(TINY_PATH, trial_fn=_instant, overrides=[
        *GRID, "search.sampler=grid", BASELINE, "search.num_samples=19", "scheduler=none", "data.max_records=300",
        "search.max_concurrent_trials=2", *LIGHT_PROMOTE, f"storage={tmp_path / 'grid'}"])
    records = load_records(tmp_path / "grid")
    assert len(records) == 19 and all(r.status == C.COMPLETED for r in records)
    seen = sorted((r.params["learning_rate"], r.params["per_device_train_batch_size"], r.params["warmup_ratio"])
                  for r in records)
    product = sorted(itertools.product([1.0e-4, 1.0e-3, 3.0e-3], [8, 16], [0.0, 0.05, 0.1]))
    assert seen == sorted([*product, (1.0e-3, 8, 0.0)])  # each point once, and the baseline
    assert result.best.params["learning_rate"] == 1.0e-3 and result.best.params["warmup_ratio"] == 0.0


@pytest.mark.integration
@pytest.mark.parametrize("name", ["gp", "nsga2"])
def test_a_gp_or_nsga2_sweep_runs_on_its_sampler(name, ray_runtime, tmp_path):
    run_sweep(TINY_PATH, trial_fn=_instant, overrides=[
        "search.space.learning_rate={type: float, low: 1.0e-5, high: 1.0e-2, log: true}",
        "search.space.warmup_ratio={type: float, low: 0.0, high: 0.1}", f"search.sampler={name}",
        "search.n_startup_trials=2" if name == "gp" else "search.seed=3", "search.baseline=null",
        "search.num_samples=4", "scheduler=none", "data.max_records=300", "search.max_concurrent_trials=1",
        *LIGHT_PROMOTE, f"storage={tmp_path / name}"])
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / name / 'optuna.db'}")
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["learning_rate"] for t in study.trials}) == 4
