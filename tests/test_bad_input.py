"""Bad input, one test per row of the table in docs/bad-input.md: exit 2, one message, no traceback.

Each case runs the real CLI (`launch.main`) on search_spaces/tiny.yaml with `--set` overrides. Spec
problems are found by `validate`, which builds nothing; data and model problems by `sweep` while it
prepares, before any trial: here Ray and W&B are replaced by a failure, so a check that lets bad
input through fails the test instead of starting a search. Models and data are tiny local files
made below: no network.

Elsewhere: `resume` of a directory that is not a sweep is tested in tests/test_resume.py, and
`gpus_per_trial` against a real two-node cluster in tests/test_cluster.py
(test_more_gpus_than_the_cluster_has_is_refused_before_any_trial); here against a fake inventory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch
from tests.conftest import ROOT, TINY, write_remote_code_model, write_tiny_model
from tuner import cluster, sweep, tracking
from tuner.cluster import Cluster, Node

WORDS = "the quick brown fox jumps over the lazy dog while a small model learns to predict text".split()
RECORDS = [" ".join(WORDS[i % len(WORDS):] + WORDS[:i % len(WORDS)]) + f" {i}" for i in range(40)]
POSITIONS = 128  # the tiny model's maximum positions


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (config and tokenizer), a model needing remote code, and small data files."""
    root = tmp_path_factory.mktemp("bad-input")
    write_tiny_model(root / "model", RECORDS, POSITIONS)

    write_remote_code_model(root / "remote-model")
    for name, maps in (("cross-repo-model", {"AutoConfig": "other/code--configuration_remote.RemoteConfig"}),
                       ("two-repo-model", {"AutoConfig": "a/one--configuration_remote.RemoteConfig",
                                           "AutoModelForCausalLM": "b/two--modeling_remote.RemoteModel"})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"model_type": "remote-gpt", "auto_map": maps}))
    (root / "not-a-model").mkdir()

    def jsonl(name: str, rows: list[dict]) -> None:
        (root / name).write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    jsonl("good.jsonl", [{"text": r} for r in RECORDS])  # 40 records: about 20 train blocks of 64 tokens
    jsonl("body.jsonl", [{"body": r, "id": i} for i, r in enumerate(RECORDS)])
    jsonl("empty.jsonl", [{"text": t} for t in ["", "   ", "\n\t", "hello", "hello"]])
    (root / "notes.xml").write_text("<notes/>\n")
    return root


MODEL = "model.name_or_path={inputs}/model"
PINNED = ["model.trust_remote_code=true", "model.revision=" + "ab12" * 10]
GOOD = "data.path={inputs}/good.jsonl"
METRICS = "search.metrics=[{name: eval_loss, mode: min}, {name: trainable_params, mode: min}]"

