"""The command line as a user runs it (`launch.py`, the `tuner` console script, `python -m tuner`):
exit codes, one clear message on bad input, no traceback, presets found from any directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tuner.cli import main
from tuner.records import load_all as load_records

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True,
                          text=True, check=False, cwd=cwd, timeout=300)


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


# The sweep refusals run `main` in this process (a fresh interpreter would spend seconds importing
# torch): they come before any trial, and the fast tier's guard (tests/conftest.py) fails a test
# that would start Ray instead.


def test_sweep_refuses_bad_input_before_any_trial(tmp_path, capsys):
    path = write_spec(tmp_path, data__path=str(tmp_path / "missing.jsonl"), storage=str(tmp_path / "run"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "missing.jsonl" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "trials").exists()


def test_sweep_refuses_a_block_longer_than_the_model_allows(tmp_path, capsys):
    path = write_spec(tmp_path, data__block_size=4096, storage=str(tmp_path / "run"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.block_size: got 4096" in err and "at most 256" in err


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
    assert "disk: " in status.stdout and f"{kept} trial checkpoints kept" in status.stdout
    assert "tuner sync" in status.stdout
    assert f"report: {tiny_sweep.sweep_dir / 'report.html'}" in status.stdout
    exported = launch("export", str(tiny_sweep.sweep_dir), "--format", "json")
    assert exported.returncode == 0, exported.stderr
    config = json.loads(exported.stdout)
    assert config["name"] == "tiny-test-best"
    assert config["origin"]["trial_id"] == tiny_sweep.best.trial_id


def test_sweep_refuses_to_freeze_more_blocks_than_the_model_has(tmp_path, capsys):
    path = write_spec(tmp_path, search__space__freeze_layers={"type": "int", "low": 0, "high": 3},
                      search__baseline__freeze_layers=0, storage=str(tmp_path / "run"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.space.freeze_layers: up to 3 blocks frozen" in err and "at most 2" in err


# ---------------------------------------------------------------------------------------------
# The installed command: `tuner`, `python -m tuner`, and the presets shipped inside the package.

COMMANDS = ("sweep", "resume", "validate", "status", "export", "sync", "report", "lr-find")


def test_python_m_tuner_validates_a_preset_from_any_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuner", "validate", "tiny"], capture_output=True, text=True,
                            check=False, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "name: tiny" in result.stdout and "plan:" in result.stdout
    assert f"sweep directory: {tmp_path.resolve() / 'runs' / 'tiny'}" in result.stdout  # runs/<name> under the cwd
    assert list(tmp_path.iterdir()) == []  # validate builds nothing


def test_console_script_lists_every_command():
    script = Path(sysconfig.get_path("scripts")) / "tuner"
    assert script.is_file(), f"no {script}: reinstall with `pip install -e .` (scripts/setup does)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tuner ")
    assert "{" + ",".join(COMMANDS) + "}" in result.stdout


def test_unknown_preset_exits_2_naming_the_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuner: error: ")
    assert "'nosuch' does not exist" in err and "gpt2-wikitext, lora-pareto, tiny" in err


def test_a_local_file_wins_over_the_preset_of_the_same_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny").write_text((ROOT / "tuner" / "presets" / "tiny.yaml").read_text().replace(
        "name: tiny", "name: mine"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "tiny"]) == 0
    assert "name: mine" in capsys.readouterr().out


def test_search_spaces_is_the_packaged_presets():
    assert (ROOT / "search_spaces").resolve() == ROOT / "tuner" / "presets"


def test_the_wheel_ships_the_presets_and_the_command(tmp_path):
    """Built from a copy, so the build's scratch folders (build/, *.egg-info) never land in the checkout
    another test run may be building at the same moment; no build isolation, so no index is needed."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                           check=False, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("tuner-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    presets = {p.name for p in (ROOT / "tuner" / "presets").glob("*.yaml")}
    assert {f"tuner/presets/{name}" for name in presets} <= names
    assert {"tuner/cli.py", "tuner/__main__.py"} <= names
    assert "tuner = tuner.cli:main" in entry_points
