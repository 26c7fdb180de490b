"""`search.warm_start`: an earlier sweep's trials as priors of the new study, its best configs first."""

from __future__ import annotations

import logging

import optuna
import pytest

from tests.conftest import LIGHT_PROMOTE
from tests.conftest import TINY as TINY_PATH
from tuner import constants as C
from tuner import layout, load_spec, records, run_sweep, space, warmstart
from tuner.errors import UserError
from tuner.records import TrialRecord
from tuner.spec import SpecError, to_yaml

SPACE = ("search.space={learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}, "
         "per_device_train_batch_size: {type: categorical, choices: [8, 16]}}")
NO_BASELINE = "search.baseline=null"  # the tiny preset's baseline names fields these spaces don't search


def earlier_sweep(folder, trials: list[tuple[dict, str, float | None]], overrides=()) -> str:
    """A sweep directory as a finished sweep leaves it: its spec and one record per trial
    (params, status, best eval_loss), each with a report."""
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"storage={folder}", *overrides])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.SPEC_FILE).write_text(to_yaml(spec))
    for i, (params, status, loss) in enumerate(trials):
        history = [] if loss is None else [{C.EVAL_LOSS: loss, C.TOKENS_SEEN: 96, C.STEP: 1}]
        records.save(TrialRecord(trial_id=f"old{i:05d}", status=status, params=params, reports=len(history),
                                 history=history, best_metric=loss, best_eval_loss=loss), folder)
    return str(folder)


TRIALS = [({"learning_rate": 1e-3, "per_device_train_batch_size": 16}, C.COMPLETED, 2.0),
          ({"learning_rate": 3e-4, "per_device_train_batch_size": 8}, C.COMPLETED, 2.5),
          ({"learning_rate": 5e-2, "per_device_train_batch_size": 8}, C.COMPLETED, 1.5),  # out of the new range
          ({"learning_rate": 1e-4, "per_device_train_batch_size": 16}, C.STOPPED_ASHA, 3.0),
          ({"learning_rate": 2e-4, "per_device_train_batch_size": 16}, C.FAILED, None)]


def test_contains_follows_optuna_distributions():
    dists = space.distributions(load_spec(TINY_PATH, [NO_BASELINE,
        "search.space={learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}, "
        "warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0.1}, num_train_epochs: {type: int, low: 1, high: 3}, "
        "per_device_train_batch_size: {type: categorical, choices: [8, 16]}}"]))
    assert warmstart.contains(dists["learning_rate"], 1e-3) and not warmstart.contains(dists["learning_rate"], 0.05)
    assert warmstart.contains(dists["warmup_ratio"], 0.1) and not warmstart.contains(dists["warmup_ratio"], 0.05)
    assert warmstart.contains(dists["num_train_epochs"], 2) and not warmstart.contains(dists["num_train_epochs"], 4)
    assert warmstart.contains(dists["per_device_train_batch_size"], 16)
    assert not warmstart.contains(dists["per_device_train_batch_size"], 32)
    assert not warmstart.contains(dists["per_device_train_batch_size"], None)


def test_priors_hold_the_values_this_space_contains_with_the_states_told(tmp_path):
    source = earlier_sweep(tmp_path / "old", TRIALS)
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={source}", "search.warm_start_top_k=3",
                                 f"storage={tmp_path / 'new'}"])
    priors = warmstart.load(spec)
    by_source = {t.user_attrs[warmstart.SOURCE_TRIAL]: t for t in priors.trials}
    assert len(priors.trials) == 5
    assert by_source["old00000"].params == TRIALS[0][0] and by_source["old00000"].value == 2.0
    assert by_source["old00002"].params == {"per_device_train_batch_size": 8}  # its rate is out of range
    assert by_source["old00003"].state == optuna.trial.TrialState.PRUNED
    assert by_source["old00003"].intermediate_values == {96: 3.0}
    assert by_source["old00004"].state == optuna.trial.TrialState.FAIL
    assert priors.carried == {"learning_rate": 4, "per_device_train_batch_size": 5}
    # the best that fit whole, best first: 1.5's rate is out of range, a pruned trial ranks after completed
    assert priors.queued == [TRIALS[0][0], TRIALS[1][0], TRIALS[3][0]]
    assert "carried over: learning_rate (4 trials), per_device_train_batch_size (5 trials)" in priors.describe()


