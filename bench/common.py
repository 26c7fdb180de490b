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


def bootstrap(values: list[float], rounds: int = 10000, seed: int = 0) -> dict[str, float]:
    """The median over seeds and a 95% percentile-bootstrap interval for it (seeds resampled).

    The interval's ends are resampled medians themselves (no interpolation), so a value that is
    infinite (a sweep that never matched) gives an infinite end rather than NaN."""
    import numpy as np

    data = np.array(values, dtype=float)
    medians = np.sort(np.median(np.random.default_rng(seed).choice(data, size=(rounds, len(data))), axis=1))
    return {"median": float(np.median(data)), "lo": float(medians[int(0.025 * (rounds - 1))]),
            "hi": float(medians[int(np.ceil(0.975 * (rounds - 1)))])}
