"""A sweep picked up after its driver died: an unreadable snapshot refused, then `--restart-search`;
a sweep copied, moved, or resumed from its bucket on another machine.

The drivers are `tests/chaos_driver.py` processes (trials of a few seconds through `trial_fn`, none
hanging or raising here), killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.drivers import kill_group
from tuner import constants as C
from tuner import records as trial_records
from tuner import storage

pytestmark = pytest.mark.integration


def driver(sweep: str, chaos: Path, log: Path, samples: int, *flags: str, cwd: Path = ROOT,
           env: dict | None = None) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | (env or {})
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "tests" / "chaos_driver.py"), sweep, str(chaos),
                                 str(samples), "--no-roles", *flags], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=600)
    return log.read_text()


def kill_when(process: subprocess.Popen, sweep_dir: Path, ready, timeout: float = 300) -> dict[str, dict]:
    """SIGKILL the driver (and its Ray runtime) once `ready(records)` holds; returns the records then."""
    end = time.time() + timeout
    while time.time() < end and process.poll() is None:
        found = read(sweep_dir)
        if ready(found):
            process.send_signal(signal.SIGSTOP)
            found = read(sweep_dir)
            kill_group(process)
            return found
        time.sleep(0.05)
    raise AssertionError(f"the driver was never at the point to kill it (exit code {process.poll()})")


def read(sweep_dir: Path) -> dict[str, dict]:
    folder = sweep_dir / "trials"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def some_ended_some_running(found: dict[str, dict]) -> bool:
    ended = [r for r in found.values() if r["status"] not in C.UNFINISHED]
    running = [r for r in found.values() if r["status"] == C.RUNNING and r.get("checkpoint_step")]
    return len(ended) >= 2 and bool(running)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def untouched_but_closed(before: dict[str, dict], now: dict[str, dict], output: str) -> None:
    """No record added, removed or changed by a refused run, but for what it records before it
    refuses: a trial the dead driver told Optuna had ended, killed before its record said so."""
    assert set(now) == set(before)
    for trial_id, was in before.items():
        if now[trial_id] != was:
            assert was["status"] in C.UNFINISHED and now[trial_id]["status"] in C.STATUSES, trial_id
            assert now[trial_id]["history"] == was["history"] and "did not record it; recorded now" in output


def kept(record: dict) -> dict:
    """A record's content a later run may not change (keep_best may still drop its checkpoint)."""
    return {k: v for k, v in record.items() if k != "checkpoint_deleted"}


def test_an_unreadable_snapshot_is_refused_then_restart_search_keeps_every_finished_trial(tmp_path):
    sweep_dir, chaos = tmp_path / "chaos", tmp_path / "state"
    first = driver(str(sweep_dir), chaos, tmp_path / "first.log", 6)
    at_kill = kill_when(first, sweep_dir, some_ended_some_running)
    before = read(sweep_dir)

    # A snapshot whose searcher state is cut short: Tune would log it and start anew without a word.
    searcher_state = max((sweep_dir / "tune").glob("searcher-state-*.pkl"))
    searcher_state.write_bytes(searcher_state.read_bytes()[:50])
    refused = driver(str(sweep_dir), chaos, tmp_path / "refused-tune.log", 6, "--resume")
    output = finish(refused, tmp_path / "refused-tune.log")
    assert refused.returncode == 2, output[-3000:]
    message, = [line for line in output.splitlines() if line.startswith("tuner: error: ")]
    assert "Ray Tune could not restore this snapshot" in message and "--restart-search" in message
    untouched_but_closed(before, read(sweep_dir), output)  # refused before any trial started
    before, first_refusal = tree_digest(sweep_dir / "trials"), output

    snapshot = max((sweep_dir / "tune").glob("experiment_state-*.json"))
    snapshot.write_text(snapshot.read_text()[:100])  # cut short, as a failed upload would leave it

    refused = driver(str(sweep_dir), chaos, tmp_path / "refused.log", 6, "--resume")
    output = finish(refused, tmp_path / "refused.log")
    assert refused.returncode == 2, output[-3000:]
    message, = [line for line in output.splitlines() if line.startswith("tuner: error: ")]
    assert str(snapshot) in message and "Traceback" not in output
    assert "cannot be read" in message and "--restart-search" in message and "keeps every finished trial" in message
    assert tree_digest(sweep_dir / "trials") == before  # refused: nothing touched

    resumed = driver(str(sweep_dir), chaos, tmp_path / "restart.log", 6, "--resume", "--restart-search")
    output = finish(resumed, tmp_path / "restart.log")
    assert resumed.returncode == 0, output[-5000:]
    found = {r.trial_id: r for r in trial_records.load_all(sweep_dir)}
    lost = {r.trial_id: r for r in trial_records.load_lost(sweep_dir)}
    assert len(found) == 6
    closed = {t for t, r in at_kill.items() if r["status"] in C.UNFINISHED and t in found}
    for trial_id in closed:  # killed after Tune told Optuna it ended, before its record said so
        assert found[trial_id].status in C.STATUSES and found[trial_id].history == at_kill[trial_id]["history"]
        assert "did not record it; recorded now" in first_refusal + output  # whichever run read it first
    for trial_id, was in at_kill.items():
        if trial_id in closed:
            continue
        if was["status"] in C.UNFINISHED:  # set aside whole, its configuration run again from its checkpoint
            assert trial_id in lost and trial_id not in found and lost[trial_id].history == was["history"]
            if was.get("checkpoint_step"):
                successor, = [r for r in found.values() if r.continues == trial_id]
                assert successor.resumed_from_steps == [was["checkpoint_step"]]
                assert successor.params == was["params"] and successor.status in C.STATUSES
        else:  # a finished trial's record is never moved or rewritten
            now = json.loads((sweep_dir / "trials" / f"{trial_id}.json").read_text())
            assert kept(now) == kept(was)
    assert set(lost) == {t for t, r in at_kill.items() if r["status"] in C.UNFINISHED} - closed
    assert "going on without its snapshot" in output


