"""The exported best config: complete, valid, nothing left to sample."""

from __future__ import annotations

from tuner.export import best_config
from tuner.records import TrialRecord
from tuner.spec import validate

SPEC = {
    "name": "lora-sweep", "model": {"name_or_path": "builtin:tiny-gpt2"}, "data": {"path": "corpus.jsonl"},
    "search": {"num_samples": 8, "space": {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "use_lora": {"type": "categorical", "choices": [True, False]},
        "lora_r": {"type": "int", "low": 2, "high": 16, "when": {"use_lora": True}}}},
}


def _record(params):
    return TrialRecord("t1", params=params, best_metric=4.2, best_checkpoint="tune/t1/checkpoint_000003", best_step=12)


def test_a_winner_without_lora_exports_a_config_without_its_conditional_parameters():
    config = best_config(validate(SPEC), _record({"learning_rate": 1e-4, "use_lora": False}))
    assert config["search"]["space"] == {"learning_rate": 1e-4, "use_lora": False}
    assert validate(config).search.num_samples == 1


def test_a_lora_winner_exports_its_rank():
    config = best_config(validate(SPEC), _record({"learning_rate": 1e-4, "use_lora": True, "lora_r": 4}))
    assert config["search"]["space"] == {"learning_rate": 1e-4, "use_lora": True, "lora_r": 4}


def test_the_defaults_a_winner_took_are_written_out():
    config = best_config(validate(SPEC), _record({"learning_rate": 1e-4, "use_lora": False}))
    assert config["train"]["max_grad_norm"] == 1.0 and config["train"]["per_device_train_batch_size"] == 8
    assert config["model"]["freeze_layers"] == 0
    assert config["model"]["lora_r"] is None  # searched, but conditioned off for this winner
    assert config["train"]["neftune_noise_alpha"] is None  # off by default: nothing to pin
    assert config["train"].get("learning_rate") is None  # searched: fixed in search.space instead
    rerun = validate(config)
    assert rerun.train.adam_epsilon == 1e-8