def test_top_k_skips_configs_already_queued_and_stops_at_k(tmp_path):
    source = earlier_sweep(tmp_path / "default", TRIALS)
    assert warmstart.load(load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={source}"])).queued == []
    source = earlier_sweep(tmp_path / "old", TRIALS)
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={source}", "search.warm_start_top_k=1",
                                 "search.baseline={learning_rate: 1.0e-3, per_device_train_batch_size: 16}",
                                 f"storage={tmp_path / 'new'}"])
    assert warmstart.load(spec).queued == [TRIALS[1][0]]


def test_a_parameter_held_fixed_there_carries_its_fixed_value(tmp_path):
    source = earlier_sweep(tmp_path / "old", TRIALS[:2], ["train.weight_decay=0.01"])
    spec = load_spec(TINY_PATH, [NO_BASELINE,
        "search.space={learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}, "
        "weight_decay: {type: float, low: 0.0, high: 0.1}, warmup_ratio: {type: float, low: 0.05, high: 0.1}}",
        f"search.warm_start={source}", "search.warm_start_top_k=3", f"storage={tmp_path / 'new'}"])
    priors = warmstart.load(spec)
    assert [t.params for t in priors.trials] == [{"learning_rate": 1e-3, "weight_decay": 0.01},
                                                 {"learning_rate": 3e-4, "weight_decay": 0.01}]
    assert priors.left == {"warmup_ratio": "held at 0.0 there, outside this range"}
    assert priors.queued == []  # no config gives warmup_ratio a value in range


@pytest.mark.parametrize("overrides, needle", [
    (["search.metric=train_loss", "promote.top_k=1"],
     "that sweep optimised eval_loss (min), this one train_loss (min)"),
    (["search.space={learning_rate: {type: float, low: 0.02, high: 0.1}}"],
     "no parameter carries over: learning_rate (none of its values is in this range)"),
])
def test_an_earlier_sweep_that_cannot_inform_this_one_is_refused(tmp_path, overrides, needle):
    source = earlier_sweep(tmp_path / "old", TRIALS[:2])
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={source}", f"storage={tmp_path / 'new'}",
                                 *overrides])
    with pytest.raises(UserError, match="search.warm_start: ") as info:
        warmstart.load(spec)
    assert needle in str(info.value)


def test_a_missing_or_empty_sweep_is_refused(tmp_path):
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError, match="not a sweep directory"):
        warmstart.load(spec)
    source = earlier_sweep(tmp_path / "old", [TRIALS[4]])
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={source}"])
    with pytest.raises(UserError, match="none of its trials ended with a finite eval_loss"):
        warmstart.load(spec)


@pytest.mark.parametrize("overrides, needle", [
    (["search.warm_start=runs/x", "search.sampler=grid",
      "search.space={per_device_train_batch_size: {type: categorical, choices: [8, 16]}}"],
     "search.warm_start: got 'runs/x' with sampler grid"),
    (["search.warm_start_top_k=-1"], "search.warm_start_top_k"),
])
def test_bad_warm_start_keys_are_refused(overrides, needle):
    with pytest.raises(SpecError, match="search.warm_start") as info:
        load_spec(TINY_PATH, [NO_BASELINE, SPACE, *overrides])
    assert needle in str(info.value)


def _instant(config, report):
    report({"eval_loss": 5.0 + abs(config["learning_rate"] - 1e-3) * 100, "tokens_seen": 96, "step": 1})


