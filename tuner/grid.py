"""The grid of `search.sampler: grid`: every combination of the values the space lists.

Optuna's GridSampler runs each point of a grid once, in a seeded order. A grid needs every searched
field to have finitely many values: a categorical's choices, an int range (by its step), or a float
range with a `step`. The grid fixes the sweep's size: `search.num_samples` is the number of points,
plus the baseline and `search.enqueue`'s configs, which run beside the grid, not drawn from it.

Imports nothing of tuner's: `spacecheck` validates with it, `space` builds the sampler's grid with it.
"""

from __future__ import annotations

import math
from typing import Any

# A grid larger than this is a typo or a continuous range in disguise, not a sweep anyone will run.
MAX_POINTS = 10_000


def values(entry: dict[str, Any]) -> list[Any] | None:
    """The values a well-formed distribution entry takes, in order; None for a float without `step`
    (it has no finite list of values). Call it once `check` has bounded the count."""
    kind = entry["type"]
    if kind == "categorical":
        return list(entry["choices"])
    low, step = float(entry["low"]), entry.get("step")
    if kind == "int":
        return list(_int_range(entry))
    if step is None:
        return None
    return [float(f"{low + k * float(step):.12g}") for k in range(_float_count(entry))]


def count(entry: dict[str, Any]) -> int | None:
    """How many values `values` would list, without listing them (an int range may be vast)."""
    kind = entry["type"]
    if kind == "categorical":
        return len(entry["choices"])
    if kind == "int":
        return len(_int_range(entry))
    return None if entry.get("step") is None else _float_count(entry)


def _int_range(entry: dict[str, Any]) -> range:
    return range(int(float(entry["low"])), int(float(entry["high"])) + 1, int(float(entry.get("step") or 1)))


def _float_count(entry: dict[str, Any]) -> int:
    low, high, step = float(entry["low"]), float(entry["high"]), float(entry["step"])
    return math.floor((high - low) / step + 1e-9) + 1


def check(entries: dict[str, dict[str, Any]], problems: list[str]) -> int | None:
    """The number of grid points of the space's distribution `entries` (validated already), or None
    after recording why they make no grid."""
    points, ok = 1, True
    for name, entry in entries.items():
        path = f"search.space.{name}"
        if "when" in entry:
            problems.append(f"{path}.when: sampler grid runs every combination of every field, so a "
                            "field cannot depend on another; drop `when:` or use sampler tpe")
            ok = False
            continue
        try:
            listed = count(entry)
        except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError):  # malformed: reported
            return None
        if listed is None:
            problems.append(f"{path}: a float range from {entry['low']} to {entry['high']} has no finite "
                            f"list of values for sampler grid; {_fix(entry)}")
            ok = False
            continue
        points *= max(listed, 1)
    if ok and points > MAX_POINTS:
        problems.append(f"search.sampler: got 'grid', but the space has {points:,} combinations (at most "
                        f"{MAX_POINTS:,}); list fewer values or use sampler tpe")
        ok = False
    return points if ok else None


def _fix(entry: dict[str, Any]) -> str:
    low, high = float(entry["low"]), float(entry["high"])
    if entry.get("log"):  # a log range takes no step: list the values, a few per decade
        return (f"list them instead, e.g. type: categorical, choices: [{low:g}, {(low * high) ** 0.5:.2g}, "
                f"{high:g}]")
    return f"add `step:` (e.g. step: {(high - low) / 4:.3g}) or list them as type: categorical, choices: [...]"