# In docs/bad-input.md's order. id (the row), command, overrides, substrings of the message: field, bad value, fix.
ROWS = [
    # The spec: `validate` finds these without building anything.
    pytest.param("validate", ["train.lerning_rate=1e-4"],
                 ["train.lerning_rate: unknown key", "did you mean 'learning_rate'", "allowed keys: "],
                 id="unknown-key"),
    pytest.param("validate", ["search.num_samples=many"],
                 ["search.num_samples: got 'many'", "expected an integer"], id="wrong-type"),
    pytest.param("validate", ["search.space.weight_decay={type: float, low: 0, high: 0.1, log: true}"],
                 ["search.space.weight_decay", "needs low > 0 (low=0)", "raise low", "or set log: false"],
                 id="log-bound-not-positive"),
    pytest.param("validate", ["search.space.warmup_ratio={type: float, low: 0.1, high: 0.05}"],
                 ["search.space.warmup_ratio", "(low=0.1, high=0.05); swap them"], id="low-above-high"),
    pytest.param("validate", ["search.space.per_device_train_batch_size={type: categorical, choices: []}"],
                 ["search.space.per_device_train_batch_size.choices: got []", "expected a non-empty list"],
                 id="empty-choices"),
    pytest.param("sweep", [MODEL, GOOD, "search.warm_start={inputs}"],
                 ["search.warm_start: {inputs}: not a sweep directory", "give the directory an earlier `tuner sweep`"],
                 id="warm-start-not-a-sweep"),
    pytest.param("validate", ["search.space.warmup_ratio={type: float, low: 0.0, high: 0.1, step: 0.03}"],
                 ["search.space.warmup_ratio.step: got 0.03", "does not divide", "set high: 0.09"],
                 id="step-not-dividing-range"),
    pytest.param("validate", ["search.sampler=grid"],
                 ["search.space.learning_rate: a float range from 5e-05 to 0.01 has no finite list of values for "
                  "sampler grid; list them instead, e.g. type: categorical, choices: [5e-05, 0.00071, 0.01]",
                  "search.space.warmup_ratio: a float range from 0.0 to 0.1", "add `step:` (e.g. step: 0.025)"],
                 id="grid-over-a-continuous-range"),
    pytest.param("validate", ["search.metric=accuracy"],
                 ["search.metric: got 'accuracy'", "expected a reported key (eval_loss",
                  "a generation metric (eval_bleu", "or with search.metric_fn a key of its result"],
                 id="unreported-metric"),
    pytest.param("validate", ["search.metric=eval_rougeL"],
                 ["search.mode: got 'min' with search.metric 'eval_rougeL', where higher is better; set mode: max"],
                 id="generation-metric-minimised"),
    pytest.param("validate", ["search.metric=eval_exact_match", "search.mode=max"],
                 ["search.metric: got 'eval_exact_match' on plain text", "use eval_rougeL or eval_bleu"],
                 id="exact-match-on-plain-text"),
    pytest.param("validate", ["search.metric=eval_accuracy", "search.metric_fn=tests.metric_helpers:gone"],
                 ["search.metric_fn: got 'tests.metric_helpers:gone', but tests.metric_helpers has no 'gone'"],
                 id="metric-fn-not-in-its-module"),
    pytest.param("validate", ["search.metric=eval_accuracy", "search.metric_fn=no_such_pkg.metrics:accuracy"],
                 ["search.metric_fn: got 'no_such_pkg.metrics:accuracy', but module 'no_such_pkg.metrics' cannot be "
                  "imported (No module named 'no_such_pkg')", "put its folder on PYTHONPATH"],
                 id="metric-fn-not-importable"),
    pytest.param("validate", ["search.metric=eval_accuracy", "search.metric_fn=tests.metric_helpers:NOT_A_FUNCTION"],
                 ["search.metric_fn: got 'tests.metric_helpers:NOT_A_FUNCTION', which is a int, not a function"],
                 id="metric-fn-not-callable"),
    pytest.param("validate", ["search.metric=accuracy", "search.metric_fn=tests.metric_helpers:token_accuracy"],
                 ["search.metric: got 'accuracy' with search.metric_fn", "set search.metric: eval_accuracy"],
                 id="metric-fn-key-without-prefix"),
    pytest.param("validate", ["search.mode=minimize"],
                 ["search.mode: got 'minimize'", "expected one of 'min', 'max'"], id="bad-mode"),
    pytest.param("validate", ["search.metrics=[{name: eval_loss, mode: min}]"],
                 ["search.metrics: got 1 entry", "needs at least 2", "or use search.metric and search.mode for one"],
                 id="one-objective-in-metrics"),
    pytest.param("validate", ["search.metrics=[{name: eval_loss, mode: min}, {name: eval_loss, mode: max}]"],
                 ["search.metrics[1].name: 'eval_loss' is listed twice", "list each metric once"],
                 id="objective-listed-twice"),
    pytest.param("validate", [METRICS, "search.metric=train_loss"],
                 ["search.metric: got 'train_loss' with search.metrics, whose first entry has name 'eval_loss'",
                  "drop search.metric"], id="metric-and-metrics-disagree"),
    pytest.param("validate", [METRICS, "search.sampler=grid"],
                 ["search.sampler: got 'grid' with search.metrics", "use tpe or nsga2"],
                 id="several-objectives-on-grid"),
    pytest.param("validate", [METRICS, "promote.top_k=1", "promote.pick={then: peak_memory_mb}"],
                 ["promote.pick.then: got 'peak_memory_mb', expected one of search.metrics: eval_loss, "
                  "trainable_params"], id="pick-naming-no-objective"),
    pytest.param("validate", ["scheduler.max_t=8192"],
                 ["scheduler.grace_period: got 16384", "max_t=8192", "lower grace_period or raise max_t"],
                 id="grace-period-above-max-t"),
    pytest.param("validate", ["scheduler.reduction_factor=1.5"],
                 ["scheduler.reduction_factor: got 1.5", "expected >= 2"], id="reduction-factor-below-2"),
    pytest.param("validate", ["search.num_samples=0"],
                 ["search.num_samples: got 0", "expected >= 1"], id="num-samples-below-1"),
    pytest.param("validate", ["search.trial_timeout=soon"],
                 ["search.trial_timeout: got 'soon'", "expected seconds > 0 or a duration such as '90s'"],
                 id="not-a-duration"),
    # The data: `sweep` finds these while preparing it, before any trial (the split ratios: `validate`).
    pytest.param("sweep", [MODEL, "data.path={inputs}/missing.jsonl"],
                 ["data.path: no data file matches '{inputs}/missing.jsonl'", "give an existing file"],
                 id="missing-file"),
    pytest.param("sweep", [MODEL, "data.path={inputs}/notes.xml"],
                 ["data.path: '{inputs}/notes.xml' matches files of type .xml", "use files of one type among"],
                 id="unknown-format"),
    pytest.param("sweep", [MODEL, "data.path={inputs}/body.jsonl"],
                 ["{inputs}/body.jsonl: no column 'text' (data.text_column)", "the columns found are ['body', 'id']",
                  "set data.text_column to one"],
                 id="missing-text-column"),
    pytest.param("sweep", [MODEL, "data.path={inputs}/empty.jsonl"],
                 ["data.path: only 1 record(s) of '{inputs}/empty.jsonl' left after cleaning",
                  "(5 in, 3 empty, 1 duplicate)", "point data.path at more text"], id="nothing-left"),
    pytest.param("validate", ["data.split={train: 0.8, validation: 0.2, test: 0.1}"],
                 ["data.split: ratios sum to 1.1", "validation=0.2", "make them add up to 1"],
                 id="split-not-summing-to-1"),
    pytest.param("sweep", [MODEL, GOOD, "data.block_size=512"],
                 ["data.block_size: got 512", f"has {POSITIONS} positions", f"at most {POSITIONS}"],
                 id="block-size-beyond-positions"),
    pytest.param("sweep", [MODEL, GOOD, "data.block_size=64"],
                 ["search.space.per_device_train_batch_size × search.space.gradient_accumulation_steps",
                  "fewer than the largest effective batch (32 × 2 = 64 blocks)", "lower the batch size"],
                 id="fewer-blocks-than-a-batch"),
    # The model: `sweep` reads its config before preparing the data (an unpinned revision: `validate`).
    pytest.param("sweep", ["model.name_or_path={inputs}/no-such-model", GOOD],
                 ["model.name_or_path: got '{inputs}/no-such-model', no such directory", "give a model directory"],
                 id="unknown-model"),
    pytest.param("sweep", ["model.name_or_path={inputs}/not-a-model", GOOD],
                 ["model.name_or_path: got '{inputs}/not-a-model', a directory without config.json"],
                 id="not-a-model-directory"),
    pytest.param("sweep", ["model.name_or_path={inputs}/remote-model", GOOD],
                 ["model.trust_remote_code: got false", "'{inputs}/remote-model' runs its own code",
                  "set model.trust_remote_code: true and pin model.revision"], id="remote-code-untrusted"),
    pytest.param("validate", ["model.trust_remote_code=true"],
                 ["model.revision: got None", "model.trust_remote_code: true", "pin the 40-character commit"],
                 id="remote-code-unpinned"),
    pytest.param("sweep", ["model.name_or_path={inputs}/cross-repo-model", GOOD, *PINNED],
                 ["model.code_revision: got None, but '{inputs}/cross-repo-model' runs code from another repository, "
                  "other/code", "pin model.code_revision to its 40-character commit hash"], id="remote-code-elsewhere"),
    pytest.param("sweep", ["model.name_or_path={inputs}/two-repo-model", GOOD, *PINNED,
                           "model.code_revision=" + "cd34" * 10],
                 ["runs code from 2 other repositories (a/one, b/two)", "one model.code_revision cannot pin them all"],
                 id="remote-code-two-repositories"),
    pytest.param("sweep", ["model.name_or_path={inputs}/cross-repo-model", GOOD],
                 ["model.trust_remote_code: got false, but '{inputs}/cross-repo-model' runs its own code"],
                 id="remote-code-elsewhere-untrusted"),
    pytest.param("validate", [*PINNED, "model.code_revision=main"],
                 ["model.code_revision: got 'main'", "pin the 40-character commit hash"], id="code-revision-unpinned"),
    pytest.param("validate", ["model.code_revision=" + "cd34" * 10],
                 ["model.code_revision: got 'cd34", "without model.trust_remote_code: true"],
                 id="code-revision-untrusted"),
    pytest.param("sweep", [MODEL, GOOD, "model.use_lora=true", "model.lora_target_modules=[q_proj]"],
                 ["model.lora_target_modules: got ['q_proj'], not layers of 'gpt2'", "its layers include"],
                 id="lora-on-missing-layers"),
    pytest.param("validate", ["train.lr_scheduler_type=reduce_lr_on_plateau"],
                 ["search.space.warmup_ratio: got up to 0.1 with lr_scheduler_type reduce_lr_on_plateau",
                  "set warmup_ratio to 0", "when: {lr_scheduler_type:"], id="plateau-with-warmup"),
    pytest.param("validate", ["search.space.lora_r={type: int, low: 4, high: 64, when: {use_lora: true}}"],
                 ["search.space.lora_r.when.use_lora: got True, but use_lora is fixed at False (not searched)",
                  "search use_lora in search.space or drop lora_r"], id="condition-that-never-holds"),
]


