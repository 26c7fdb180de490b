"""Calls taken off Tune's event loop: run in order, on one thread of their own.

The ledger tells the tracker of every trial start, report and end from inside Tune's callbacks, on
the driver's one loop. A W&B run's start and finish wait on its server: with a slow endpoint each
took seconds, and every trial of the sweep waited with them. Here those calls are queued and return
at once; one worker thread makes them in the order given (a trial's run opens before its reports
are logged). Any other call first waits for the queue to drain, so what the sweep does after the
search (the leaderboard, the final evaluation, closing the runs) sees every trial's run complete.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("tuner")


class Background:
    """A proxy for `target` whose `queued` methods run on a worker thread, in call order."""

    def __init__(self, target: Any, queued: tuple[str, ...]):
        self._target, self._queued = target, frozenset(queued)
        self._calls: queue.Queue[tuple[Callable, tuple, dict] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="tuner-background", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            try:
                if call is not None:
                    method, args, kwargs = call
                    method(*args, **kwargs)
            except Exception:  # the target reports its own failures; this is a bug, not the sweep's
                log.exception("background call failed")
            finally:
                self._calls.task_done()
            if call is None:
                return

    def __reduce__(self):
        """Tune pickles its run config, callbacks and all: a copy gets a worker of its own."""
        return Background, (self._target, tuple(sorted(self._queued)))

    def drain(self) -> None:
        """Wait until every queued call has run."""
        self._calls.join()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            self.drain()
            return getattr(self._target, name)
        if name in self._queued:  # copied now: the caller may change a record after the call returns
            return lambda *args, **kwargs: self._calls.put((attribute, *copy.deepcopy((args, kwargs))))

        def direct(*args, **kwargs):
            self.drain()
            return attribute(*args, **kwargs)
        return direct

    def stop(self) -> None:
        """Run what is queued, then end the worker thread."""
        self._calls.put(None)
        self._worker.join()
