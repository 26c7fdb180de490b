"""launch.py as a user runs it: exit codes, one clear message on bad input, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner.records import load_all as load_records

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def write_spec(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_validate_prints_the_resolved_spec_and_the_plan():
    result = launch("validate", "search_spaces/tiny.yaml", "--set", "search.num_samples=5")
    assert result.returncode == 0, result.stderr
    assert "num_samples: 5" in result.stdout
    assert "plan:" in result.stdout and "trials: 5" in result.stdout


def test_validate_reports_every_problem_with_exit_2(tmp_path):
    path = write_spec(tmp_path, search__space__learning_rate={"type": "float", "low": 0.1, "high": 0.01},
                      train__colour="blue")
    result = launch("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "search.space.learning_rate" in result.stderr and "low=0.1, high=0.01" in result.stderr
    assert "train.colour: unknown key" in result.stderr
    assert "search.baseline.learning_rate: got 5e-05" in result.stderr  # outside the new range
    assert "3 problems" in result.stderr


def test_sweep_refuses_bad_input_before_any_trial(tmp_path):
    path = write_spec(tmp_path, data__path=str(tmp_path / "missing.jsonl"), storage=str(tmp_path / "run"))
    result = launch("sweep", str(path))
    assert result.returncode == 2
    assert "data.path" in result.stderr and "missing.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "trials").exists()


def test_sweep_refuses_a_block_longer_than_the_model_allows(tmp_path):
    path = write_spec(tmp_path, data__block_size=4096, storage=str(tmp_path / "run"))
    result = launch("sweep", str(path))
    assert result.returncode == 2
    assert "data.block_size: got 4096" in result.stderr and "at most 256" in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["sweep", "nope.yaml"], "does not exist"),
    (["validate", "search_spaces/tiny.yaml", "--set", "novalue"], "expected key.path=value"),
    (["status", "search_spaces"], "not a sweep directory"),
    (["sweep"], "the following arguments are required"),
])
def test_bad_arguments_exit_2_with_one_message(args, needle):
    result = launch(*args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_status_and_export_of_a_finished_sweep(tiny_sweep):
    status = launch("status", str(tiny_sweep.sweep_dir))
    assert status.returncode == 0, status.stderr
    for row in tiny_sweep.leaderboard:
        assert row["trial_id"] in status.stdout
    assert "logs/" in status.stdout
    runs = len(tiny_sweep.leaderboard) + 2  # trials, the sweep run, the final evaluation
    assert f"W&B: {runs} offline runs" in status.stdout
    kept = sum(1 for r in load_records(tiny_sweep.sweep_dir) if r.best_checkpoint and not r.checkpoint_deleted)
    assert kept in (2, 3)  # keep_best 2, and the baseline trial's when it is not among them
    assert "disk: " in status.stdout and f"{kept} trial checkpoints kept" in status.stdout and "launch.py sync" in status.stdout
    assert f"report: {tiny_sweep.sweep_dir / 'report.html'}" in status.stdout
    exported = launch("export", str(tiny_sweep.sweep_dir), "--format", "json")
    assert exported.returncode == 0, exported.stderr
    config = json.loads(exported.stdout)
    assert config["name"] == "tiny-test-best"
    assert config["origin"]["trial_id"] == tiny_sweep.best.trial_id


def test_sweep_refuses_to_freeze_more_blocks_than_the_model_has(tmp_path):
    path = write_spec(tmp_path, search__space__freeze_layers={"type": "int", "low": 0, "high": 3},
                      search__baseline__freeze_layers=0, storage=str(tmp_path / "run"))
    result = launch("sweep", str(path))
    assert result.returncode == 2
    assert "search.space.freeze_layers: up to 3 blocks frozen" in result.stderr and "at most 2" in result.stderr
