"""The search space in Optuna's vocabulary, and the complete hyperparameters each trial sees."""

from __future__ import annotations

import copy

import optuna.distributions as od
import pytest

from tuner import hyperparams
from tuner.space import (
    ConditionalSpace,
    distributions,
    fixed_values,
    max_epochs,
    resolve,
    searched_names,
    to_distribution,
)
from tuner.spec import SpecError, validate

BASE = {
    "name": "space",
    "model": {"name_or_path": "builtin:tiny-gpt2"},
    "data": {"path": "corpus.jsonl"},
}


def make_spec(space=None, train=None, model=None, num_samples=None):
    raw = copy.deepcopy(BASE)
    space = copy.deepcopy(space or {})
    searches = any(isinstance(e, dict) and "type" in e for e in space.values())
    raw["search"] = {"space": space, "num_samples": num_samples or (4 if searches else 1)}
    if train:
        raw["train"] = dict(train)
    if model:
        raw["model"].update(model)
    return validate(raw)


# ---------------------------------------------------------------------------------------------
# to_distribution.


@pytest.mark.parametrize("entry, expected", [
    ({"type": "float", "low": 0.0, "high": 0.1}, od.FloatDistribution(0.0, 0.1)),
    ({"type": "float", "low": 1e-5, "high": 1e-3, "log": True}, od.FloatDistribution(1e-5, 1e-3, log=True)),
    ({"type": "float", "low": 0.0, "high": 0.1, "step": 0.05}, od.FloatDistribution(0.0, 0.1, step=0.05)),
    ({"type": "float", "low": "1e-5", "high": "1e-3", "log": True}, od.FloatDistribution(1e-5, 1e-3, log=True)),
])
def test_to_distribution_float(entry, expected):
    dist = to_distribution("weight_decay", entry)
    assert dist == expected
    assert type(dist.low) is float and type(dist.high) is float


@pytest.mark.parametrize("entry, expected", [
    ({"type": "int", "low": 1, "high": 4}, od.IntDistribution(1, 4)),
    ({"type": "int", "low": 1, "high": 16, "log": True}, od.IntDistribution(1, 16, log=True)),
    ({"type": "int", "low": 2, "high": 8, "step": 2}, od.IntDistribution(2, 8, step=2)),
    ({"type": "int", "low": 1.0, "high": 4.0}, od.IntDistribution(1, 4)),
])
def test_to_distribution_int(entry, expected):
    dist = to_distribution("gradient_accumulation_steps", entry)
    assert dist == expected
    assert type(dist.low) is int and type(dist.high) is int and dist.step == expected.step


def test_to_distribution_categorical():
    dist = to_distribution("per_device_train_batch_size", {"type": "categorical", "choices": [8, 16, 32]})
    assert isinstance(dist, od.CategoricalDistribution)
    assert dist.choices == (8, 16, 32)
    names = to_distribution("lr_scheduler_type", {"type": "categorical", "choices": ["linear", "cosine"]})
    assert names.choices == ("linear", "cosine")


# ---------------------------------------------------------------------------------------------
# distributions / searched_names.


SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
    "num_train_epochs": {"type": "int", "low": 1, "high": 3},
    "weight_decay": 0.05,  # fixed in the space
    "lr_scheduler_type": "cosine",  # fixed in the space
}


def test_distributions_only_include_distribution_entries():
    spec = make_spec(SPACE)
    dists = distributions(spec)
    assert set(dists) == {"learning_rate", "per_device_train_batch_size", "num_train_epochs"}
    assert dists["learning_rate"] == od.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["num_train_epochs"] == od.IntDistribution(1, 3)
    assert searched_names(spec) == ["learning_rate", "per_device_train_batch_size", "num_train_epochs"]


def test_distributions_empty_space():
    spec = make_spec({"weight_decay": 0.1})
    assert distributions(spec) == {}
    assert searched_names(spec) == []


# ---------------------------------------------------------------------------------------------
# fixed_values / resolve.


def test_fixed_values_defaults_only():
    values = fixed_values(make_spec())
    assert values == {**hyperparams.defaults(), "num_train_epochs": 3.0}
    assert type(values["per_device_train_batch_size"]) is int
    assert type(values["num_train_epochs"]) is float


def test_fixed_values_merges_every_source_and_drops_searched():
    spec = make_spec(
        {"learning_rate": SPACE["learning_rate"], "warmup_ratio": 0.1, "max_grad_norm": 0.5,
         "per_device_train_batch_size": 16.0, "lr_scheduler_type": "cosine"},
        train={"weight_decay": 0.01, "gradient_accumulation_steps": 2},
        model={"freeze_layers": 1},
    )
    values = fixed_values(spec)
    assert values == {
        "per_device_train_batch_size": 16,  # fixed in the space, cast to int
        "num_train_epochs": 3.0,  # Hugging Face's default
        "warmup_ratio": 0.1,  # fixed in the space
        "gradient_accumulation_steps": 2,  # fixed in train
        "weight_decay": 0.01,  # fixed in train
        "freeze_layers": 1,  # model.freeze_layers
        "max_grad_norm": 0.5,  # a non-default searchable name fixed in the space
        "lr_scheduler_type": "cosine",
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "label_smoothing_factor": 0.0,
        "neftune_noise_alpha": None,
        "use_lora": False, "lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05,  # LoRA's defaults, off
    }
    assert "learning_rate" not in values
    assert type(values["per_device_train_batch_size"]) is int