def run_to_end(sweep_dir: Path, chaos: Path, log: Path, samples: int, *flags: str) -> str:
    process = driver(str(sweep_dir), chaos, log, samples, *flags)
    output = finish(process, log)
    assert process.returncode == 0, output[-5000:]
    return output


def test_a_copied_sweep_extends_and_promotes_without_touching_the_original(tmp_path):
    original, chaos = tmp_path / "original", tmp_path / "state"
    run_to_end(original, chaos, tmp_path / "first.log", 4)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = tree_digest(original)
    run_to_end(copy, chaos, tmp_path / "extend.log", 6, "--resume")
    assert tree_digest(original) == before  # not a byte of the original changed
    assert len(trial_records.load_all(copy)) == 6 and len(trial_records.load_all(original)) == 4
    for record in trial_records.load_all(copy):
        if record.best_checkpoint and not record.checkpoint_deleted:
            assert (copy / record.best_checkpoint / "state.json").is_file()
    final = json.loads((copy / "best" / "final_eval.json").read_text())
    assert not final["checkpoint"].startswith("/") and (copy / final["checkpoint"]).is_dir()


def test_a_killed_sweep_moved_elsewhere_resumes_promotes_and_exports_there(tmp_path):
    sweep_dir, chaos = tmp_path / "here", tmp_path / "state"
    first = driver(str(sweep_dir), chaos, tmp_path / "first.log", 5)
    kill_when(first, sweep_dir, some_ended_some_running)
    moved = tmp_path / "elsewhere" / "there"
    moved.parent.mkdir()
    shutil.move(sweep_dir, moved)
    run_to_end(moved, chaos, tmp_path / "moved.log", 5, "--resume")
    found = trial_records.load_all(moved)
    assert len(found) == 5 and all(r.status in C.STATUSES for r in found)
    for command in (["export", str(moved)], ["status", str(moved)], ["report", str(moved)]):
        result = subprocess.run([sys.executable, "launch.py", *command], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert str(sweep_dir) not in result.stdout  # nothing points back to where it was
    assert not sweep_dir.exists()


def test_a_bucket_sweep_goes_on_from_the_bucket_on_another_machine(s3_server, tmp_path):
    """The driver's machine is lost mid-sweep: its local directory and cache are gone. Another
    machine resumes from the bucket alone, with exact trial counts."""
    uri = f"s3://{s3_server['bucket']}/sweeps/machine-loss"
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    for machine in (machine_a, machine_b):
        machine.mkdir()
    first = driver(uri, tmp_path / "state", tmp_path / "first.log", 6, cwd=machine_a,
                   env={"TUNER_CACHE": str(machine_a / "cache")})
    local = machine_a / "runs" / "chaos"
    at_kill = kill_when(first, local, some_ended_some_running)
    ended = {t for t, r in at_kill.items() if r["status"] not in C.UNFINISHED}
    for trial_id in ended:  # uploaded when each trial ended, not at the sweep's end
        assert storage.exists(f"{uri}/trials/{trial_id}.json"), trial_id
    for name in ("spec.yaml", "sweep.json", "optuna.db"):
        assert storage.exists(f"{uri}/{name}"), name
    shutil.rmtree(machine_a)  # the machine is gone
    second = driver(uri, tmp_path / "state", tmp_path / "second.log", 6, "--resume", cwd=machine_b,
                    env={"TUNER_CACHE": str(machine_b / "cache")})
    output = finish(second, tmp_path / "second.log")
    assert second.returncode == 0, output[-5000:]
    assert "driver files fetched from" in output
    found = trial_records.load_all(machine_b / "runs" / "chaos")
    assert len(found) == 6 and all(r.status in C.STATUSES for r in found)
    assert {r.trial_id for r in found} >= ended
    uploaded = [name for name in storage.list_files(f"{uri}/trials") if name.endswith(".json")]
    assert len(uploaded) == 6
    assert storage.exists(f"{uri}/best/final_eval.json")
