"""Chaos: a real sweep whose driver is SIGKILLed at random instants and resumed each time, one of
whose trials is SIGKILLed mid-run, one hangs until `trial_timeout` and one raises. After the last
resume the sweep must hold together: the trial count, the study, every file, every resume point,
one promotion.

The driver is `tests/chaos_driver.py` (`tuner.run_sweep(trial_fn=…)`, trials of a few seconds),
run as a real process with its own local Ray runtime; kills are real signals.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.chaos_driver import STEPS
from tests.conftest import ROOT
from tests.drivers import kill_group
from tuner import constants as C
from tuner import records as trial_records
from tuner import study

pytestmark = pytest.mark.integration
SAMPLES = 12
DRIVER_KILLS = 5


def read_records(sweep_dir: Path) -> dict[str, dict]:
    """The trial records as they are on disk now (each written whole: a parse never fails)."""
    folder = sweep_dir / "trials"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def start_driver(sweep_dir: Path, chaos: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "tests/chaos_driver.py", str(sweep_dir), str(chaos), str(SAMPLES)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(condition, timeout: float, driver: subprocess.Popen) -> bool:
    end = time.time() + timeout
    while time.time() < end and driver.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def running_with_checkpoint(sweep_dir: Path, since: float) -> dict[str, dict]:
    """Running trials that reported to this driver and have a checkpoint."""
    return {tid: r for tid, r in read_records(sweep_dir).items() if r["status"] == C.RUNNING
            and r.get("checkpoint_step") and r["history"] and r["history"][-1]["reported_at"] > since}


def roles(chaos: Path) -> set[str]:
    return {(chaos / f"{role}.trial").read_text() for role in ("hang", "raise") if (chaos / f"{role}.trial").exists()}


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaos")
    sweep_dir, chaos = base / "chaos", base / "state"
    chaos.mkdir()
    rng = random.Random(int(os.environ.get("TUNER_CHAOS_SEED", time.time())))
    kills, outputs, trial_kill, readers = [], [], None, {}
    for run in range(DRIVER_KILLS):
        since = time.time()
        driver = start_driver(sweep_dir, chaos, base / f"driver-{run}.log")
        started = wait_for(lambda: running_with_checkpoint(sweep_dir, since), 240, driver)
        assert started, (base / f"driver-{run}.log").read_text()[-5000:]
        if run == 0:
            readers.update(read_while_driven(sweep_dir, driver.pid))
        if trial_kill is None:
            trial_kill = kill_one_trial(sweep_dir, chaos, since, driver)
        time.sleep(rng.uniform(0.0, 2.5))
        driver.send_signal(signal.SIGSTOP)  # the state the kill leaves, read before it changes
        at_kill = read_records(sweep_dir)
        kill_group(driver)
        outputs.append((base / f"driver-{run}.log").read_text())
        kills.append({tid: r for tid, r in at_kill.items() if r["status"] == C.RUNNING})
    final = start_driver(sweep_dir, chaos, base / "final.log")
    final.wait(timeout=900)
    outputs.append((base / "final.log").read_text())
    return {"dir": sweep_dir, "chaos": chaos, "kills": kills, "trial_kill": trial_kill, "outputs": outputs,
            "rc": final.returncode, "readers": readers}


def kill_one_trial(sweep_dir: Path, chaos: Path, since: float, driver: subprocess.Popen) -> tuple | None:
    """SIGKILL the process of one running trial that has steps left, with the driver stopped so the
    process cannot be handed another trial meanwhile. Returns (trial id, the checkpoint step Tune
    retried it from) once Tune has retried it, or None when no trial was in the middle of its steps."""
    victims: list[str] = []
    end = time.time() + 30
    while not victims and time.time() < end and driver.poll() is None:
        driver.send_signal(signal.SIGSTOP)
        try:
            # Its last report one without a checkpoint (an odd step, not at an ASHA rung): the driver
            # has decided to go on with it, and it has steps left.
            victims = sorted(tid for tid, r in running_with_checkpoint(sweep_dir, since).items()
                             if tid not in roles(chaos) and r["history"][-1]["step"] in (3, 5))
            if victims:
                os.kill(int((chaos / "pids" / victims[0]).read_text()), signal.SIGKILL)
        finally:
            driver.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    if not victims:
        return None
    tid = victims[0]
    if not wait_for(lambda: read_records(sweep_dir)[tid].get("retries", 0) >= 1, 60, driver):
        return None
    return tid, read_records(sweep_dir)[tid]["checkpoint_step"]  # the retry goes on from here


def read_while_driven(sweep_dir: Path, driver_pid: int) -> dict[str, tuple]:
    """`status` and `report` while the driver runs, and a second driver: (exit code, seconds, output)."""
    found = {}
    for name, args in (("status", ["status", str(sweep_dir)]), ("report", ["report", str(sweep_dir)]),
                       ("second", ["resume", str(sweep_dir)])):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        found[name] = (done.returncode, time.monotonic() - start, done.stdout + done.stderr)
    return found


def test_the_last_resume_finishes_the_sweep(chaos_run):
    assert chaos_run["rc"] == 0, chaos_run["outputs"][-1][-6000:]
    assert len(chaos_run["kills"]) == DRIVER_KILLS and chaos_run["trial_kill"] is not None
    assert all(run.count("resuming Tune experiment") or "going on without its snapshot" in run
               for run in chaos_run["outputs"][1:])


def test_readers_work_while_a_driver_runs_and_a_second_driver_is_refused(chaos_run):
    readers = chaos_run["readers"]
    code, _, output = readers["status"]
    assert code == 0 and "driver: sweep on host " in output and "running" in output, output
    code, _, output = readers["report"]
    assert code == 0 and "report: " in output, output
    code, seconds, output = readers["second"]
    assert code == 2 and seconds < 5 and "one driver per sweep" in output and "Traceback" not in output, output


def test_exactly_num_samples_trials_and_no_duplicate_ids(chaos_run):
    found = trial_records.load_all(chaos_run["dir"])
    lost = trial_records.load_lost(chaos_run["dir"])
    ids = [r.trial_id for r in found]
    assert len(found) == SAMPLES and len(set(ids)) == SAMPLES
    assert not set(ids) & {r.trial_id for r in lost}
    assert all(r.status in C.STATUSES for r in found)


def test_the_study_holds_the_same_trials_in_the_right_states(chaos_run):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="chaos", storage=study.url(chaos_run["dir"] / "optuna.db")).trials
    ours = {t.user_attrs["ray_trial_id"]: t for t in trials if not t.user_attrs.get(C.LOST)}
    found = {r.trial_id: r for r in trial_records.load_all(chaos_run["dir"])}
    assert set(ours) == set(found)
    for trial_id, record in found.items():
        if record.status == C.COMPLETED:
            expected = optuna.trial.TrialState.COMPLETE
        elif record.status in C.PROMOTABLE and record.status not in C.CUT_OFF:
            expected = optuna.trial.TrialState.PRUNED
        else:
            expected = optuna.trial.TrialState.FAIL
        assert ours[trial_id].state == expected, (trial_id, record.status)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials if t.user_attrs.get(C.LOST))


def test_the_hung_trial_timed_out_and_the_raising_one_failed(chaos_run):
    found = {r.trial_id: r for r in trial_records.load_all(chaos_run["dir"])}
    chaos = chaos_run["chaos"]
    hung, raising = (chaos / "hang.trial").read_text(), (chaos / "raise.trial").read_text()
    assert found[hung].status == C.TIMED_OUT and "search.trial_timeout" in found[hung].error
    assert found[hung].best_step == 2 and found[hung].best_checkpoint  # what it saved before hanging
    if not found[hung].checkpoint_deleted:  # still promotable, unless keep_best had better ones
        assert (chaos_run["dir"] / found[hung].best_checkpoint / "state.json").is_file()
    assert found[raising].status == C.FAILED and "chaos: this trial raises" in found[raising].error
    log = (chaos_run["dir"] / found[raising].log_file).read_text()  # a crash keeps its traceback
    assert "Traceback" in log and "chaos: this trial raises" in log
    assert log.rstrip().splitlines()[-1].startswith(f"tuner: trial {raising} ended as failed")


def test_every_file_of_the_sweep_parses(chaos_run):
    sweep_dir = chaos_run["dir"]
    checked = 0
    for path in sweep_dir.rglob("*"):
        relative = path.relative_to(sweep_dir)
        if not path.is_file() or relative.parts[0] in ("data", "logs") or path.name.startswith("."):
            continue
        if relative.parts[0] == "tune" and not path.name.startswith("experiment_state-"):
            continue  # Tune's own files (its searcher state is a pickle named .json, result.json is lines)
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".csv":
            list(csv.DictReader(path.open()))
        else:
            continue
        checked += 1
    assert checked > SAMPLES


def test_every_killed_trial_went_on_from_its_latest_checkpoint(chaos_run):
    """Each trial running with a checkpoint at a driver kill went on from that checkpoint (or, when
    Tune's snapshot did not hold it, the trial that re-ran its configuration did, even where that one
    was lost in turn at a later kill and went on in a third); the trial SIGKILLed mid-run was retried
    from its checkpoint too. None went back to step 0."""
    found = {r.trial_id: r for r in trial_records.load_all(chaos_run["dir"])}
    lost = {r.trial_id: r for r in trial_records.load_lost(chaos_run["dir"])}
    successor = {r.continues: r for r in [*found.values(), *lost.values()] if r.continues}
    # The trials that hang or raise at step 3 do it again right after going on from step 2, before a
    # first report could say where they went on from.
    silent = roles(chaos_run["chaos"])
    checked = 0
    for at_kill in chaos_run["kills"]:
        for trial_id, was in at_kill.items():
            # A trial whose checkpoint was its last step had finished: nothing to go on from
            if not was.get("checkpoint_step") or was["checkpoint_step"] >= STEPS or trial_id in silent:
                continue
            went_on = [r for r in (found.get(trial_id), lost.get(trial_id), successor.get(trial_id)) if r is not None]
            assert went_on, (trial_id, trial_id in lost)
            assert any(was["checkpoint_step"] in r.resumed_from_steps for r in went_on), (
                trial_id, was["checkpoint_step"], went_on)
            checked += 1
    tid, step = chaos_run["trial_kill"]
    went_on = [r for r in (found.get(tid), lost.get(tid), successor.get(tid)) if r is not None]
    assert (found.get(tid) or lost[tid]).retries >= 1 and any(step in r.resumed_from_steps for r in went_on)
    assert checked > 0  # trials with a checkpoint were running at some kills (all of them are checked)


def test_promotion_ran_exactly_once(chaos_run):
    assert sum(out.count("promote: evaluating") for out in chaos_run["outputs"]) == 1
    final = json.loads((chaos_run["dir"] / "best" / "final_eval.json").read_text())
    best = trial_records.ranked(trial_records.load_all(chaos_run["dir"]), "min")[0]
    assert final["trial_id"] == best.trial_id