def test_fixed_values_searched_freeze_layers_is_dropped():
    spec = make_spec({"freeze_layers": {"type": "int", "low": 0, "high": 2}})
    assert "freeze_layers" not in fixed_values(spec)


def test_fixed_values_string_numbers_become_numbers():
    spec = make_spec({"weight_decay": "1e-2"}, train={"learning_rate": "3e-4"})
    values = fixed_values(spec)
    assert values["weight_decay"] == pytest.approx(0.01) and isinstance(values["weight_decay"], float)
    assert values["learning_rate"] == pytest.approx(3e-4)


def test_resolve_overlays_sampled_values_and_casts_ints():
    spec = make_spec(SPACE, train={"warmup_ratio": 0.05})
    values = resolve(spec, {"learning_rate": 2e-4, "per_device_train_batch_size": 16.0,
                            "num_train_epochs": 2})
    assert values == {
        "learning_rate": 2e-4,
        "per_device_train_batch_size": 16,
        "num_train_epochs": 2.0,
        "warmup_ratio": 0.05,
        "gradient_accumulation_steps": 1,
        "weight_decay": 0.05,
        "freeze_layers": 0,
        "lr_scheduler_type": "cosine", "max_grad_norm": 1.0,
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "label_smoothing_factor": 0.0,
        "neftune_noise_alpha": None,
        "use_lora": False, "lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05,
    }
    assert type(values["per_device_train_batch_size"]) is int
    assert type(values["num_train_epochs"]) is float


def test_resolve_keeps_categorical_strings_and_does_not_touch_fixed_values():
    spec = make_spec({"lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
                      "learning_rate": SPACE["learning_rate"]})
    before = fixed_values(spec)
    values = resolve(spec, {"lr_scheduler_type": "cosine", "learning_rate": 1e-4})
    assert values["lr_scheduler_type"] == "cosine"
    assert fixed_values(spec) == before
    assert set(values) == set(before) | {"lr_scheduler_type", "learning_rate"}


# ---------------------------------------------------------------------------------------------
# max_epochs.


@pytest.mark.parametrize("space, train, expected", [
    ({"num_train_epochs": {"type": "int", "low": 1, "high": 4}}, None, 4.0),
    ({"num_train_epochs": {"type": "float", "low": 0.5, "high": 2.5}}, None, 2.5),
    ({"num_train_epochs": {"type": "categorical", "choices": [1, 5, 2]}}, None, 5.0),
    ({"num_train_epochs": 2}, None, 2.0),
    ({}, {"num_train_epochs": 6}, 6.0),
    ({}, None, float(hyperparams.defaults()["num_train_epochs"])),
])
def test_max_epochs(space, train, expected):
    result = max_epochs(make_spec(space, train=train))
    assert result == expected and type(result) is float


# ---------------------------------------------------------------------------------------------
# Regression: this was a bug once.


def test_regression_int_distribution_fractional_step():
    try:
        spec = make_spec({"gradient_accumulation_steps": {"type": "int", "low": 1, "high": 4, "step": 0.5}})
    except SpecError:
        return  # fixed by rejecting it in validation
    assert distributions(spec)["gradient_accumulation_steps"].step >= 1


# ---------------------------------------------------------------------------------------------
# Conditional spaces (`when:`).

LORA_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "use_lora": {"type": "categorical", "choices": [True, False]},
    "lora_r": {"type": "int", "low": 2, "high": 16, "log": True, "when": {"use_lora": True}},
    "lora_alpha": {"type": "categorical", "choices": [8, 16, 32], "when": {"use_lora": True}},
}


def test_conditional_parameters_are_sampled_only_when_their_condition_holds():
    import optuna

    space = ConditionalSpace(make_spec(LORA_SPACE))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(20):
        trial = study.ask()
        space(trial)
        study.tell(trial, trial.params["learning_rate"])
    used = [t.params for t in study.trials]
    assert {p["use_lora"] for p in used} == {True, False}
    for params in used:
        assert ("lora_r" in params) == ("lora_alpha" in params) == params["use_lora"]
    # a fixed value takes part in conditions too
    fixed_on = ConditionalSpace(make_spec({k: v for k, v in LORA_SPACE.items() if k != "use_lora"},
                                          model={"use_lora": True}))
    trial = study.ask()
    fixed_on(trial)
    assert set(trial.params) == {"learning_rate", "lora_r", "lora_alpha"}


def test_a_conditional_space_pickles_with_its_searcher():
    import pickle

    space = ConditionalSpace(make_spec(LORA_SPACE))
    assert pickle.loads(pickle.dumps(space)).entries == space.entries
