"""The hyperparameter table: one row per field, and everything else derived from it.

The last test adds a row to a copy of the package's table, and nothing else, then follows the new
field through validation, the search, `TrainingArguments`, the export and the docs table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuner import hyperparams
from tuner.hyperparams import Hyperparam
from tuner.spec import HASHED_UNSET, ModelSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_is_well_formed():
    names = hyperparams.names()
    assert len(names) == len(set(names))
    for p in hyperparams.TABLE:
        assert p.kind in (int, float, bool, str) and p.doc
        assert p.default is None or isinstance(p.default, (int, float) if p.kind is float else p.kind)
        assert bool(p.choices) == (p.kind is str)
        if p.default is not None and p.kind is not bool:
            assert p.accepts(p.default), p.name  # Hugging Face's default is a value the range allows


def test_the_spec_sections_have_a_field_per_row_and_keep_their_own():
    train = {f.name: f for f in dataclasses.fields(TrainSpec)}
    model = [f.name for f in dataclasses.fields(ModelSpec)]
    for p in hyperparams.TABLE:
        fields = train if p.section == "train" else model
        assert p.name in fields
    assert model[0] == "name_or_path"  # the required field stays first: the added ones have defaults
    assert {"precision", "seed", "report_every_tokens"} <= set(train)
    assert train["learning_rate"].default is None  # unset: not fixed, the table's default applies


@pytest.mark.parametrize(("row", "text"), [
    (Hyperparam("a", float, 0.5, "d", low=0, high=1, low_open=True), "a number in (0, 1]"),
    (Hyperparam("a", float, 0.5, "d", low=0, high=1, high_open=True), "a number in [0, 1)"),
    (Hyperparam("a", int, 1, "d", low=1), "an integer >= 1"),
    (Hyperparam("a", float, 1.0, "d", low=0, low_open=True, what="a norm", hint="clipping"), "a norm > 0 (clipping)"),
    (Hyperparam("a", float, 1.0, "d", high=2, high_open=True), "a number < 2"),
    (Hyperparam("a", bool, False, "d"), "true or false"),
    (Hyperparam("a", str, "x", "d", choices=("x", "y")), "one of x, y"),
])
def test_describe_says_the_range(row, text):
    assert row.describe() == text


@pytest.mark.parametrize(("value", "ok"), [(0.0, False), (1e-9, True), (1.0, True), (1.0001, False),
                                           (-math.inf, False)])
def test_accepts_honours_open_and_closed_bounds(value, ok):
    assert hyperparams.get("learning_rate").accepts(value) is ok


def test_typed_casts_to_the_fields_kind():
    assert hyperparams.typed("per_device_train_batch_size", 16.0) == 16
    assert type(hyperparams.typed("per_device_train_batch_size", "16")) is int
    assert hyperparams.typed("learning_rate", "1e-4") == 1e-4
    assert hyperparams.typed("use_lora", True) is True
    assert hyperparams.typed("lr_scheduler_type", "cosine") == "cosine"
    assert hyperparams.typed("not_a_field", "x") == "x"


def test_keywords_rename_where_the_destination_says():
    hyper = hyperparams.defaults()
    args = hyperparams.keywords(hyper, "training_args")
    assert args["warmup_steps"] == 0.0 and "warmup_ratio" not in args  # transformers 5's fractional warmup
    assert "lora_r" not in args and "freeze_layers" not in args
    assert hyperparams.keywords(hyper, "lora") == {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05}


def test_short_names_for_the_live_view():
    assert hyperparams.short_name("learning_rate") == "lr"
    assert hyperparams.short_name("adam_beta1") == "adam_beta1"
    assert hyperparams.short_name("unknown") == "unknown"


def test_the_markdown_table_has_a_row_per_hyperparameter():
    table = hyperparams.markdown().splitlines()
    assert len(table) == 2 + len(hyperparams.TABLE)
    assert "| `warmup_ratio` | `train.warmup_ratio` | 0.0 |" in hyperparams.markdown()
    assert "`LoraConfig.r`" in hyperparams.markdown()


def test_the_rows_hashed_as_before_the_table_are_still_rows():
    """A row renamed or dropped would change the hash of every sweep made before the table."""
    assert set(HASHED_UNSET) <= set(hyperparams.names())
    assert "neftune_noise_alpha" not in HASHED_UNSET  # added since: out of the hash while unset


# ---------------------------------------------------------------------------------------------
# A new hyperparameter in one edit.

NEW_ROW = ('    Hyperparam("fake_noise_alpha", float, None, "NEFTune\'s noise on the input embeddings", low=0,\n'
           '               low_open=True, arg="neftune_noise_alpha", short="noise"),\n')
ANCHOR = "\n)\n\n\n_BY_NAME = "  # the end of TABLE in tuner/hyperparams.py

FOLLOW = r'''
import json, sys
from pathlib import Path
import optuna
from tuner import export, hyperparams, live, space
from tuner import model as model_lib
from tuner.records import TrialRecord
from tuner.spec import SpecError, load_spec, validate
from tuner.trial import training_arguments

tiny, out = sys.argv[1], Path(sys.argv[2])
study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))


def sample(spec):
    trial = study.ask(space.distributions(spec))
    return {name: trial.params[name] for name in space.searched_names(spec)}


found = {"fingerprint": load_spec(tiny).fingerprint()}
# Fixed in train, with a bad value: refused with the field, the value and the range.
try:
    load_spec(tiny, ["train.fake_noise_alpha=-1"])
except SpecError as exc:
    found["refused"] = str(exc)
fixed = load_spec(tiny, ["train.fake_noise_alpha=5.0"])
found["fixed_arg"] = training_arguments(fixed, space.resolve(fixed, sample(fixed)), out / "a").neftune_noise_alpha
# Searched: a distribution Optuna samples, then the trial's TrainingArguments and the export.
searched = load_spec(tiny, ["search.space.fake_noise_alpha={type: float, low: 1.0, high: 15.0}",
                            "search.baseline=null", f"storage={out / 'sweep'}"])
sampled = sample(searched)
found["sampled"] = sampled["fake_noise_alpha"]
found["trial_arg"] = training_arguments(searched, space.resolve(searched, sampled), out / "b").neftune_noise_alpha
record = TrialRecord("t1", params=sampled, best_metric=4.2, best_checkpoint="tune/t1/checkpoint_000003", best_step=12)
path = model_lib.resolve("builtin:tiny-gpt2")
folder = export.write_trial(searched, record, model_lib.load_model(path), str(path))
config = validate(json.loads(json.dumps(export.best_config(searched, record))), saved=True)
found["exported_space"] = config.search.space["fake_noise_alpha"]
found["exported_args"] = json.loads((folder / "training_args.json").read_text())["neftune_noise_alpha"]
found["exported_yaml"] = "fake_noise_alpha:" in (folder / "config.yaml").read_text()
found["docs"] = [line for line in hyperparams.markdown().splitlines() if "fake_noise_alpha" in line]
found["short"] = hyperparams.short_name("fake_noise_alpha")
print(json.dumps(found))
'''


@pytest.mark.integration  # a fresh interpreter importing transformers: 5 s, a tenth of the fast tier
def test_a_row_added_to_the_table_is_validated_searched_passed_and_exported(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(ROOT / "tuner", package / "tuner", ignore=shutil.ignore_patterns("__pycache__"))
    table = package / "tuner" / "hyperparams.py"
    text = table.read_text()
    assert text.count(ANCHOR) == 1
    table.write_text(text.replace(ANCHOR, "\n" + NEW_ROW.rstrip("\n") + ANCHOR, 1))  # the one edit
    (tmp_path / "follow.py").write_text(FOLLOW)
    result = subprocess.run([sys.executable, str(tmp_path / "follow.py"), str(ROOT / "search_spaces" / "tiny.yaml"),
                             str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**_env(), "PYTHONPATH": str(package)})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])

    from tuner.spec import load_spec  # this process's package, without the row
    assert found["fingerprint"] == load_spec(ROOT / "search_spaces" / "tiny.yaml").fingerprint()
    assert "train.fake_noise_alpha: got -1.0, expected a number > 0" in found["refused"]
    assert found["fixed_arg"] == 5.0
    assert 1.0 <= found["sampled"] <= 15.0
    assert found["trial_arg"] == found["sampled"]
    assert found["exported_space"] == found["sampled"] == found["exported_args"]
    assert found["exported_yaml"] is True
    assert len(found["docs"]) == 1 and "`TrainingArguments.neftune_noise_alpha`" in found["docs"][0]
    assert found["short"] == "noise"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
