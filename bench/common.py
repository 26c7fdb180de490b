"""What several benchmarks share: timing a sweep's phases, bootstrap intervals."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path


@contextlib.contextmanager
def spans(module, name: str):
    """Yields a list that receives (start, end), by the wall clock the trial records use, of each
    call of `module.name` made inside the block (the name looked up at call time: `tuner.sweep`'s
    functions call each other through the module's globals)."""
    found: list[tuple[float, float]] = []
    original = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            found.append((start, time.time()))

    setattr(module, name, timed)
    try:
        yield found
    finally:
        setattr(module, name, original)


def timed_search():
    """`spans` of `sweep.run_search`: from Ray's start to its shutdown, without data preparation,
    promotion or export."""
    from tuner import sweep

    return spans(sweep, "run_search")


def trial_records(sweep_dir: Path) -> list[dict]:
    """The sweep's trial records (`trials/*.json`) as written."""
    return [json.loads(path.read_text()) for path in (sweep_dir / "trials").glob("*.json")]


def arrival_order(found: list[dict]) -> list[tuple[dict, dict, int]]:
    """Every report of these trials in the order the driver received it: (its trial's record, the
    report, the training tokens it added), so a sweep's compute can be followed as it was spent."""
    reports = []
    for record in found:
        previous = 0
        for point in record["history"]:
            tokens = int(point["tokens_seen"])
            reports.append((record, point, tokens - previous))
            previous = tokens
    return sorted(reports, key=lambda row: row[1]["reported_at"])


def seconds(found: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in found)

def bootstrap(values: list[float], rounds: int = 10000, seed: int = 0) -> dict[str, float]:
    """The median over seeds and a 95% percentile-bootstrap interval for it (seeds resampled).

    The interval's ends are resampled medians themselves (no interpolation), so a value that is
    infinite (a sweep that never matched) gives an infinite end rather than NaN."""
    import numpy as np

    data = np.array(values, dtype=float)
    medians = np.sort(np.median(np.random.default_rng(seed).choice(data, size=(rounds, len(data))), axis=1))
    return {"median": float(np.median(data)), "lo": float(medians[int(0.025 * (rounds - 1))]),
            "hi": float(medians[int(np.ceil(0.975 * (rounds - 1)))])}
