"""Ctrl-C and SIGTERM: the first signal asks the driver to wind down, a second stops at once
(unit); a real sweep stopped by SIGTERM, as a cluster's job stop sends it, and resumed (integration)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import LIGHT_PROMOTE
from tuner import constants as C
from tuner import interrupt, records


def test_the_first_signal_asks_to_stop_and_the_second_stops_at_once():
    said = []
    stop = interrupt.Interrupt(wait_s=30, say=said.append)
    assert not stop.requested and not stop.overdue(now=1e9)
    stop.request(signal.SIGTERM, now=100.0)
    assert stop.requested and stop.signal_name == "SIGTERM"
    assert said and said[0].startswith("SIGTERM: stopping") and "at most 30s" in said[0]
    assert not stop.overdue(now=129.0) and stop.overdue(now=130.0)
    with pytest.raises(KeyboardInterrupt):
        stop.request(signal.SIGINT)
    assert len(said) == 1


def test_signals_reach_the_interrupt_while_catching_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = interrupt.Interrupt(wait_s=5, say=lambda _: None)
    with interrupt.catching(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # Python runs the handler at the next bytecode of the main thread
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_pickles_with_tunes_searcher_and_callbacks():
    import pickle

    stop = interrupt.Interrupt(wait_s=5, say=print)
    stop.request(now=1.0)
    copy = pickle.loads(pickle.dumps(stop))
    assert copy.requested and copy.wait_s == 5


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59, "59s"), (61, "1m01s"), (3600 * 2 + 60, "2h01m")])
def test_durations_read_as_people_write_them(seconds, text):
    assert interrupt.format_seconds(seconds) == text


def _wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _running_with_checkpoints(sweep_dir):
    found = records.load_all(sweep_dir) if (sweep_dir / "trials").is_dir() else []
    running = [r for r in found if r.status == C.RUNNING and r.checkpoint_step]
    return running if len(running) == 2 else None


@pytest.mark.integration
def test_sigterm_saves_the_sweep_a_second_stops_at_once_and_resume_finishes_it(tmp_path):
    """A job stop's SIGTERM: exit 130 with the running trials at their checkpoints. Resumed, then
    sent SIGTERM twice: it stops at once, still 130. The last resume finishes with every trial."""
    sweep_dir = tmp_path / "runs" / "term"
    base = [sys.executable, "-m", "tuner"]
    sets = ["search.num_samples=3", "scheduler.grace_period=65536", "search.baseline.num_train_epochs=2",
            "search.space.num_train_epochs={type: int, low: 2, high: 2}", *LIGHT_PROMOTE]
    args = [*base, "sweep", "tiny", "--name", "term", *[a for s in sets for a in ("--set", s)]]
    with open(tmp_path / "first.err", "w") as err:
        driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        _wait_for(lambda: _running_with_checkpoints(sweep_dir), 240, "two running trials with checkpoints")
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 130
    text = (tmp_path / "first.err").read_text()
    assert "SIGTERM: stopping" in text and "go on with `tuner resume" in text, text[-3000:]
    paused = {r.trial_id: r.checkpoint_step for r in records.load_all(sweep_dir) if r.status == C.RUNNING}
    assert len(paused) == 2 and all(paused.values())

    with open(tmp_path / "second.err", "w") as err:
        driver = subprocess.Popen([*base, "resume", str(sweep_dir)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=err, text=True)
        _wait_for(lambda: "resuming Tune experiment" in (tmp_path / "second.err").read_text(), 120, "the resume")
        _wait_for(lambda: any(r.resumed_from_steps for r in records.load_all(sweep_dir)), 120, "a resumed trial")
        driver.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 130
    assert "stopped at once" in (tmp_path / "second.err").read_text()

    done = subprocess.run([*base, "resume", str(sweep_dir)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    final = {r.trial_id: r for r in records.load_all(sweep_dir)}
    assert len(final) == 3 and all(r.ended for r in final.values())
    for trial_id, step in paused.items():  # the first resume went on from exactly the saved checkpoints
        assert final[trial_id].resumed_from_steps[0] == step
        assert final[trial_id].restarted_from_step_0 == 0