def _must_not_run(*args, **kwargs):
    raise AssertionError("the search was about to start: the bad input got past the checks")


@pytest.mark.parametrize("command, overrides, needles", ROWS)
def test_bad_input_exits_2_with_one_message(command, overrides, needles, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "init_ray", _must_not_run)
    monkeypatch.setattr(tracking, "Tracker", _must_not_run)
    args = [command, str(TINY), "--set", f"storage={tmp_path / 'sweep'}"]
    for item in overrides:
        args += ["--set", item.replace("{inputs}", str(inputs))]
    start = time.monotonic()
    code = launch.main(args)
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10, err
    assert err.count("tuner: error:") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle.replace("{inputs}", str(inputs)) in err, err
    assert not (tmp_path / "sweep" / "trials").exists()


GPU_NODES = Cluster([Node("a" * 32, "10.0.0.1", cpus=8, gpus=2), Node("b" * 32, "10.0.0.2", cpus=8, gpus=2)])
CPU_NODES = Cluster([Node("c" * 32, "10.0.0.3", cpus=8, gpus=0)])


@pytest.mark.parametrize("nodes, gpus, needles", [
    pytest.param(CPU_NODES, 1, ["resources.gpus_per_trial: got 1", "no node has 1 GPU(s)", "largest node: 0",
                                "lower it or add GPU nodes"], id="gpus-per-trial-no-gpu-node"),
    pytest.param(GPU_NODES, 6, ["resources.gpus_per_trial: got 6", "the cluster has 4 GPUs in all",
                                "at most 4"], id="gpus-per-trial-beyond-cluster"),
])
def test_gpus_per_trial_beyond_the_cluster(nodes, gpus, needles, tmp_path, capsys, monkeypatch):
    """`validate --address` against a fake inventory (the same check `sweep` runs before any trial)."""
    monkeypatch.setattr(sweep, "init_ray", lambda address: False)
    monkeypatch.setattr(cluster, "inspect", lambda: nodes)
    code = launch.main(["validate", str(TINY), "--address", "auto", "--set", f"storage={tmp_path / 'sweep'}",
                        "--set", f"resources.gpus_per_trial={gpus}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("tuner: error:") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_an_address_where_no_cluster_answers(tmp_path, capsys):
    """`--address` to a port nothing listens on: refused within seconds, never waited on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    code = launch.main(["validate", str(TINY), "--address", f"127.0.0.1:{port}", "--set",
                        f"storage={tmp_path / 'sweep'}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 30, err
    assert err.count("tuner: error:") == 1 and "Traceback" not in err
    assert f"--address 127.0.0.1:{port}: cannot reach a Ray cluster there" in err and "ray start --head" in err


TINY_TEXT = Path(TINY).read_text()
BOMB = "".join(f"{n}: &{n} [" + ", ".join([f"*{p}" if p else "x"] * 9) + "]\n"
               for n, p in zip("abcdefg", ["", "a", "b", "c", "d", "e", "f"]))

# A spec file that is not YAML a spec may be written in: id, its bytes, substrings of the message.
FILES = [
    pytest.param(b"\x00\x01\x02name: x\n", ["a binary file, not a YAML spec", "written as UTF-8"], id="binary"),
    pytest.param(TINY_TEXT.replace("tiny GPT-2", "tiny GPT-2 caf\xe9").encode("latin-1"),
                 ["line 3: byte 0xe9 is not UTF-8", "save the file as UTF-8"], id="latin-1"),
    pytest.param((TINY_TEXT + "extra: &shared [1, 2]\nmore: *shared\n").encode(),
                 ["an alias (*shared)", "may not use YAML anchors and aliases", "write the value out in full"],
                 id="alias"),
    pytest.param(BOMB.encode(), ["line 2: an alias (*a)"], id="billion-laughs"),
    pytest.param(("name: x\nz: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
                 ["line 2: nested more than 32 levels deep", "flatten the structure"], id="deep-nesting"),
    pytest.param(("name: x\nz: " + "{a: " * 40 + "1" + "}" * 40 + "\n").encode(),
                 ["nested more than 32 levels deep"], id="deep-mappings"),
    pytest.param(TINY_TEXT.replace("name: tiny\n", "name: tiny\nname: other\n").encode(),
                 ["the key 'name' is given twice in one mapping", "keep one"], id="duplicate-top-level-key"),
    pytest.param(TINY_TEXT.replace("  mode: min\n", "  mode: min\n  mode: max\n").encode(),
                 ["the key 'mode' is given twice"], id="duplicate-nested-key"),
]


@pytest.mark.parametrize("content, needles", FILES)
def test_a_spec_file_that_is_not_plain_yaml_exits_2_fast(content, needles, tmp_path, capsys, monkeypatch):
    """Refused with its line before anything is built, within seconds (an alias bomb is never expanded)."""

    monkeypatch.setattr(sweep, "init_ray", _must_not_run)
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    start = time.monotonic()
    code = launch.main(["validate", str(path), "--set", f"storage={tmp_path / 'sweep'}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10, err
    assert err.count("tuner: error:") == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    for needle in needles:
        assert needle in err, err
    assert path.read_bytes() == content  # nothing the user made is changed


@pytest.mark.parametrize("value, needles", [
    pytest.param("&a [1, *a]", ["an alias"], id="set-alias"),
    pytest.param("{a: 1, a: 2}", ["the key 'a' is given twice"], id="set-duplicate-key"),
])
def test_a_set_value_that_is_not_plain_yaml_exits_2(value, needles, tmp_path, capsys):
    code = launch.main(["validate", str(TINY), "--set", f"storage={tmp_path / 'sweep'}",
                        "--set", f"search.space.weight_decay={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("tuner: error:") == 1 and "Traceback" not in err, err
    assert "--set 'search.space.weight_decay=" in err
    for needle in needles:
        assert needle in err, err


# Values that leave the spec (a condition, a seed, a section, a name, a path): each refused with
# its rule. id, `--set` overrides, substrings of the one problem line.
LORA_R = "search.space.lora_r={type: int, low: 4, high: 64, when: %s}"
USE_LORA = "search.space.use_lora={type: categorical, choices: [true, false]}"
NO_BASELINE = "search.baseline=null"  # else it would need a value for use_lora too
SEED_RULE = "expected an integer from 0 to 4294967295"
NAME_RULE = "use 1 to 64 characters: ASCII letters, digits, '-', '_' and '.', starting with a letter or digit"
EMPTY = "empty (the key has no value), expected a mapping"
BOUNDS = [
    pytest.param([LORA_R % "[use_lora]"], ["search.space.lora_r.when: got ['use_lora'], expected a mapping"],
                 id="when-a-list"),
    pytest.param([LORA_R % "5"], ["search.space.lora_r.when: got 5, expected a mapping such as {use_lora: true}"],
                 id="when-a-number"),
    pytest.param([LORA_R % "{}"], ["search.space.lora_r.when: got {}, expected a mapping"], id="when-empty"),
    pytest.param([LORA_R % "{nope: true}"], ["search.space.lora_r.when.nope: 'nope' is not a hyperparameter",
                                             "a condition names one of learning_rate"], id="when-unknown-field"),
    pytest.param([NO_BASELINE, USE_LORA, LORA_R % "{use_lora: 'yes'}"],
                 ["search.space.lora_r.when.use_lora: got 'yes', which use_lora never takes (its values: [True, "
                  "False])"], id="when-wrong-type"),
    pytest.param(["search.space.warmup_ratio={type: float, low: 0.0, high: 0.1, when: {lr_scheduler_type: 5}}"],
                 ["search.space.warmup_ratio.when.lr_scheduler_type: got 5, but lr_scheduler_type is fixed at "
                  "'linear'"], id="when-value-never-taken"),
    pytest.param([NO_BASELINE, LORA_R % "{use_lora: true}", USE_LORA],
                 ["search.space.lora_r.when.use_lora: 'use_lora' is declared after 'lora_r'"],
                 id="when-declared-after"),
    pytest.param(["search.seed=-1"], ["search.seed: got -1", SEED_RULE, "pick one in that range"], id="seed-negative"),
    pytest.param(["search.seed=4294967296"], ["search.seed: got 4294967296", SEED_RULE], id="seed-too-large"),
    pytest.param(["data.seed=99999999999999999999"], ["data.seed: got 99999999999999999999", SEED_RULE],
                 id="seed-huge"),
    pytest.param(["data.seed=1.5"], ["data.seed: got 1.5, expected an integer"], id="seed-fractional"),
    pytest.param(["train.seed=true"], ["train.seed: got True, expected an integer"], id="seed-boolean"),
    pytest.param(["promote.generate.seed=-7"], ["promote.generate.seed: got -7", SEED_RULE], id="seed-generate"),
    pytest.param(["scheduler="], [f"scheduler: {EMPTY}", "write `scheduler: none` to run every trial to the end"],
                 id="empty-scheduler"),
    pytest.param(["search="], [f"search: {EMPTY}", "delete the line to take the defaults"], id="empty-search"),
    pytest.param(["search.space="], [f"search.space: {EMPTY}"], id="empty-space"),
    pytest.param(["train="], [f"train: {EMPTY}"], id="empty-train"),
    pytest.param(["resources="], [f"resources: {EMPTY}"], id="empty-resources"),
    pytest.param(["tracking="], [f"tracking: {EMPTY}"], id="empty-tracking"),
    pytest.param(["data="], [f"data: {EMPTY}"], id="empty-data"),
    pytest.param(["name=a/b"], ["name: got 'a/b'", NAME_RULE], id="name-slash"),
    pytest.param(["name=.."], ["name: got '..'", NAME_RULE, "no '..'"], id="name-dotdot"),
    pytest.param(["name=my sweep"], ["name: got 'my sweep'", NAME_RULE], id="name-space"),
    pytest.param(["name=" + "x" * 300], ["name: got 'xxxxxxxxxx", "…(300 characters)'", NAME_RULE], id="name-300"),
    pytest.param(["name=调参实验"], ["name: got '调参实验'", NAME_RULE], id="name-cjk"),
    pytest.param(["data.path=/"], ["data.path: got '/', which would read the system directory /",
                                   "point it at the folder that holds the data"], id="data-path-root"),
    pytest.param(["data.path=/**/*.txt"], ["data.path: got '/**/*.txt', which would read the system directory"],
                 id="data-glob-from-root"),
    pytest.param(["storage=/"], ["storage: got '/', a system or home directory", "give a directory of its own"],
                 id="storage-root"),
    pytest.param(["storage=/etc"], ["storage: got '/etc', a system or home directory"], id="storage-etc"),
    pytest.param(["storage={file}"], ["storage: got '{file}', an existing file", "give a directory of its own"],
                 id="storage-a-file"),
    pytest.param(["storage={file}/sweep"], ["storage: got '{file}/sweep', below an existing file"],
                 id="storage-below-a-file"),
]


@pytest.mark.parametrize("overrides, needles", BOUNDS)
def test_a_value_outside_its_bounds_exits_2_with_the_rule(overrides, needles, tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(sweep, "init_ray", _must_not_run)
    made = tmp_path / "made.txt"
    made.write_text("the user's file\n")
    args = ["validate", str(TINY), "--set", f"storage={tmp_path / 'sweep'}"]
    for item in overrides:
        args += ["--set", item.replace("{file}", str(made))]
    start = time.monotonic()
    code = launch.main(args)
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10, err
    assert err.count("tuner: error:") == 1 and err.count("\n  - ") <= 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle.replace("{file}", str(made)) in err, err
    assert made.read_text() == "the user's file\n" and not (tmp_path / "sweep").exists()


def test_address_auto_with_no_cluster_exits_2_fast(tmp_path):
    """`auto` looks for a cluster through Ray's temp directory (one of our own here, where none ever
    ran) and, failing that, for any Ray process on the machine: that scan, which would find this test
    session's own runtime, is made to find none. The rest is the real CLI in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp_path)}
    code = ("import sys, ray._private.services as s; none = lambda: []; none.cache_clear = lambda: None; "
            "s.find_gcs_addresses = none; import launch; "
            f"sys.exit(launch.main(['validate', {str(TINY)!r}, '--address', 'auto', '--set', "
            f"'storage={tmp_path / 'sweep'}']))")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 2 and time.monotonic() - start < 10, result.stderr
    assert result.stderr.count("tuner: error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--address auto: no Ray cluster to attach to" in result.stderr and "ray start --head" in result.stderr
