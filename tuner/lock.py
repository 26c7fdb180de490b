"""One driver per sweep: an exclusive lock, taken by `sweep`, `resume` and an extension of a sweep.

The lock is a file in the sweep directory, held with `flock` (released by the kernel when its holder
dies, however it dies) and naming its holder: host, pid, start time and a heartbeat the holder
renews every `HEARTBEAT_S` seconds. For bucket storage a lock object beside the sweep in the bucket
does the same across machines, created and taken over with S3's conditional writes.

A lock whose holder is dead is taken over, with a notice: on this host, when its pid is gone; on
another host, when its heartbeat is older than `STALE_S` seconds. `status`, `report` and `export`
never take it: they only read files the driver replaces whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from tuner import layout, storage
from tuner.errors import UserError

log = logging.getLogger("tuner")
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a lock on another host whose heartbeat is this old is dead


@dataclass
class Holder:
    host: str
    pid: int
    started_at: float
    heartbeat: float
    command: str
    token: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"{self.command} on host {self.host}, pid {self.pid}, started {started}"

    def is_dead(self, now: float) -> str | None:
        """Why this holder is dead, or None while it may be alive."""
        if self.host == socket.gethostname():
            return None if _pid_alive(self.pid) else f"pid {self.pid} is gone"
        if now - self.heartbeat > STALE_S:
            return f"its heartbeat is {now - self.heartbeat:.0f} s old (the limit is {STALE_S:.0f} s)"
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me(command: str) -> Holder:
    now = time.time()
    return Holder(socket.gethostname(), os.getpid(), now, now, command, uuid.uuid4().hex)


def _parse(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # empty (being written) or not ours


def _refusal(where: str, holder: Holder | None, sweep: str) -> UserError:
    who = holder.describe() if holder else "another process"
    stop = f"kill {holder.pid} on {holder.host}" if holder else "stop that driver"
    return UserError(f"{where}: the sweep is being driven by {who}; one driver per sweep. Wait for it to end, "
                     f"or {stop} and run `tuner resume {sweep}`; `status` and `report` work while it runs")


class FileLock:
    """The lock file in the sweep directory."""

    def __init__(self, sweep_dir: Path, me: Holder):
        self.path = Path(sweep_dir) / layout.LOCK_FILE
        self.me = me
        self.fd: int | None = None  # the open lock file, while held

    def acquire(self) -> str | None:
        """Take the lock; returns a notice when a dead holder's lock was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(str(self.path), previous, str(self.path.parent)) from None
        notice = None
        if previous is not None and previous.token != self.me.token:
            dead = previous.is_dead(time.time()) if previous.host != socket.gethostname() else "its process is gone"
            if dead is None:  # another host holds it on a filesystem whose flock does not reach us
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise _refusal(str(self.path), previous, str(self.path.parent))
            notice = f"took over the lock of {previous.describe()}: {dead}"
        self.fd = fd
        self.write()
        return notice

    def write(self) -> None:
        assert self.fd is not None, "write() before acquire()"
        data = json.dumps(asdict(self.me)).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class BucketLock:
    """The lock object in the bucket, beside the sweep: `<location>/driver.lock`."""

    def __init__(self, location: str, me: Holder):
        self.uri = storage.join(location, layout.LOCK_FILE)
        self.me = me
        self.etag: str | None = None  # of the lock object as this driver last wrote it

    def acquire(self) -> str | None:
        body = json.dumps(asdict(self.me))
        self.etag = storage.put_if(self.uri, body, etag=None)
        if self.etag is not None:
            return None
        found = storage.read_with_etag(self.uri)
        holder = _parse(found[0]) if found else None
        dead = holder.is_dead(time.time()) if holder else "it is not a tuner lock"
        if found is None:  # released between the two calls
            return self.acquire()
        if dead is None:
            raise _refusal(self.uri, holder, self.uri.rsplit('/', 1)[0])
        self.etag = storage.put_if(self.uri, body, etag=found[1])
        if self.etag is None:  # another driver took it over first
            raise _refusal(self.uri, _parse((storage.read_with_etag(self.uri) or ("", ""))[0]),
                           self.uri.rsplit('/', 1)[0])
        return f"took over the lock of {holder.describe() if holder else self.uri}: {dead}"

    def write(self) -> None:
        etag = storage.put_if(self.uri, json.dumps(asdict(self.me)), etag=self.etag)
        if etag is None:
            raise LockLost(f"{self.uri}: another driver took over this sweep's lock")
        self.etag = etag

    def release(self) -> None:
        if self.etag is not None:
            storage.delete_if(self.uri, self.etag)
            self.etag = None


class LockLost(RuntimeError):
    """Another driver took the lock over (this one's heartbeat stopped for longer than STALE_S)."""


@contextlib.contextmanager
def hold(sweep_dir: Path, location: str, command: str) -> Iterator[None]:
    """Hold the sweep's lock(s) for the block, renewing the heartbeat; exits 2 (UserError) at once
    when a live driver holds it."""
    me = _me(command)
    locks: list[Any] = [FileLock(sweep_dir, me)]
    if storage.is_uri(location):
        locks.append(BucketLock(location, me))
    taken = []
    try:
        for one in locks:
            notice = one.acquire()
            taken.append(one)
            if notice:
                log.warning("lock: %s", notice)
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(taken, me, stop), daemon=True, name="tuner-lock")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=5)
    finally:
        for one in reversed(taken):
            with contextlib.suppress(OSError):
                one.release()


def _heartbeat(locks: list[Any], me: Holder, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        me.heartbeat = time.time()
        for one in locks:
            try:
                one.write()
            except LockLost as exc:
                log.error("lock: %s; this driver should stop", exc)
            except OSError as exc:
                log.warning("lock: heartbeat not written (%s)", exc)


def read_holder(sweep_dir: Path) -> Holder | None:
    """Who drives the sweep now, as its lock file says (for `status`). Reads only: never takes or
    tests the lock, so it can never stand in a starting driver's way."""
    path = Path(sweep_dir) / layout.LOCK_FILE
    holder = _parse(path.read_text(errors="replace")) if path.exists() else None
    if holder is None or holder.is_dead(time.time()):
        return None
    return holder
