"""A driver killed twice, resumed each time; a finished sweep extended; a changed spec refused.

The drivers are real `launch.py` processes (each with its own local Ray runtime) killed with SIGKILL
at points read from the trial records, then resumed by re-running `sweep` and by `resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from launch import main
from tests.conftest import LIGHT_PROMOTE, ROOT, TINY
from tuner import constants as C
from tuner import records as trial_records
from tuner import results

SAMPLES = 6
# ASHA's grace period is two reports: every trial is running with a checkpoint after its first, so
# the second kill always has a moment to land (with one, a run whose trials ASHA all stopped at their
# first report had none, and the driver finished before it could be killed).
OVERRIDES = [
    "data.max_records=900", "train.report_every_tokens=8192", "scheduler.grace_period=16384",
    "search.n_startup_trials=3", "search.space.num_train_epochs={type: int, low: 1, high: 2}",
    *LIGHT_PROMOTE, "tracking.wandb.mode=offline",
]


def sweep_args(sweep_dir: Path, samples: int = SAMPLES) -> list[str]:
    sets = [arg for item in [*OVERRIDES, f"storage={sweep_dir}"] for arg in ("--set", item)]
    return ["sweep", str(TINY), "--name", "resume-test", "--num-samples", str(samples), *sets]


def records(sweep_dir: Path) -> list[dict]:
    """The trial records as the driver left them, each with `mtime`: when it was last written."""
    folder = sweep_dir / "trials"
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            found.append({**json.loads(path.read_text()), "mtime": path.stat().st_mtime})
        except (json.JSONDecodeError, FileNotFoundError):  # being replaced right now
            pass
    return found


def run_driver(args: list[str], sweep_dir: Path, log: Path, kill_when=None, timeout: float = 400) -> dict:
    """Run `launch.py ARGS`; SIGKILL the driver process alone once `kill_when(sweep_dir)` holds."""
    # Each driver its own W&B service, as from a shell: a test process that used W&B exports its own.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    # Tune snapshots the experiment every 10 s or so (tune_hooks.snapshot_on_schedule); these trials
    # last seconds, so the kill points below, which wait for the snapshot to hold the running trials,
    # would seldom come before the sweep ends. A snapshot every second brings them on time; the
    # trials the snapshot lacks are the chaos test's (tests/test_chaos.py).
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, stdout=out, env=env,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    start, killed = time.time(), None
    try:
        while driver.poll() is None and time.time() - start < timeout:
            if kill_when is not None and kill_when(sweep_dir):
                driver.send_signal(signal.SIGSTOP)  # judge the very state the kill leaves
                if kill_when(sweep_dir):
                    driver.send_signal(signal.SIGKILL)  # the driver only: its Ray runtime dies with it
                    killed = records(sweep_dir)
                    break
                driver.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        driver.wait(timeout=60)
    finally:
        try:  # whatever the dead driver's runtime left behind (its agents) goes too
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"rc": driver.returncode, "killed": killed, "output": log.read_text()}


def snapshot_files(sweep_dir: Path) -> dict[str, bytes]:
    """Tune's experiment snapshot as it is on storage now: the files at the top of its directory."""
    return {p.name: p.read_bytes() for p in (sweep_dir / "tune").glob("*") if p.is_file()}


def snapshot_holds(files: dict[str, bytes], trial_id: str) -> bool:
    states = [name for name in files if name.startswith("experiment_state-")]
    return bool(states) and trial_id.encode() in files[max(states)]  # trial states are JSON inside JSON


def all_running_checkpointed(minimum_ended: int):
    """A point to kill at: some trials ended, and each running trial has a checkpoint this driver
    made (a report it received: a restored trial is only rewritten at its restart, so the record's
    time alone would not say) and is held by Tune's snapshot on storage (a trial the snapshot lacks
    is set aside as lost and runs again). The snapshot may name an older checkpoint than the record:
    the resume goes on from the record's."""
    since = time.time()

    def ready(sweep_dir: Path) -> bool:
        found = records(sweep_dir)
        running = [r for r in found if r["status"] == C.RUNNING]
        files = snapshot_files(sweep_dir)
        return (ended(found) >= minimum_ended and bool(running)
                and all(r.get("checkpoint_step") and r["history"] and r["history"][-1].get("reported_at", 0) > since
                        and snapshot_holds(files, r["trial_id"]) for r in running))
    return ready


def ended(found: list[dict]) -> int:
    return sum(r["status"] not in (C.RUNNING, C.PENDING) for r in found)


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory):
    """Kill the driver early (first trials running), re-run `sweep` (resumes), kill it again later,
    then `resume` it to the end."""
    base = tmp_path_factory.mktemp("resume")
    sweep_dir = base / "resume-test"
    first = run_driver(sweep_args(sweep_dir), sweep_dir, base / "first.log", all_running_checkpointed(1))
    second = run_driver(sweep_args(sweep_dir), sweep_dir, base / "second.log",
                        all_running_checkpointed(ended(first["killed"] or []) + 1))
    third = run_driver(["resume", str(sweep_dir)], sweep_dir, base / "third.log")
    return {"dir": sweep_dir, "runs": [first, second, third]}


