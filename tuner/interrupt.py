"""Ctrl-C and SIGTERM while trials run: the first one stops the sweep cleanly, a second one at once.

The first signal (Ctrl-C, or the SIGTERM a cluster's job stop sends) asks the driver to stop: no
new trial starts, each running trial goes on to its next checkpoint (for at most `wait_s`), then
Tune saves its snapshot and the driver exits 130. Nothing is closed or promoted: `resume` goes on
from those checkpoints exactly as after a driver that died. A second signal raises
KeyboardInterrupt at once. No Ray here: the driver's ledger acts on what this records.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130  # what a shell reports for a command ended by Ctrl-C


class Interrupted(Exception):
    """The sweep stopped on Ctrl-C or SIGTERM; its state is saved and `resume` goes on from it."""

    def __init__(self, why: str, sweep_dir: object = None):
        super().__init__(why)
        self.sweep_dir = sweep_dir


class Interrupt:
    """What the signal handler has asked for, read by the driver loop on its own thread."""

    def __init__(self, wait_s: float, say: Callable[[str], None]):
        self.wait_s, self.say = wait_s, say
        self.requested_at: float | None = None
        self.signal_name: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Tune pickles its searcher and callbacks with the Tuner (never to use them again here)."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def request(self, signum: int = signal.SIGINT, now: float | None = None) -> None:
        """The first signal asks to stop; the next one stops at once (KeyboardInterrupt)."""
        with self._lock:
            first = self.requested_at is None
            if first:
                self.requested_at = time.monotonic() if now is None else now
                self.signal_name = signal.Signals(signum).name
        if not first:
            raise KeyboardInterrupt
        self.say(f"{self.signal_name}: stopping — no new trials; running trials go on to their next checkpoint "
                 f"(at most {format_seconds(self.wait_s)}), then the sweep is saved. "
                 "Press Ctrl-C again to stop at once.")

    def overdue(self, now: float | None = None) -> bool:
        """The running trials have had their bounded wait."""
        if self.requested_at is None:
            return False
        return (time.monotonic() if now is None else now) - self.requested_at >= self.wait_s

    def handler(self, signum: int, frame) -> None:
        self.request(signum)


@contextlib.contextmanager
def catching(interrupt: Interrupt) -> Iterator[Interrupt]:
    """Route SIGINT and SIGTERM to `interrupt` while the trials run (main thread only: Python
    delivers signals there); the handlers before are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, interrupt.handler)
    try:
        yield interrupt
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def as_keyboard_interrupt(signum: int, frame) -> None:
    """SIGTERM outside the trials' run (data preparation, promotion): stop as Ctrl-C does there."""
    raise KeyboardInterrupt


def format_seconds(seconds: float) -> str:
    """90 → 1m30s: durations as people write them."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
