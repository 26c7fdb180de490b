"""What several benchmarks share: timing a sweep's search phase."""

from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed_search():
    """Yields a list that receives the wall seconds of each `sweep.run_search` call made inside:
    from Ray's start to its shutdown, without data preparation, promotion or export."""
    from tuner import sweep

    walls: list[float] = []
    search = sweep.run_search

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return search(*args, **kwargs)
        finally:
            walls.append(time.perf_counter() - start)

    sweep.run_search = timed
    try:
        yield walls
    finally:
        sweep.run_search = search