def study_trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="resume-test", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials


@pytest.mark.integration
def test_both_kills_landed_mid_search_and_the_last_run_exits_0(killed_twice):
    first, second, third = killed_twice["runs"]
    assert first["rc"] == -signal.SIGKILL and second["rc"] == -signal.SIGKILL, (first["output"], second["output"])
    assert third["rc"] == 0, third["output"]
    ended_at = [ended(run["killed"]) for run in (first, second)]
    assert 1 <= ended_at[0] < ended_at[1] < SAMPLES
    assert "resuming Tune experiment tune" in second["output"] and "resuming Tune experiment tune" in third["output"]
    assert not any("tracking is off" in run["output"] for run in killed_twice["runs"])  # W&B runs resumed too


@pytest.mark.integration
def test_exactly_num_samples_trials_none_restarted_from_step_0(killed_twice):
    sweep_dir = killed_twice["dir"]
    found = trial_records.load_all(sweep_dir)
    assert len(found) == SAMPLES
    assert all(r.status in C.STATUSES for r in found)
    assert not any(r.restarted_from_step_0 for r in found)
    # Every trial running at a kill went on from the checkpoint it had then, and no report was
    # counted twice. One the dead driver had already told Optuna it ended (its last report sent, the
    # record not yet closed) is closed by the next driver, as it was told, with the reports it had.
    expected: dict[str, list[int]] = {}
    closed: dict[str, dict] = {}
    runs = killed_twice["runs"]
    for run, after in zip(runs[:2], runs[1:]):
        for was in (r for r in run["killed"] if r["status"] == C.RUNNING):
            if f"trial {was['trial_id']}: the dead driver told Optuna it ended" in after["output"]:
                closed[was["trial_id"]] = was
            else:
                expected.setdefault(was["trial_id"], []).append(was["checkpoint_step"])
    assert expected and {r.trial_id: r.resumed_from_steps for r in found if r.resumed_from_steps} == expected
    for record in (r for r in found if r.trial_id in closed):
        assert record.trial_id not in expected and record.resumes == 0
        assert [h[C.STEP] for h in record.history] == [h[C.STEP] for h in closed[record.trial_id]["history"]]
    assert all(step > 0 for steps in expected.values() for step in steps)
    for record in found:
        steps = [h[C.STEP] for h in record.history]
        assert steps == sorted(set(steps)) and record.reports == len(steps)


@pytest.mark.integration
def test_finished_trials_were_not_rerun(killed_twice):
    """A trial that had ended when the driver died was not started again."""
    sweep_dir = killed_twice["dir"]
    ended_first = {r["trial_id"] for r in killed_twice["runs"][0]["killed"]
                   if r["status"] not in (C.RUNNING, C.PENDING)}
    for record in trial_records.load_all(sweep_dir):
        if record.trial_id in ended_first:
            assert record.resumes == 0 and not record.resumed_from_steps


@pytest.mark.integration
def test_the_study_maps_one_to_one_onto_the_leaderboard(killed_twice):
    sweep_dir = killed_twice["dir"]
    board = results.leaderboard(sweep_dir, "min", "resume-test")
    trials = study_trials(sweep_dir)
    finished = [t for t in trials if t.state.is_finished() and not t.user_attrs.get(C.LOST)]
    assert sorted(t.user_attrs["ray_trial_id"] for t in finished) == sorted(row["trial_id"] for row in board)
    assert all(row["optuna_state"] in ("COMPLETE", "PRUNED", "FAIL") for row in board)
    # No configuration ran twice; one lost to a kill ran once more, as the trial naming it.
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(params) == len(set(params))
    for lost in (t for t in trials if t.user_attrs.get(C.LOST)):
        assert lost.state == optuna.trial.TrialState.FAIL
        copy, = [t for t in finished if t.user_attrs.get("retry_of") == lost.number]
        assert lost.params.items() <= copy.params.items()  # a kill mid-sampling leaves some unset


@pytest.mark.integration
def test_the_best_checkpoint_was_promoted_once(killed_twice):
    outputs = [run["output"] for run in killed_twice["runs"]]
    assert sum(out.count("promote: evaluating") for out in outputs) == 1
    final = json.loads((killed_twice["dir"] / "best" / "final_eval.json").read_text())
    board = results.leaderboard(killed_twice["dir"], "min", "resume-test")
    assert final["trial_id"] == board[0]["trial_id"]


