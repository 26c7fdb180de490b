"""One driver per sweep: a second one is refused at once, naming the first; a dead one's lock is
taken over with a notice; readers never take the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY
from tuner import layout, lock
from tuner.errors import UserError

HOLD = """
import sys, time
from pathlib import Path
from tuner import lock
with lock.hold(Path(sys.argv[1]), sys.argv[2], "sweep"):
    print("holding", flush=True)
    time.sleep(600)
"""


def holder(sweep_dir, location=None):
    """A real process holding the sweep's lock, as a driver does."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(sweep_dir), location or str(sweep_dir)],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_driver_exits_2_within_5_seconds_naming_the_first(tmp_path):
    sweep_dir = tmp_path / "s"
    first = holder(sweep_dir)
    try:
        start = time.monotonic()
        second = subprocess.run([sys.executable, "launch.py", "sweep", str(TINY), "--set", f"storage={sweep_dir}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and elapsed < 5, (elapsed, second.stderr)
    message = second.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"host {socket.gethostname()}, pid {first.pid}, started " in message
    assert "one driver per sweep" in message and f"tuner resume {sweep_dir}" in message
    assert not (sweep_dir / layout.STATE_FILE).exists()  # nothing of the sweep was touched


def test_the_lock_of_a_killed_driver_is_taken_over_with_a_notice(tmp_path, caplog):
    sweep_dir = tmp_path / "s"
    first = holder(sweep_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with caplog.at_level("WARNING", logger="tuner"):
        with lock.hold(sweep_dir, str(sweep_dir), "resume"):
            assert lock.read_holder(sweep_dir).pid == os.getpid()
    assert f"took over the lock of sweep on host {socket.gethostname()}, pid {first.pid}" in caplog.text
    assert lock.read_holder(sweep_dir) is None  # released


def _other_host_lock(sweep_dir, age: float) -> None:
    now = time.time()
    (sweep_dir / layout.LOCK_FILE).write_text(json.dumps({
        "host": "gpu-node-7", "pid": 4242, "started_at": now - 3600, "heartbeat": now - age,
        "command": "sweep", "token": "theirs"}))


def test_a_lock_from_another_host_counts_as_dead_once_its_heartbeat_is_stale(tmp_path, caplog):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    _other_host_lock(sweep_dir, age=10)
    with pytest.raises(UserError, match=r"driven by sweep on host gpu-node-7, pid 4242, started .*kill 4242 on "
                                        r"gpu-node-7"):
        with lock.hold(sweep_dir, str(sweep_dir), "sweep"):
            pass
    _other_host_lock(sweep_dir, age=lock.STALE_S + 5)
    with caplog.at_level("WARNING", logger="tuner"):
        with lock.hold(sweep_dir, str(sweep_dir), "sweep"):
            pass
    assert "took over the lock of sweep on host gpu-node-7, pid 4242" in caplog.text
    assert f"heartbeat is {int(lock.STALE_S + 5)}" in caplog.text


def test_readers_never_take_the_lock(tmp_path):
    sweep_dir = tmp_path / "s"
    first = holder(sweep_dir)
    try:
        assert lock.read_holder(sweep_dir).pid == first.pid
        with pytest.raises(UserError, match="one driver per sweep"):  # the holder still holds it
            with lock.hold(sweep_dir, str(sweep_dir), "sweep"):
                pass
    finally:
        first.kill()
        first.wait()


def test_a_bucket_sweep_is_locked_in_the_bucket_too(s3_server, tmp_path, caplog):
    """Two machines, two local directories, one bucket: the lock object decides."""
    location = f"s3://{s3_server['bucket']}/sweeps/locked"
    first = holder(tmp_path / "machine-a", location)
    try:
        with pytest.raises(UserError, match=rf"{location}/driver.lock: the sweep is being driven by sweep on host "):
            with lock.hold(tmp_path / "machine-b", location, "resume"):
                pass
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with caplog.at_level("WARNING", logger="tuner"):
        with lock.hold(tmp_path / "machine-b", location, "resume"):
            pass  # the holder was on this host and its pid is gone: taken over
    assert "took over the lock of sweep" in caplog.text
    from tuner import storage

    assert storage.read_with_etag(f"{location}/driver.lock") is None  # released
