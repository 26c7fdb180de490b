"""The spec schema and its static validation: every rule, each problem naming key path and value."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tuner.spec import SchedulerSpec, Spec, SpecError, apply_override, load_spec, parse_duration, to_yaml, validate

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "search_spaces").glob("*.yaml"))

BASE = {
    "name": "unit",
    "model": {"name_or_path": "builtin:tiny-gpt2"},
    "data": {"path": "corpus.jsonl"},
    "search": {"space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}},
}


def base(**sections) -> dict:
    """A deep copy of the minimal valid spec, with top-level sections replaced or added."""
    raw = copy.deepcopy(BASE)
    raw.update(copy.deepcopy(sections))
    return raw


def with_space(num_samples: int = 4, baseline=None, **space) -> dict:
    search = {"num_samples": num_samples, "space": space}
    if baseline is not None:
        search["baseline"] = baseline
    return base(search=search)


def rx(*parts: str) -> str:
    """A pattern matching the parts, in order, on one line of the message (one problem)."""
    return ".*".join(re.escape(p) for p in parts)


def fails(raw: dict, *parts: str) -> str:
    """Validate `raw`, expect a SpecError with one problem line holding all `parts`; return it."""
    with pytest.raises(SpecError, match=rx(*parts)) as info:
        validate(raw)
    return str(info.value)


def problem_lines(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("  - ")]


# ---------------------------------------------------------------------------------------------
# The base spec and defaults.


def test_base_spec_is_valid_and_defaults_apply():
    spec = validate(base())
    assert isinstance(spec, Spec)
    assert spec.data.block_size == 128
    assert spec.search.sampler == "tpe"
    assert spec.scheduler.type == "asha"
    assert spec.train.learning_rate is None


def test_load_spec_does_not_mutate_its_input():
    raw = base()
    snapshot = copy.deepcopy(raw)
    load_spec(raw, ["search.num_samples=2"])
    assert raw == snapshot


# ---------------------------------------------------------------------------------------------
# Unknown keys, missing keys, wrong types.


def test_unknown_top_level_key():
    fails(base(trian={"learning_rate": 1e-4}), "trian: unknown key", "allowed keys: name, model, data")


def test_unknown_key_suggests_the_closest_one():
    message = fails(base(train={"lerning_rate": 1e-4}), "train.lerning_rate: unknown key (did you mean "
                    "'learning_rate'?); allowed keys: learning_rate")
    assert "did you mean" not in fails(base(train={"colour": "blue"}), "train.colour: unknown key; allowed")
    assert message.count("did you mean") == 1


def test_unknown_nested_key():
    fails(base(train={"learning_rat": 1e-4}), "train.learning_rat: unknown key", "learning_rate")


def test_unknown_key_in_deeper_section():
    raw = base()
    raw["data"]["clean"] = {"strip_htm": False}
    fails(raw, "data.clean.strip_htm: unknown key", "strip_html")


def test_unknown_key_inside_distribution_entry():
    raw = with_space(learning_rate={"type": "float", "low": 1e-5, "high": 1e-3, "logg": True})
    fails(raw, "search.space.learning_rate.logg: unknown key for a float distribution",
          "allowed: high, log, low, step, type")


def test_categorical_distribution_rejects_range_keys():
    raw = with_space(per_device_train_batch_size={"type": "categorical", "choices": [8, 16], "low": 8})
    fails(raw, "search.space.per_device_train_batch_size.low: unknown key for a categorical distribution")


@pytest.mark.parametrize("key", ["name", "model", "data"])
def test_missing_required_top_level_key(key):
    raw = base()
    del raw[key]
    fails(raw, f"{key}: missing; it is required")


def test_missing_model_name_or_path():
    fails(base(model={}), "model.name_or_path: missing; it is required")


@pytest.mark.parametrize("section, key, value, expected", [
    ("data", "block_size", "big", "expected an integer"),
    ("data", "block_size", 64.5, "expected an integer"),
    ("data", "seed", True, "expected an integer"),  # a bool is not an int here
    ("search", "num_samples", "four", "expected an integer"),
    ("search", "num_samples", "4.5", "expected an integer"),
    ("resources", "cpus_per_trial", "lots", "expected a number"),
    ("train", "learning_rate", [1e-4], "expected a number"),
    ("train", "adam_beta1", False, "expected a number"),
    ("train", "gradient_checkpointing", "yes", "expected true or false"),
    ("promote", "evaluate_base", 1, "expected true or false"),
    ("data", "text_column", 5, "expected a non-empty string"),
    ("data", "text_column", "", "expected a non-empty string"),
])
def test_wrong_scalar_type(section, key, value, expected):
    raw = base()
    raw.setdefault(section, {})[key] = value
    fails(raw, f"{section}.{key}: got {value!r}", expected)


def test_wrong_type_for_name():
    fails(base(name=123), "name: got 123", "expected a non-empty string")


def test_model_that_is_not_a_mapping():
    fails(base(model="gpt2"), "model: got 'gpt2', expected a mapping")


def test_whole_float_is_accepted_as_integer():
    raw = base()
    raw["data"]["block_size"] = 64.0
    spec = validate(raw)
    assert spec.data.block_size == 64 and type(spec.data.block_size) is int


def test_integer_is_accepted_as_float():
    spec = validate(base(resources={"cpus_per_trial": 2}))
    assert spec.resources.cpus_per_trial == 2.0 and type(spec.resources.cpus_per_trial) is float


@pytest.mark.parametrize("section, key, value", [
    ("search", "sampler", "hyperopt"),
    ("search", "mode", "minimize"),
    ("train", "precision", "fp64"),
    ("train", "lr_scheduler_type", "cosin"),
    ("scheduler", "type", "hyperband"),
])
def test_literal_choices(section, key, value):
    raw = base()
    raw.setdefault(section, {})[key] = value
    fails(raw, f"{section}.{key}: got {value!r}, expected one of")


@pytest.mark.parametrize("section, key, value", [
    ("search", "sampler", "cmaes"),
    ("search", "sampler", "qmc"),
    ("search", "sampler", "gp"),
    ("search", "sampler", "nsga2"),
    ("search", "mode", "max"),
    ("train", "precision", "bf16"),
    ("train", "lr_scheduler_type", "cosine_with_restarts"),
])
def test_literal_choices_accepted(section, key, value):
    raw = base()
    raw.setdefault(section, {})[key] = value
    assert getattr(getattr(validate(raw), section), key) == value


def test_yaml_string_numbers_are_accepted(tmp_path):
    """PyYAML reads `1e-4` (no dot) as a string; the spec takes it as the number meant."""
    text = yaml.safe_dump(base(), sort_keys=False).replace("search:", "train:\n  adam_epsilon: 1e-7\nsearch:")
    text = text.replace("low: 1.0e-05", "low: 1e-5")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["train"]["adam_epsilon"] == "1e-7"  # the premise
    spec = load_spec(path)
    assert spec.train.adam_epsilon == pytest.approx(1e-7)
    assert isinstance(spec.train.adam_epsilon, float)
    assert spec.search.space["learning_rate"]["low"] == "1e-5"


def test_string_number_in_train_is_converted():
    spec = validate(base(train={"learning_rate": "1e-4", "weight_decay": "0.01"}, search={"num_samples": 1}))
    assert spec.train.learning_rate == pytest.approx(1e-4)
    assert spec.train.weight_decay == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------
# Data.


def test_data_needs_dataset_or_path():
    fails(base(data={}), "data: got dataset=None and path=None", "set exactly one")


def test_data_cannot_have_both_dataset_and_path():
    fails(base(data={"dataset": "wikitext", "path": "x.txt"}),
          "data: got dataset='wikitext' and path='x.txt'", "set exactly one")


def test_data_config_needs_dataset():
    fails(base(data={"path": "x.txt", "config": "wikitext-2-raw-v1"}),
          "data.config: got 'wikitext-2-raw-v1' without data.dataset")


def test_data_dataset_with_config_is_valid():
    spec = validate(base(data={"dataset": "wikitext", "config": "wikitext-2-raw-v1"}))
    assert spec.data.dataset == "wikitext" and spec.data.path is None


@pytest.mark.parametrize("split, key, value", [
    ({"train": 1.0, "validation": 0.0, "test": 0.0}, "train", 1.0),
    ({"train": 0.9, "validation": 0.1, "test": 0.0}, "test", 0.0),
    ({"train": 1.2, "validation": -0.1, "test": -0.1}, "validation", -0.1),
])
def test_split_ratio_outside_open_unit_interval(split, key, value):
    fails(base(data={"path": "x.txt", "split": split}),
          f"data.split.{key}: got {value!r}", "expected a fraction in (0, 1)")


def test_split_ratios_must_sum_to_one():
    fails(base(data={"path": "x.txt", "split": {"train": 0.8, "validation": 0.1, "test": 0.2}}),
          "data.split: ratios sum to 1.1, expected 1")


def test_split_ratios_valid():
    spec = validate(base(data={"path": "x.txt", "split": {"train": 0.7, "validation": 0.15, "test": 0.15}}))
    assert spec.data.split.validation == 0.15


def test_block_size_at_least_two():
    fails(base(data={"path": "x.txt", "block_size": 1}), "data.block_size: got 1, expected >= 2")
    assert validate(base(data={"path": "x.txt", "block_size": 2})).data.block_size == 2


def test_max_records_at_least_three():
    fails(base(data={"path": "x.txt", "max_records": 2}), "data.max_records: got 2, expected >= 3")


# ---------------------------------------------------------------------------------------------
# Fixed versus searched.


def test_field_fixed_in_train_and_searched_is_an_error():
    raw = base(train={"learning_rate": 1e-4})
    fails(raw, "search.space.learning_rate: learning_rate is also fixed in train.learning_rate")


def test_field_fixed_in_train_and_fixed_in_space_is_an_error():
    raw = base(train={"weight_decay": 0.01})
    raw["search"]["space"]["weight_decay"] = 0.1
    fails(raw, "search.space.weight_decay: weight_decay is also fixed in train.weight_decay")


def test_lr_scheduler_type_fixed_in_train_and_searched_is_an_error():
    raw = base(train={"lr_scheduler_type": "linear"})
    raw["search"]["space"]["lr_scheduler_type"] = {"type": "categorical", "choices": ["linear", "cosine"]}
    fails(raw, "search.space.lr_scheduler_type: lr_scheduler_type is also fixed in train.lr_scheduler_type")


def test_freeze_layers_fixed_in_model_and_searched_is_an_error():
    raw = base(model={"name_or_path": "gpt2", "freeze_layers": 1})
    raw["search"]["space"]["freeze_layers"] = {"type": "int", "low": 0, "high": 2}
    fails(raw, "search.space.freeze_layers: freeze_layers is also fixed in model.freeze_layers")


def test_field_searched_only_is_fine():
    raw = base()
    raw["search"]["space"]["freeze_layers"] = {"type": "int", "low": 0, "high": 2}
    spec = validate(raw)
    assert spec.train.learning_rate is None and spec.model.freeze_layers is None
    assert set(spec.search.space) == {"learning_rate", "freeze_layers"}


def test_unsearchable_name_in_space():
    raw = with_space(seed={"type": "int", "low": 0, "high": 3})
    fails(raw, "search.space.seed: 'seed' cannot be searched", "searchable: learning_rate")


# ---------------------------------------------------------------------------------------------
# Distributions.


def test_low_greater_than_high():
    raw = with_space(learning_rate={"type": "float", "low": 1e-3, "high": 1e-5})
    fails(raw, "search.space.learning_rate: the `low` value must be smaller than or equal to the "
               "`high` value", "low=0.001, high=1e-05")


def test_low_equal_high_is_allowed():
    raw = with_space(weight_decay={"type": "float", "low": 0.1, "high": 0.1})
    assert validate(raw).search.space["weight_decay"]["low"] == 0.1


def test_log_distribution_needs_positive_low():
    raw = with_space(weight_decay={"type": "float", "low": 0.0, "high": 0.1, "log": True})
    fails(raw, "search.space.weight_decay: a log distribution needs low > 0", "low=0")


def test_log_must_be_bool():
    raw = with_space(weight_decay={"type": "float", "low": 0.01, "high": 0.1, "log": "yes"})
    fails(raw, "search.space.weight_decay.log: got 'yes', expected true or false")


def test_step_and_log_cannot_be_combined():
    raw = with_space(learning_rate={"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5})
    fails(raw, "search.space.learning_rate: `step` and `log` cannot be used together", "step=1e-05")


@pytest.mark.parametrize("step", [0, -0.01, "small"])
def test_step_must_be_positive_number(step):
    raw = with_space(weight_decay={"type": "float", "low": 0.0, "high": 0.1, "step": step})
    fails(raw, f"search.space.weight_decay.step: got {step!r}, expected a number > 0")


@pytest.mark.parametrize("name, entry, high", [
    ("warmup_ratio", {"type": "float", "low": 0.0, "high": 0.1, "step": 0.03}, "0.09"),
    ("gradient_accumulation_steps", {"type": "int", "low": 1, "high": 4, "step": 2}, "3"),
    ("weight_decay", {"type": "float", "low": 0.0, "high": 0.1, "step": 0.5}, "0"),
])
def test_step_must_divide_the_range(name, entry, high):
    """Optuna would quietly lower `high` to the last whole step; the spec says so instead."""
    fails(with_space(**{name: entry}), f"search.space.{name}.step: got {entry['step']!r}, which does not "
          f"divide the range", f"set high: {high}")


@pytest.mark.parametrize("entry", [
    {"type": "float", "low": 0.0, "high": 0.1, "step": 0.02},  # 0.1 / 0.02 is 5.000000000000001
    {"type": "float", "low": 0.01, "high": 0.07, "step": 0.02},
    {"type": "float", "low": 0.05, "high": 0.05, "step": 0.02},
])
def test_step_dividing_the_range_up_to_float_error_is_fine(entry):
    assert validate(with_space(warmup_ratio=entry)).search.space["warmup_ratio"] == entry


@pytest.mark.parametrize("key, entry", [
    ("low", {"type": "int", "low": 1.5, "high": 4}),
    ("high", {"type": "int", "low": 1, "high": 4.5}),
    ("high", {"type": "int", "low": 1, "high": "many"}),
])
def test_int_distribution_needs_integer_bounds(key, entry):
    raw = with_space(gradient_accumulation_steps=entry)
    fails(raw, f"search.space.gradient_accumulation_steps.{key}: got {entry[key]!r}, expected an integer")


def test_float_distribution_needs_number_bounds():
    raw = with_space(weight_decay={"type": "float", "low": "none", "high": 0.1})
    fails(raw, "search.space.weight_decay.low: got 'none', expected a number")


def test_float_distribution_missing_bound():
    raw = with_space(weight_decay={"type": "float", "low": 0.0})
    fails(raw, "search.space.weight_decay.high: got None, expected a number")


def test_float_type_for_integer_hyperparameter():
    raw = with_space(per_device_train_batch_size={"type": "float", "low": 4, "high": 32})
    fails(raw, "search.space.per_device_train_batch_size.type: got 'float'",
          "per_device_train_batch_size is an integer: use type: int")


def test_unknown_distribution_type():
    raw = with_space(weight_decay={"type": "uniform", "low": 0.0, "high": 0.1})
    fails(raw, "search.space.weight_decay.type: got 'uniform', expected 'float', 'int' or 'categorical'")


@pytest.mark.parametrize("choices", [[], None, "8,16"])
def test_categorical_needs_non_empty_list(choices):
    raw = with_space(per_device_train_batch_size={"type": "categorical", "choices": choices})
    fails(raw, f"search.space.per_device_train_batch_size.choices: got {choices!r}, "
               "expected a non-empty list")


def test_categorical_duplicate_choices():
    raw = with_space(per_device_train_batch_size={"type": "categorical", "choices": [8, 16, 8]})
    fails(raw, "search.space.per_device_train_batch_size.choices: got [8, 16, 8]",
          "each choice must appear once")


def test_categorical_choice_outside_domain():
    raw = with_space(per_device_train_batch_size={"type": "categorical", "choices": [8, 0]})
    fails(raw, "search.space.per_device_train_batch_size.choices[1]: got 0", "an integer >= 1")


def test_lr_scheduler_type_categorical_checks_each_choice():
    raw = with_space(lr_scheduler_type={"type": "categorical", "choices": ["linear", "cosin"]})
    fails(raw, "search.space.lr_scheduler_type.choices[1]: got 'cosin'", "expected one of linear")


def test_lr_scheduler_type_cannot_have_a_range():
    raw = with_space(lr_scheduler_type={"type": "float", "low": 0, "high": 1})
    fails(raw, "search.space.lr_scheduler_type.type: got 'float'", "categorical or a fixed value")


def test_lr_scheduler_type_fixed_in_space():
    fails(with_space(num_samples=1, lr_scheduler_type="sawtooth"),
          "search.space.lr_scheduler_type: got 'sawtooth', expected one of")
    assert validate(with_space(num_samples=1, lr_scheduler_type="cosine")).search.space == {
        "lr_scheduler_type": "cosine"}


def test_all_distribution_kinds_valid():
    spec = validate(with_space(
        learning_rate={"type": "float", "low": "1e-5", "high": "1e-3", "log": True},
        warmup_ratio={"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        gradient_accumulation_steps={"type": "int", "low": 1, "high": 8, "log": True},
        num_train_epochs={"type": "int", "low": 1, "high": 3, "step": 1},
        per_device_train_batch_size={"type": "categorical", "choices": [8, 16]},
        lr_scheduler_type={"type": "categorical", "choices": ["linear", "cosine"]},
        weight_decay=0.01,
    ))
    assert len(spec.search.space) == 7


# ---------------------------------------------------------------------------------------------
# Hyperparameter domains (fixed in train, fixed in the space, bounds, choices).


@pytest.mark.parametrize("name, value, text", [
    ("learning_rate", 0.0, "a learning rate in (0, 1]"),
    ("learning_rate", 1.5, "a learning rate in (0, 1]"),
    ("learning_rate", -1e-4, "a learning rate in (0, 1]"),
    ("warmup_ratio", 1.0, "a fraction of the total steps in [0, 1)"),
    ("warmup_ratio", -0.1, "a fraction of the total steps in [0, 1)"),
    ("per_device_train_batch_size", 0, "an integer >= 1"),
    ("per_device_train_batch_size", 2.5, "an integer >= 1"),
    ("gradient_accumulation_steps", 0, "an integer >= 1"),
    ("num_train_epochs", 0.0, "a number of epochs > 0"),
    ("weight_decay", -0.01, "a number >= 0"),
    ("max_grad_norm", 0.0, "a number > 0"),
    ("adam_beta1", 1.0, "a number in [0, 1)"),
    ("adam_beta2", -0.5, "a number in [0, 1)"),
    ("adam_epsilon", 0.0, "a number > 0"),
    ("label_smoothing_factor", 1.0, "a number in [0, 1)"),
])
def test_domain_rule_fixed_in_train(name, value, text):
    fails(base(train={name: value}), f"train.{name}: got {value!r}, expected {text}")


@pytest.mark.parametrize("name, value", [
    ("learning_rate", 1.0), ("warmup_ratio", 0.0), ("per_device_train_batch_size", 1),
    ("weight_decay", 0.0), ("adam_beta1", 0.0), ("num_train_epochs", 0.5),
])
def test_domain_boundaries_accepted(name, value):
    raw = base(train={name: value})
    raw["search"]["space"].pop(name, None)
    if name == "learning_rate":
        raw["search"] = {"num_samples": 1}
    assert getattr(validate(raw).train, name) == value


def test_domain_rule_fixed_in_space():
    fails(with_space(num_samples=1, weight_decay=-0.1),
          "search.space.weight_decay: got -0.1, expected a number >= 0")


def test_domain_rule_freeze_layers_in_space():
    fails(with_space(freeze_layers={"type": "int", "low": -1, "high": 2}),
          "search.space.freeze_layers.low: got -1", "an integer >= 0")


def test_domain_rule_on_distribution_bound():
    raw = with_space(warmup_ratio={"type": "float", "low": 0.0, "high": 1.0})
    fails(raw, "search.space.warmup_ratio.high: got 1.0", "a fraction of the total steps in [0, 1)")


def test_domain_rule_on_learning_rate_bound():
    raw = with_space(learning_rate={"type": "float", "low": 0, "high": 1e-3})
    fails(raw, "search.space.learning_rate.low: got 0.0", "a learning rate in (0, 1]")


def test_domain_rule_non_hyperparameter_train_fields():
    fails(base(train={"per_device_eval_batch_size": 0}), "train.per_device_eval_batch_size: got 0, expected >= 1")
    fails(base(train={"report_every_tokens": 0}), "train.report_every_tokens: got 0, expected >= 1")
    fails(base(train={"stop_after_steps": 0}), "train.stop_after_steps: got 0, expected >= 1")
    fails(base(train={"eval_blocks": 0}), "train.eval_blocks: got 0, expected >= 1")
    fails(base(train={"dataloader_workers": -1}), "train.dataloader_workers: got -1, expected >= 0")
    fails(base(train={"precision": "fp8"}), "train.precision")


# ---------------------------------------------------------------------------------------------
# Search.


def test_metric_must_be_a_reported_key():
    raw = base()
    raw["search"]["metric"] = "accuracy"
    fails(raw, "search.metric: got 'accuracy', expected a reported key", "eval_loss", "eval_rougeL",
          "with search.metric_fn a key of its result")


@pytest.mark.parametrize("metric", ["eval_bleu", "eval_rouge1", "eval_rouge2", "eval_rougeL"])
def test_a_generation_metric_is_maximised_unless_the_spec_says(metric):
    raw = base()
    raw["search"]["metric"] = metric
    assert validate(raw).search.mode == "max"
    raw["search"]["mode"] = "min"
    fails(raw, f"search.mode: got 'min' with search.metric {metric!r}, where higher is better",
          "set mode: max, or leave mode out")


def test_exact_match_needs_instruction_or_chat_data():
    raw = base()
    raw["search"].update(metric="eval_exact_match")
    fails(raw, "search.metric: got 'eval_exact_match' on plain text", "use eval_rougeL or eval_bleu")
    for columns in ({"prompt_column": "q", "completion_column": "a"}, {"messages_column": "messages"}):
        raw["data"] = {"path": "corpus.jsonl", **columns}
        assert validate(raw).search.mode == "max"


def test_a_metric_fn_key_needs_its_prefix_and_a_mode():
    raw = base()
    raw["search"].update(metric="eval_token_accuracy", metric_fn="tests.metric_helpers:token_accuracy")
    fails(raw, "search.mode: missing with search.metric 'eval_token_accuracy' (a metric_fn key)",
          "higher is better (mode: max) or lower (mode: min)")
    raw["search"]["mode"] = "max"
    spec = validate(raw)
    assert (spec.search.metric_fn, spec.search.mode) == ("tests.metric_helpers:token_accuracy", "max")
    raw["search"]["metric"] = "token_accuracy"
    fails(raw, "search.metric: got 'token_accuracy' with search.metric_fn", "set search.metric: eval_token_accuracy")


def test_a_metric_fn_from_python_stands_in_for_the_specs():
    raw = base()
    raw["search"].update(metric="eval_accuracy", mode="max")
    fails(raw, "search.metric: got 'eval_accuracy'")
    assert validate(raw, metric_fn=print).search.metric == "eval_accuracy"
    assert validate(raw, saved=True).search.metric == "eval_accuracy"  # a sweep's own spec, read back
    raw["search"]["metric_fn"] = "tests.metric_helpers:token_accuracy"
    assert validate(raw).search.metric_fn == "tests.metric_helpers:token_accuracy"
    with pytest.raises(SpecError, match="search.metric_fn: got 'tests.metric_helpers:token_accuracy' and a "
                                        "metric_fn from Python too; give one"):
        validate(raw, metric_fn=print)


def test_a_saved_specs_metric_fn_is_not_imported():
    raw = base()
    raw["search"].update(metric="eval_accuracy", mode="max", metric_fn="not_here.metrics:accuracy")
    fails(raw, "search.metric_fn: got 'not_here.metrics:accuracy', but module 'not_here.metrics' cannot be imported")
    assert validate(raw, saved=True).search.metric_fn == "not_here.metrics:accuracy"


@pytest.mark.parametrize("key", ["num_prompts", "prompt_tokens", "reference_tokens", "max_new_tokens"])
def test_the_metric_sample_needs_at_least_one(key):
    fails(base(search={**BASE["search"], "metric_sample": {key: 0}}),
          f"search.metric_sample.{key}: got 0, expected >= 1")


def test_metric_other_reported_key_accepted():
    raw = base()
    raw["search"]["metric"] = "train_loss"
    assert validate(raw).search.metric == "train_loss"


def test_num_samples_more_than_one_with_nothing_to_sample():
    fails(base(search={"num_samples": 4}), "search.num_samples: got 4, but search.space samples nothing")


def test_num_samples_with_only_fixed_entries_samples_nothing():
    fails(with_space(num_samples=3, weight_decay=0.01), "search.num_samples: got 3, but search.space samples nothing")


def test_single_trial_without_space_is_fine():
    spec = validate(base(search={"num_samples": 1}))
    assert spec.search.space == {}


@pytest.mark.parametrize("key, value, low", [
    ("num_samples", 0, 1), ("max_concurrent_trials", 0, 1), ("n_startup_trials", -1, 0),
])
def test_search_counts(key, value, low):
    raw = base()
    raw["search"][key] = value
    fails(raw, f"search.{key}: got {value}, expected >= {low}")


@pytest.mark.parametrize("budget", ["30m", "90s", "2h", 3600, "45"])
def test_time_budget_accepted(budget):
    raw = base()
    raw["search"]["time_budget"] = budget
    spec = validate(raw)
    assert parse_duration(spec.search.time_budget) > 0


@pytest.mark.parametrize("budget", ["abc", "30 minutes", 0, -5, "0m"])
def test_time_budget_rejected(budget):
    raw = base()
    raw["search"]["time_budget"] = budget
    fails(raw, f"search.time_budget: got {float(budget) if isinstance(budget, int) else budget!r}",
          "expected seconds > 0 or a duration")


def test_space_entry_without_type_is_checked_as_a_fixed_value():
    raw = base()
    raw["search"]["space"]["learning_rate"] = {"low": 1e-5, "high": 1e-3}  # no type: a fixed value
    fails(raw, "search.space.learning_rate: got {'low': 1e-05, 'high': 0.001}", "a learning rate in (0, 1]")


# ---------------------------------------------------------------------------------------------
# Baseline.

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
    "num_train_epochs": {"type": "int", "low": 1, "high": 3},
    "weight_decay": 0.0,
}
GOOD_BASELINE = {"learning_rate": 5e-5, "per_device_train_batch_size": 8, "num_train_epochs": 1}


def test_baseline_valid():
    spec = validate(with_space(baseline=GOOD_BASELINE, **SPACE))
    assert spec.search.baseline == GOOD_BASELINE


def test_baseline_must_give_every_searched_field():
    baseline = {k: v for k, v in GOOD_BASELINE.items() if k != "num_train_epochs"}
    fails(with_space(baseline=baseline, **SPACE), "search.baseline: no value for 'num_train_epochs'")


def test_baseline_only_searched_fields():
    fails(with_space(baseline={**GOOD_BASELINE, "weight_decay": 0.0}, **SPACE),
          "search.baseline.weight_decay: 'weight_decay' is not searched in search.space")
    fails(with_space(baseline={**GOOD_BASELINE, "adam_beta1": 0.9}, **SPACE),
          "search.baseline.adam_beta1: 'adam_beta1' is not searched")


@pytest.mark.parametrize("name, value", [("learning_rate", 1e-2), ("learning_rate", 1e-6),
                                         ("num_train_epochs", 4), ("learning_rate", "fast")])
def test_baseline_outside_range(name, value):
    fails(with_space(baseline={**GOOD_BASELINE, name: value}, **SPACE),
          f"search.baseline.{name}: got {value!r}, expected a value in the searched range")


def test_baseline_outside_choices():
    fails(with_space(baseline={**GOOD_BASELINE, "per_device_train_batch_size": 12}, **SPACE),
          "search.baseline.per_device_train_batch_size: got 12, expected one of the choices [8, 16]")


def test_baseline_must_be_a_mapping():
    raw = with_space(**SPACE)
    raw["search"]["baseline"] = [5e-5]
    fails(raw, "search.baseline: got [5e-05], expected a mapping")


# ---------------------------------------------------------------------------------------------
# Scheduler, resources, promote, name.


def test_scheduler_none_shorthand():
    spec = validate(base(scheduler="none"))
    assert spec.scheduler == SchedulerSpec(type="none")


def test_an_empty_scheduler_is_refused_not_taken_for_none():
    with pytest.raises(SpecError, match=r"scheduler: empty .* write `scheduler: none` to run every trial"):
        validate(base(scheduler=None))


def test_scheduler_none_skips_asha_checks():
    spec = validate(base(scheduler={"type": "none", "reduction_factor": 1}))
    assert spec.scheduler.type == "none"


def test_grace_period_larger_than_max_t():
    fails(base(scheduler={"max_t": 1000, "grace_period": 5000}),
          "scheduler.grace_period: got 5000, larger than max_t=1000")


def test_grace_period_equal_max_t_is_fine():
    assert validate(base(scheduler={"max_t": 1000, "grace_period": 1000})).scheduler.grace_period == 1000


@pytest.mark.parametrize("factor", [1.5, 1, 0])
def test_reduction_factor_below_two(factor):
    fails(base(scheduler={"reduction_factor": factor}),
          f"scheduler.reduction_factor: got {float(factor)!r}, expected >= 2")


def test_reduction_factor_two_is_fine():
    assert validate(base(scheduler={"reduction_factor": 2})).scheduler.reduction_factor == 2.0


@pytest.mark.parametrize("key", ["max_t", "grace_period"])
def test_scheduler_token_counts_positive(key):
    fails(base(scheduler={key: 0}), f"scheduler.{key}: got 0, expected >= 1")


@pytest.mark.parametrize("gpus", [1.5, -1, 2.25])
def test_gpus_per_trial_rejected(gpus):
    fails(base(resources={"gpus_per_trial": gpus}), f"resources.gpus_per_trial: got {gpus:g}",
          "a fraction of one GPU")


@pytest.mark.parametrize("gpus", [0, 0.5, 1, 2])
def test_gpus_per_trial_accepted(gpus):
    assert validate(base(resources={"gpus_per_trial": gpus})).resources.gpus_per_trial == gpus


def test_cpus_per_trial_positive():
    fails(base(resources={"cpus_per_trial": 0}), "resources.cpus_per_trial: got 0, expected > 0")


@pytest.mark.parametrize("key, value, low", [
    ("eval_batch_size", 0, 1), ("prompt_tokens", 0, 1), ("max_new_tokens", 0, 1), ("num_prompts", -1, 0),
    ("reference_tokens", 0, 1), ("top_k", 0, 1),
])
def test_promote_counts(key, value, low):
    fails(base(promote={key: value}), f"promote.{key}: got {value}, expected >= {low}")


@pytest.mark.parametrize("name", ["my sweep", "a/b", "x:y", "run*", "..", "a..b", "-x", "日本", "x" * 65])
def test_name_with_bad_characters(name):
    fails(base(name=name), "name: got ", "; use 1 to 64 characters: ASCII letters, digits, '-', '_' and '.'")


@pytest.mark.parametrize("name", ["tiny", "gpt2-wikitext_v1.2", "x" * 64])
def test_name_allowed_characters(name):
    assert validate(base(name=name)).name == name


# ---------------------------------------------------------------------------------------------
# All problems in one message.


def test_every_problem_reported_in_one_message():
    raw = base(
        surprise=1,                                               # 1 unknown key
        train={"adam_beta1": 2.0, "precision": "fp64"},           # 2 domain, 3 literal
        resources={"gpus_per_trial": 1.5},                        # 4
        scheduler={"max_t": 10, "grace_period": 20},              # 5
    )
    raw["name"] = "bad name"                                      # 6
    raw["data"] = {"path": "x.txt", "block_size": 1}              # 7
    raw["search"]["sampler"] = "hyperopt"                         # 8
    raw["search"]["space"]["weight_decay"] = {"type": "float", "low": 0.2, "high": 0.1}  # 9
    with pytest.raises(SpecError) as info:
        validate(raw)
    message = str(info.value)
    lines = problem_lines(message)
    assert message.startswith("the spec has 9 problems:")
    assert len(lines) == 9, message
    for fragment in ("surprise:", "train.adam_beta1:", "train.precision:", "resources.gpus_per_trial:",
                     "scheduler.grace_period:", "name:", "data.block_size:", "search.sampler:",
                     "search.space.weight_decay:"):
        assert sum(fragment in line for line in lines) == 1, (fragment, message)


def test_single_problem_message_is_singular():
    with pytest.raises(SpecError, match=r"^the spec has 1 problem:\n  - data.block_size"):
        validate(base(data={"path": "x", "block_size": 1}))


# ---------------------------------------------------------------------------------------------
# Loading and overrides.


def test_apply_override_sets_nested_value_parsed_as_yaml():
    raw = base()
    apply_override(raw, "search.num_samples=3")
    apply_override(raw, "scheduler.max_t=100")  # creates the missing section
    apply_override(raw, "train.gradient_checkpointing=true")
    apply_override(raw, "search.space.weight_decay={type: float, low: 0.0, high: 0.1}")
    assert raw["search"]["num_samples"] == 3
    assert raw["scheduler"] == {"max_t": 100}
    assert raw["train"]["gradient_checkpointing"] is True
    assert raw["search"]["space"]["weight_decay"] == {"type": "float", "low": 0.0, "high": 0.1}


def test_apply_override_empty_value_is_null():
    raw = base(storage="runs/x")
    apply_override(raw, "storage=")
    assert raw["storage"] is None


@pytest.mark.parametrize("item", ["search.num_samples", "=3", ""])
def test_malformed_override(item):
    with pytest.raises(SpecError, match=rx(f"--set {item!r}: expected key.path=value")):
        apply_override(base(), item)


def test_load_spec_path_with_overrides(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base()))
    spec = load_spec(path, ["search.num_samples=3", "train.learning_rate=1e-4", "search.space={}",
                            "search.num_samples=1"])
    assert spec.search.num_samples == 1  # later overrides win
    assert spec.train.learning_rate == pytest.approx(1e-4)
    spec = load_spec(str(path), ["search.num_samples=3"])
    assert spec.search.num_samples == 3


def test_override_result_is_validated(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(SpecError, match=rx("search.num_samples: got 0, expected >= 1")):
        load_spec(path, ["search.num_samples=0"])


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError, match=rx("spec file", "missing.yaml", "does not exist")):
        load_spec(tmp_path / "missing.yaml")


def test_load_spec_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("", "NoneType"), ("42\n", "int")])
def test_load_spec_not_a_mapping(tmp_path, text, kind):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=rx(f"spec: got {kind}, expected a mapping")):
        load_spec(path)


# ---------------------------------------------------------------------------------------------
# parse_duration.


@pytest.mark.parametrize("value, seconds", [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
    ("1.5h", 5400.0), ("1e2s", 100.0),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["abc", "", "m", "30d", "30M", "0", 0, -5, "-30m", "0h", True])
def test_parse_duration_rejects(value):
    assert parse_duration(value) is None


# ---------------------------------------------------------------------------------------------
# Fingerprint and writing.


def test_fingerprint_ignores_bookkeeping():
    first = validate(base()).fingerprint()
    raw = base(storage="/tmp/elsewhere", origin={"sweep": "old", "trial_id": "t1", "value": 3.2})
    raw["search"]["num_samples"] = 99
    assert validate(raw).fingerprint() == first
    assert len(first) == 16


@pytest.mark.parametrize("change", [
    lambda raw: raw["search"]["space"]["learning_rate"].update(high=1e-2),
    lambda raw: raw["search"]["space"]["learning_rate"].update(log=False),
    lambda raw: raw["search"].update(seed=1),
    lambda raw: raw["data"].update(block_size=64),
    lambda raw: raw.update(name="other"),
])
def test_fingerprint_changes_with_what_decides_results(change):
    raw = base()
    change(raw)
    assert validate(raw).fingerprint() != validate(base()).fingerprint()


def test_to_yaml_round_trips():
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml")
    text = to_yaml(spec, header="# exported\n")
    assert text.startswith("# exported\n") and "origin" not in text
    again = load_spec(yaml.safe_load(text))
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()


# ---------------------------------------------------------------------------------------------
# The shipped presets.


def test_presets_exist():
    assert PRESETS, "no search_spaces/*.yaml found"
    assert ROOT / "search_spaces" / "tiny.yaml" in PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_loads(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.search.space, "a preset searches something"
    if spec.search.baseline is not None:
        assert set(spec.search.baseline) == {n for n, e in spec.search.space.items() if isinstance(e, dict)}


# ---------------------------------------------------------------------------------------------
# Regressions: each was a bug once.


@pytest.mark.parametrize("change", [
    lambda raw: raw.update(data="corpus.jsonl"),
    lambda raw: raw.update(train=5),
    lambda raw: raw.update(search=[1]),
    lambda raw: raw["search"].update(space=None),
], ids=["data", "train", "search", "search.space"])
def test_regression_non_mapping_section_crashes_instead_of_spec_error(change):
    raw = base()
    change(raw)
    with pytest.raises(SpecError, match="expected a mapping"):
        validate(raw)


@pytest.mark.parametrize("value", [float("nan"), "nan"])
def test_regression_nan_learning_rate_accepted(value):
    with pytest.raises(SpecError, match=rx("train.learning_rate: got")):
        validate(base(train={"learning_rate": value}, search={"num_samples": 1}))


def test_regression_negative_model_freeze_layers_accepted():
    with pytest.raises(SpecError, match=rx("model.freeze_layers: got -1")):
        validate(base(model={"name_or_path": "gpt2", "freeze_layers": -1}))


def test_regression_dot_dot_name_escapes_runs_directory():
    with pytest.raises(SpecError, match=rx("name: got '..'")):
        validate(base(name=".."))


def test_regression_malformed_override_value():
    with pytest.raises(SpecError, match=rx("search.num_samples")):
        load_spec(base(), ["search.num_samples=[1"])


def test_regression_missing_name_hides_other_problems():
    raw = base(data={"path": "x.txt", "block_size": 1})
    del raw["name"]
    with pytest.raises(SpecError, match=rx("data.block_size: got 1")):
        validate(raw)


def test_regression_fractional_baseline_for_int_distribution():
    raw = with_space(baseline={"gradient_accumulation_steps": 1.5},
                     gradient_accumulation_steps={"type": "int", "low": 1, "high": 4})
    with pytest.raises(SpecError, match=rx("search.baseline.gradient_accumulation_steps: got 1.5")):
        validate(raw)


def test_integer_fields_read_yaml_exponent_strings():
    """YAML reads `1e6` as a string; an integral one is the integer the user meant."""
    assert validate(base(scheduler={"type": "asha", "max_t": "1e6"})).scheduler.max_t == 1_000_000


def test_fp16_without_a_gpu_is_refused():
    fails(base(train={"precision": "fp16"}), "train.precision: got 'fp16'", "needs a GPU")
    spec = validate(base(train={"precision": "fp16"}, resources={"gpus_per_trial": 1}))
    assert spec.train.precision == "fp16"


def test_promote_top_k_needs_a_metric_it_can_measure_again():
    raw = base(promote={"top_k": 3})
    raw.setdefault("search", {})["metric"] = "train_loss"
    fails(raw, "promote.top_k: got 3", "not a training figure", "set promote.top_k to 1")
    for metric in ("eval_loss", "eval_rougeL"):
        raw["search"]["metric"] = metric
        assert validate(raw).promote.top_k == 3


@pytest.mark.parametrize("key, value, expected", [
    ("temperature", 0, "expected > 0"), ("top_p", 1.5, "expected in (0, 1]"), ("num_beams", 0, ">= 1")])
def test_promote_decoding_settings_are_checked(key, value, expected):
    fails(base(promote={"generate": {key: value}}), f"promote.generate.{key}: got", expected)



def _lora_space(**entries):
    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
             "use_lora": {"type": "categorical", "choices": [True, False]}}
    space.update(entries)
    return base(search={"num_samples": 4, "space": space})


def test_a_when_condition_names_a_field_declared_above_with_a_value_it_takes():
    assert validate(_lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": {"use_lora": True}}))
    fails(_lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": {"use_lora": "yes"}}),
          "search.space.lora_r.when.use_lora: got 'yes', which use_lora never takes")
    fails(_lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": {"lora_alpha": 32}}),
          "search.space.lora_r.when.lora_alpha: got 32, but lora_alpha is fixed at 16.0 (not searched)")
    fails(_lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": {"colour": "red"}}),
          "search.space.lora_r.when.colour: 'colour' is not a hyperparameter")
    fails(_lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": "use_lora"}),
          "search.space.lora_r.when: got 'use_lora', expected a mapping")
    raw = _lora_space()
    raw["search"]["space"] = {"lora_r": {"type": "int", "low": 2, "high": 8, "when": {"use_lora": True}},
                              **raw["search"]["space"]}
    fails(raw, "search.space.lora_r.when.use_lora: 'use_lora' is declared after 'lora_r'")


def test_use_lora_is_true_or_false():
    fails(base(model={"name_or_path": "builtin:tiny-gpt2", "use_lora": "yes"}), "model.use_lora: got 'yes'",
          "expected true or false")
    fails(_lora_space(use_lora={"type": "int", "low": 0, "high": 1}),
          "search.space.use_lora.type: got 'int'", "choices: [true, false]")
    fails(_lora_space(lora_dropout={"type": "float", "low": 0.0, "high": 1.0}),
          "search.space.lora_dropout.high: got 1.0", "[0, 1)")


def test_a_baseline_needs_values_only_for_the_fields_its_own_values_turn_on():
    raw = _lora_space(lora_r={"type": "int", "low": 2, "high": 8, "when": {"use_lora": True}})
    raw["search"]["baseline"] = {"learning_rate": 1e-4, "use_lora": False}
    assert validate(copy.deepcopy(raw))
    raw["search"]["baseline"]["use_lora"] = True
    fails(raw, "search.baseline: no value for 'lora_r'")


def test_reduce_on_plateau_with_warmup_is_refused():
    raw = base(train={"lr_scheduler_type": "reduce_lr_on_plateau", "warmup_ratio": 0.1})
    fails(raw, "train.warmup_ratio: got 0.1 with lr_scheduler_type reduce_lr_on_plateau", "set warmup_ratio to 0")
    searched = base(search={"num_samples": 4, "space": {
        "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "reduce_lr_on_plateau"]},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1}}})
    fails(searched, "search.space.warmup_ratio: got up to 0.1 with lr_scheduler_type reduce_lr_on_plateau")
    searched["search"]["space"]["warmup_ratio"]["when"] = {"lr_scheduler_type": ["linear"]}
    assert validate(searched)  # warmup only for the schedulers that have one
    assert validate(base(train={"lr_scheduler_type": "reduce_lr_on_plateau"}))


def test_patience_is_at_least_one_report():
    fails(base(train={"patience": 0}), "train.patience: got 0, expected >= 1")