@pytest.mark.integration
def test_running_the_finished_sweep_again_runs_and_promotes_nothing(killed_twice, capsys):
    sweep_dir = killed_twice["dir"]
    before = (sweep_dir / "best" / "final_eval.json").stat().st_mtime_ns
    assert main(sweep_args(sweep_dir)) == 0
    assert (sweep_dir / "best" / "final_eval.json").stat().st_mtime_ns == before
    assert len(trial_records.load_all(sweep_dir)) == SAMPLES


@pytest.mark.integration
def test_more_samples_extend_the_finished_sweep_on_the_same_study(killed_twice):
    sweep_dir = killed_twice["dir"]
    run = run_driver(sweep_args(sweep_dir, SAMPLES + 2), sweep_dir, sweep_dir.parent / "extend.log")
    assert run["rc"] == 0, run["output"]
    found = trial_records.load_all(sweep_dir)
    assert len(found) == SAMPLES + 2
    assert sorted(r.experiment for r in found).count("tune-2") == 2
    assert (sweep_dir / "tune-2").is_dir()
    board = results.leaderboard(sweep_dir, "min", "resume-test")
    finished = [t for t in study_trials(sweep_dir) if t.state.is_finished() and not t.user_attrs.get(C.LOST)]
    assert sorted(t.user_attrs["ray_trial_id"] for t in finished) == sorted(row["trial_id"] for row in board)
    assert sum(t.params["learning_rate"] == 5e-5 for t in finished) == 1  # the baseline is queued once
    assert json.loads((sweep_dir / "sweep.json").read_text())["exported_trials"] == SAMPLES + 2
    final = json.loads((sweep_dir / "best" / "final_eval.json").read_text())
    assert final["trial_id"] == board[0]["trial_id"]
    # Promoted again only when one of the new trials won.
    assert ("promote: evaluating" in run["output"]) == (board[0]["trial_id"] in {r.trial_id for r in found
                                                                               if r.experiment == "tune-2"})


@pytest.mark.integration
def test_a_changed_spec_is_refused_unless_forced(killed_twice, capsys):
    sweep_dir = killed_twice["dir"]
    changed = [*sweep_args(sweep_dir), "--set", "search.space.weight_decay.high=0.2"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "search.space.weight_decay.high" in err and "--force" in err and "Traceback" not in err
    assert main(["resume", str(sweep_dir)]) == 0  # the saved spec is unchanged: nothing to run
    before = json.loads((sweep_dir / "sweep.json").read_text())["spec_hash"]
    assert main([*changed, "--force"]) == 0
    assert json.loads((sweep_dir / "sweep.json").read_text())["spec_hash"] != before


@pytest.mark.integration
def test_a_snapshot_older_than_a_trials_checkpoint_goes_on_from_the_checkpoint(tmp_path):
    """Tune uploads its snapshot in the background: a driver killed between a trial's checkpoint and
    the next upload leaves a snapshot that names an older checkpoint, or none. The resume goes on from
    the checkpoint the trial's record holds, not from the older one (Tune may have deleted it since)."""
    sweep_dir = tmp_path / "resume-test"
    saved: dict[str, dict] = {}

    def ready(sweep_dir: Path) -> bool:
        running = [r for r in records(sweep_dir) if r["status"] == C.RUNNING and r.get("checkpoint_step")]
        for record in running:
            files = snapshot_files(sweep_dir)
            if not saved and snapshot_holds(files, record["trial_id"]):  # Tune's snapshot at its first checkpoint
                saved.update(trial=record, files=files)
        trial = saved.get("trial")
        later = [r for r in running if trial and r["trial_id"] == trial["trial_id"]
                 and r["checkpoint_step"] > trial["checkpoint_step"]]
        return bool(later)

    first = run_driver(sweep_args(sweep_dir, 3), sweep_dir, tmp_path / "first.log", ready)
    assert first["rc"] == -signal.SIGKILL, first["output"]
    at_kill = next(r for r in first["killed"] if r["trial_id"] == saved["trial"]["trial_id"])
    for name, content in saved["files"].items():  # the upload of the newer snapshot never happened
        (sweep_dir / "tune" / name).write_bytes(content)
    resumed = run_driver(["resume", str(sweep_dir)], sweep_dir, tmp_path / "resumed.log")
    assert resumed["rc"] == 0, resumed["output"]
    record = json.loads((sweep_dir / "trials" / f"{at_kill['trial_id']}.json").read_text())
    assert record["resumed_from_steps"] == [at_kill["checkpoint_step"]], (record, resumed["output"])
    assert at_kill["checkpoint_step"] > saved["trial"]["checkpoint_step"]
    assert not record.get("crashes") and record["status"] in C.PROMOTABLE


def test_resume_of_something_not_a_sweep_is_refused(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a sweep directory" in err and "Traceback" not in err
