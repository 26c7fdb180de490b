"""Several objectives (`search.metrics`): each trial's values, the Pareto front, and the pick.

A trial's values are those of its best report on the first objective (the report whose checkpoint
promotion would take), the other objectives read from that same report: what the searcher tells
Optuna, so the front here is the study's. The trials that completed feed the front, as only they are
COMPLETE in Optuna; a trial stopped early (ASHA, patience, the budget) trained less than the others.
"""

from __future__ import annotations

from typing import Any, Iterable

from tuner import constants as C
from tuner import records
from tuner.records import TrialRecord
from tuner.spec import PickSpec, Spec, tolerance

Objectives = list[tuple[str, str]]  # (reported key, "min" or "max"), the first is search.metric


def objectives(spec: Spec) -> Objectives:
    """The spec's objectives; [] for a search on one metric."""
    return [(m.name, m.mode) for m in spec.search.metrics or []]


def report_values(report: dict[str, Any], objectives: Objectives) -> tuple[float, ...] | None:
    """One report's values of the objectives; None unless each is a finite number."""
    values = [v for name, _ in objectives if records.finite(v := report.get(name))]
    return tuple(float(v) for v in values) if len(values) == len(objectives) else None


def best_report(record: TrialRecord, metric: str) -> dict[str, Any] | None:
    """The report the record's best metric came from (its first at the best step and value)."""
    for report in record.history:
        if report.get(C.STEP) == record.best_step and report.get(metric) == record.best_metric:
            return report
    return None


def values(record: TrialRecord, objectives: Objectives) -> tuple[float, ...] | None:
    """The trial's values: its best report's on the first objective; None if it has none finite."""
    if not objectives or not records.finite(record.best_metric):
        return None
    report = best_report(record, objectives[0][0])
    return report_values(report, objectives) if report is not None else None


def dominates(a: tuple[float, ...], b: tuple[float, ...], modes: list[str]) -> bool:
    """`a` is no worse than `b` in every objective and better in one (equal points: neither)."""
    signed = [(x, y) if mode == "min" else (-x, -y) for x, y, mode in zip(a, b, modes)]
    return all(x <= y for x, y in signed) and any(x < y for x, y in signed)


def front(points: dict[str, tuple[float, ...]], modes: list[str]) -> set[str]:
    """The keys of the points no other point dominates (equal points are all on the front)."""
    return {key for key, point in points.items()
            if not any(dominates(other, point, modes) for o, other in points.items() if o != key)}


def front_ids(found: Iterable[TrialRecord], objectives: Objectives) -> set[str]:
    """The trial ids on the sweep's Pareto front: completed trials whose values no other's dominate."""
    points = {r.trial_id: v for r in found if r.status == C.COMPLETED and (v := values(r, objectives)) is not None}
    return front(points, [mode for _, mode in objectives])


def pick(candidates: list[TrialRecord], found: Iterable[TrialRecord], objectives: Objectives,
         settings: PickSpec) -> list[TrialRecord]:
    """`promote.pick`: the candidates (promotable, with a checkpoint), the picked one first.

    Among the pool (the front's candidates, or all of them) those whose `metric` is within
    `within` of the pool's best are ordered by `then` in its mode (ties: by `metric`); the others
    follow in their order, should the picked checkpoint be unreadable."""
    modes = dict(objectives)
    metric = settings.metric or objectives[0][0]
    on_front = front_ids(found, objectives) if settings.among == "front" else None
    scored = {r.trial_id: v for r in candidates if (v := values(r, objectives)) is not None}
    pool = [r for r in candidates if r.trial_id in scored and (on_front is None or r.trial_id in on_front)]
    if not pool:
        return candidates
    index = {name: i for i, (name, _) in enumerate(objectives)}

    def value(record: TrialRecord, name: str) -> float:
        raw = scored[record.trial_id][index[name]]
        return raw if modes[name] == "min" else -raw

    best = min(value(r, metric) for r in pool)
    amount, relative = tolerance(settings.within) or (0.0, False)
    slack = amount * abs(best) if relative else amount
    near = [r for r in pool if value(r, metric) <= best + slack + 1e-12 * max(1.0, abs(best))]  # float error
    near.sort(key=lambda r: (value(r, settings.then), value(r, metric)))
    return near + [r for r in candidates if r not in near]
