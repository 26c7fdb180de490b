"""The live view: its figures from trial records (unit), and a real sweep seen through a
pseudo-terminal as a person sees it, stopped with Ctrl-C and resumed (integration)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LIGHT_PROMOTE, TINY
from tuner import constants as C
from tuner import live, records
from tuner.plan import make_plan
from tuner.records import TrialRecord
from tuner.spec import load_spec

TRAIN_TOKENS = 100_000


def spec_and_plan(*overrides: str):
    spec = load_spec(TINY, ["search.num_samples=5", *overrides])
    return spec, make_plan(spec, TRAIN_TOKENS)


def history(*tokens: int, at: float, metric: float = 6.0) -> list[dict]:
    return [{C.STEP: i + 1, C.TOKENS_SEEN: t, C.EVAL_LOSS: metric - i * 0.1, "reported_at": at + i}
            for i, t in enumerate(tokens)]


def sweep_records(start: float) -> list[TrialRecord]:
    params = {"learning_rate": 3e-4, "per_device_train_batch_size": 8, "num_train_epochs": 2,
              "warmup_ratio": 0.05, "gradient_accumulation_steps": 1, "weight_decay": 0.01}
    return [
        TrialRecord("done1", status=C.COMPLETED, params=params, history=history(50_000, 100_000, at=start),
                    tokens_seen=100_000, best_metric=5.9, started_at=start, ended_at=start + 10),
        TrialRecord("asha1", status=C.STOPPED_ASHA, params=params, history=history(16_384, at=start),
                    tokens_seen=16_384, best_metric=6.5, rung=16_384, started_at=start, ended_at=start + 5),
        TrialRecord("run1", status=C.RUNNING, params=params, history=history(40_000, at=start + 20, metric=5.5),
                    tokens_seen=40_000, best_metric=5.5, started_at=start + 12),
    ]


def test_the_header_counts_trials_tokens_and_the_best():
    spec, plan = spec_and_plan()
    start = 1_000.0
    view = live.build(spec, plan, sweep_records(start), start, start + 100)
    assert (view.finished, view.running, view.pending, view.total) == (2, 1, 2, 5)
    assert view.best.trial_id == "run1"
    assert view.tokens == 156_384
    assert view.budget_tokens == plan.budget_tokens == 5 * plan.max_t
    # tokens trained since the run began, per second of it
    assert view.tokens_per_s == pytest.approx(156_384 / 100)
    left = (plan.max_t - 40_000) + 2 * plan.max_t  # the running trial and two pending, each to max_t
    assert view.eta_s == pytest.approx(left / view.tokens_per_s)
    assert view.time_left_s is None


def test_tokens_reported_before_the_run_began_do_not_count_toward_its_speed():
    spec, plan = spec_and_plan()
    start = 1_000.0
    view = live.build(spec, plan, sweep_records(start), start + 15, start + 115)
    assert view.tokens_per_s == pytest.approx(40_000 / 100)  # only run1 reported after start + 15


def test_the_time_budget_left_counts_down():
    spec, plan = spec_and_plan("search.time_budget=10m")
    view = live.build(spec, plan, [], 0.0, 90.0)
    assert view.time_left_s == pytest.approx(510.0)
    assert "time budget left 8m30s" in live.header_lines(view)[2]
    assert view.eta_s is None and "ETA: measuring" in live.header_lines(view)[2]


def test_rows_show_running_trials_first_with_their_rung():
    spec, plan = spec_and_plan()
    view = live.build(spec, plan, sweep_records(0.0), 0.0, 50.0)
    assert [r["trial"] for r in view.rows] == ["run1", "done1", "asha1"]
    run1, _, asha1 = view.rows
    passed = sum(40_000 >= r for r in plan.rungs)
    assert run1["rung"] == f"{passed}/{len(plan.rungs)}"
    assert asha1["rung"] == "stopped at 1"
    assert run1["values"].startswith("lr=0.0003 batch=8 epochs=2")
    assert run1["last"] == pytest.approx(5.5)


def test_the_rendered_table_holds_the_header_and_rows():
    from rich.console import Console

    spec, plan = spec_and_plan()
    console = Console(record=True, width=160)
    console.print(live.render(live.build(spec, plan, sweep_records(0.0), 0.0, 50.0, "driver pid 1 on h")))
    text = console.export_text()
    for expected in ("sweep tiny", "elapsed 50s", "2/5 finished", "1 running", "2 pending",
                     "best eval_loss 5.5000 (run1)", "tokens: 156.4k", "budget", "tok/s", "ETA",
                     "run1", "running", "stopped_asha", "rung"):
        assert expected in text, expected


def test_without_a_terminal_a_progress_line_is_logged_on_the_interval(monkeypatch, caplog, tmp_path):
    spec, plan = spec_and_plan(f"storage={tmp_path}")
    for record in sweep_records(time.time()):
        records.save(record, tmp_path)
    monkeypatch.setattr(live, "PLAIN_EVERY_S", 0.2)
    with caplog.at_level(logging.INFO, logger="tuner"), \
            live.showing(live.Source(spec, plan, time.time()), terminal=False):
        time.sleep(0.7)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(lines) >= 2
    assert "2/5 finished, 1 running, 2 pending" in lines[0] and "best eval_loss 5.5000 (run1)" in lines[0]


def test_status_watch_shows_the_view_of_a_sweep_without_a_driver(tmp_path):
    """`tuner status --watch` on a sweep no driver holds: one view, then it ends (exit 0)."""
    sweep_dir = tmp_path / "runs" / "w"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "spec.yaml").write_text((TINY).read_text().replace("name: tiny", "name: w"))
    for record in sweep_records(time.time()):
        records.save(record, sweep_dir)
    result = subprocess.run([sys.executable, "-m", "tuner", "status", str(sweep_dir), "--watch"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "progress: trials: 2/8 finished, 1 running, 5 pending" in result.stdout


def test_status_watch_reads_a_sweep_from_its_bucket(s3_server, tmp_path):
    """Another machine watches a sweep stored in a bucket (a real S3 API on loopback)."""
    from tuner import mirror
    from tuner.state import SweepState

    uri = f"s3://{s3_server['bucket']}/sweeps/watched"
    sweep_dir = tmp_path / "driver" / "watched"
    state = SweepState("hash")
    state.save(sweep_dir)
    (sweep_dir / "spec.yaml").write_text(TINY.read_text().replace("name: tiny", "name: watched")
                                         + f"storage: {uri}\n")
    for record in sweep_records(time.time()):
        records.save(record, sweep_dir)
    mirror.Mirror(sweep_dir, uri, state.sweep_id).push_all()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "tuner", "status", uri, "--watch"], capture_output=True,
                            text=True, timeout=120, cwd=elsewhere, check=False)
    assert result.returncode == 0, result.stderr
    assert "progress: trials: 2/8 finished, 1 running, 5 pending" in result.stdout
    assert not any(elsewhere.iterdir())  # nothing written where it was run


# ---------------------------------------------------------------------------------------------
# Through a pseudo-terminal: what a person sees, and Ctrl-C.


class Terminal:
    """A command in a pseudo-terminal, its screen rendered by a terminal emulator (pyte)."""

    def __init__(self, args: list[str], cwd: Path, rows: int = 50, cols: int = 160):
        import pexpect
        import pyte

        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.output = b""
        self.child = pexpect.spawn(args[0], args[1:], cwd=str(cwd), dimensions=(rows, cols), timeout=None,
                                   env={**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)})

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def pump(self, seconds: float) -> None:
        import pexpect

        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.output += data
            self.stream.feed(data)

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        end = time.time() + timeout
        while time.time() < end:
            self.pump(0.5)
            if predicate(self.text()):
                return self.text()
            if not self.child.isalive():
                break
        raise AssertionError(f"never saw {what}; the screen:\n{self.text()}\n--- all output:\n"
                             f"{self.output.decode(errors='replace')[-4000:]}")

    def exit_code(self, timeout: float) -> int:
        end = time.time() + timeout
        while self.child.isalive() and time.time() < end:
            self.pump(0.5)
        self.pump(0.5)
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else 128 + (self.child.signalstatus or 0)


def running_rows(screen: str) -> list[str]:
    return [line for line in screen.splitlines() if " running " in line and "lr=" in line]


@pytest.mark.integration
def test_a_sweep_in_a_terminal_shows_the_live_view_and_stops_cleanly_on_ctrl_c(tmp_path):
    """A person runs `tuner sweep` in a terminal: the table shows the running trials and the
    header; Ctrl-C stops it with every running trial at a checkpoint (exit 130); `tuner resume`
    goes on from exactly those checkpoints and finishes the sweep."""
    name = "live"
    # ASHA judges no trial before 65,536 tokens: both first trials are still running when Ctrl-C comes
    overrides = ["--set", "search.num_samples=3", "--set", "scheduler.grace_period=65536",
                 "--set", "search.space.num_train_epochs={type: int, low: 2, high: 2}",
                 "--set", "search.baseline.num_train_epochs=2",
                 *[a for o in LIGHT_PROMOTE for a in ("--set", o)]]
    term = Terminal([sys.executable, "-m", "tuner", "sweep", "tiny", "--name", name, *overrides], tmp_path)
    screen = term.wait_for(lambda s: len(running_rows(s)) == 2 and "tok/s" in s and "ETA ≤" in s,
                           timeout=240, what="two running trials in the live table, with a measured speed")
    header = screen[screen.index(f"sweep {name} · elapsed"):]
    for expected in ("trials: 0/3 finished · 2 running · 1 pending", "tokens:", " budget (", "tok/s", "ETA ≤"):
        assert expected in header, expected
    assert "Token authentication" not in term.output.decode(errors="replace")  # Ray's notice: sweep.log only
    sweep_dir = tmp_path / "runs" / name

    term.child.sendintr()  # Ctrl-C, as the terminal sends it
    term.wait_for(lambda s: "SIGINT: stopping" in s and "waiting for 2 running trial(s)" in s, timeout=30,
                  what="the stop notice")
    assert term.exit_code(timeout=120) == 130
    assert "go on with `tuner resume" in term.output.decode(errors="replace")
    stopped = {r.trial_id: r for r in records.load_all(sweep_dir)}
    paused = {t: r.checkpoint_step for t, r in stopped.items() if r.status == C.RUNNING}
    assert len(paused) == 2 and all(paused.values()), stopped  # both at a checkpoint, none closed
    for trial_id in paused:
        log = (sweep_dir / "logs" / f"{trial_id}.log").read_text()
        assert log.rstrip().splitlines()[-1].startswith(f"tuner: trial {trial_id} paused by SIGINT")
        assert "Traceback" not in log

    resumed = subprocess.run([sys.executable, "-m", "tuner", "resume", str(sweep_dir)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = {r.trial_id: r for r in records.load_all(sweep_dir)}
    assert len(final) == 3 and all(r.ended for r in final.values())
    for trial_id, step in paused.items():
        assert final[trial_id].resumed_from_steps == [step], final[trial_id]
        assert final[trial_id].restarted_from_step_0 == 0
    sweep_log = (sweep_dir / "sweep.log").read_text()  # both runs', the libraries' debug lines too
    assert sweep_log.count(" INFO tuner: plan:") == 2 and " DEBUG datasets: " in sweep_log
    endings = {C.COMPLETED: "completed", C.STOPPED_ASHA: "stopped early by ASHA at rung"}
    for trial_id, record in final.items():
        last = (sweep_dir / "logs" / f"{trial_id}.log").read_text().rstrip().splitlines()[-1]
        assert last.startswith(f"tuner: trial {trial_id} {endings[record.status]}"), last