@pytest.mark.integration
def test_a_warm_started_sweep_runs_the_earlier_best_first_and_models_from_its_trials(ray_runtime, tmp_path, caplog):
    common = [SPACE, "search.max_concurrent_trials=1", "scheduler=none", "data.max_records=300", *LIGHT_PROMOTE,
              "search.baseline=null", "tracking.wandb.mode=disabled"]
    run_sweep(TINY_PATH, name="old", trial_fn=_instant, overrides=[
        *common, "search.num_samples=6", f"storage={tmp_path / 'old'}"])
    old = records.ranked(records.load_all(tmp_path / "old"), "min")
    with caplog.at_level(logging.INFO, logger="tuner"):
        run_sweep(TINY_PATH, name="new", trial_fn=_instant, overrides=[
            *common, "search.num_samples=4", f"storage={tmp_path / 'new'}",
            f"search.warm_start={tmp_path / 'old'}", "search.warm_start_top_k=2"])
    assert "warm start from" in caplog.text and "6 prior trials" in caplog.text
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'optuna.db'}")
    priors = [t for t in study.trials if warmstart.SOURCE_TRIAL in t.user_attrs]
    own = sorted((t for t in study.trials if warmstart.SOURCE_TRIAL not in t.user_attrs), key=lambda t: t.number)
    assert sorted(t.user_attrs[warmstart.SOURCE_TRIAL] for t in priors) == sorted(r.trial_id for r in old)
    assert [t.params for t in own[:2]] == [old[0].params, old[1].params]  # its best two, best first
    assert len(own) == 4 and len(records.load_all(tmp_path / "new")) == 4

    # Asked for more trials, the sweep goes on without reading the earlier one again, or adding twice.
    (tmp_path / "old" / layout.SPEC_FILE).unlink()
    run_sweep(TINY_PATH, name="new", trial_fn=_instant, overrides=[
        *common, "search.num_samples=5", f"storage={tmp_path / 'new'}", f"search.warm_start={tmp_path / 'old'}",
        "search.warm_start_top_k=2"])
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'optuna.db'}")
    assert sum(warmstart.SOURCE_TRIAL in t.user_attrs for t in study.trials) == 6
    assert len(records.load_all(tmp_path / "new")) == 5


@pytest.mark.integration
def test_a_warm_start_that_cannot_be_read_exits_2_before_any_trial(tmp_path, capsys):
    from tuner.cli import main

    code = main(["sweep", str(TINY_PATH), "--set", SPACE, "--set", NO_BASELINE, "--set",
                 f"storage={tmp_path / 'new'}", "--set", f"search.warm_start={tmp_path / 'nowhere'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "search.warm_start:" in err and "not a sweep directory" in err and "Traceback" not in err
    assert not (tmp_path / "new" / layout.TRIALS_DIR).exists()


def test_a_bucket_sweep_warm_starts_from_its_driver_files(s3_server, tmp_path, monkeypatch):
    from tuner import state, storage

    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "old"
    earlier_sweep(folder, TRIALS[:2])
    state.SweepState(load_spec(folder / layout.SPEC_FILE).fingerprint()).save(folder)
    uri = f"s3://{s3_server['bucket']}/sweeps/old"
    for name in (layout.SPEC_FILE, layout.STATE_FILE):
        storage.upload(folder / name, f"{uri}/{name}")
    storage.upload(folder / layout.TRIALS_DIR, f"{uri}/{layout.TRIALS_DIR}")
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={uri}", "search.warm_start_top_k=3",
                                 f"storage={tmp_path / 'new'}"])
    priors = warmstart.load(spec)
    assert sorted(t.user_attrs[warmstart.SOURCE_TRIAL] for t in priors.trials) == ["old00000", "old00001"]
    assert priors.queued == [TRIALS[0][0], TRIALS[1][0]]
    missing = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start=s3://{s3_server['bucket']}/nothing"])
    with pytest.raises(UserError, match="no sweep there"):
        warmstart.load(missing)


def test_a_multi_objective_sweep_warm_starts_a_study_of_as_many_directions(tmp_path):
    metrics = "search.metrics=[{name: eval_loss, mode: min}, {name: trainable_params, mode: min}]"
    folder = tmp_path / "old"
    earlier_sweep(folder, [], [metrics])
    for i, (params, loss, size) in enumerate([(TRIALS[0][0], 2.0, 900), (TRIALS[1][0], 2.5, 300)]):
        report = {C.EVAL_LOSS: loss, "trainable_params": size, C.TOKENS_SEEN: 96, C.STEP: 1}
        records.save(TrialRecord(trial_id=f"old{i:05d}", status=C.COMPLETED, params=params, reports=1,
                                 history=[report], best_metric=loss, best_eval_loss=loss, best_step=1), folder)
    spec = load_spec(TINY_PATH, [NO_BASELINE, SPACE, metrics, f"search.warm_start={folder}",
                                 f"storage={tmp_path / 'new'}"])
    live = tmp_path / "live.db"
    warmstart.prepare(spec, live, "sweep-id")
    found = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{live}")
    assert len(found.directions) == 2
    assert sorted(t.values for t in found.trials) == [[2.0, 900.0], [2.5, 300.0]]
    single = load_spec(TINY_PATH, [NO_BASELINE, SPACE, f"search.warm_start={folder}"])
    with pytest.raises(UserError, match="that sweep's objectives"):
        warmstart.load(single)
