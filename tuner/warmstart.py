"""Warm starts: an earlier sweep's ended trials as prior trials of this sweep's study, and its best
configs queued first.

`search.warm_start` names an earlier sweep (its directory or bucket URI). Each of its ended trials
enters the new study as the finished trial its own searcher told (COMPLETE at its best value, PRUNED
with its reports, FAIL), holding only the parameters the new space searches and whose values the
new distributions contain: a parameter the earlier sweep held fixed carries its fixed value. TPE
(and GP) then model the new search from its first trial. Its best `search.warm_start_top_k`
configs that fit the new space whole run first, after the baseline and `search.enqueue` (none by
default: measured on bench/hpo_synthetic.py, last sweep's best run first under ASHA set every
rung's bar at the old optimum, and the search did worse than a cold one).

Everything is read and checked before any trial starts: a sweep that cannot be read, one that
optimised another metric, or one from which no parameter carries over is refused with the reason.
The priors are added once; the study remembers its warm start across resumes (and a study rebuilt
by `--restart-search` gets them again).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import builtin, layout, mirror, pareto, records, space, storage, study
from tuner.errors import UserError
from tuner.spec import Spec, check_point, condition_holds, conditions, fixed_value, load_spec

log = logging.getLogger("tuner")
WARM_START = "warm_start"  # the study's user attribute: the sweep its priors came from
QUEUE = "warm_start_queue"  # the study's user attribute: the earlier sweep's best configs, to queue
SOURCE_TRIAL = "warm_start_trial"  # a prior trial's user attribute: its trial id in the earlier sweep


@dataclass
class Priors:
    source: str  # the earlier sweep as the spec names it
    trials: list[Any]  # Optuna FrozenTrials, ready for `study.add_trials`
    queued: list[dict[str, Any]]  # its best configs that fit this space whole, best first
    carried: dict[str, int] = field(default_factory=dict)  # parameter → trials that gave it a value
    left: dict[str, str] = field(default_factory=dict)  # parameter → why no trial could give it

    def describe(self) -> str:
        kept = ", ".join(f"{name} ({count} trials)" for name, count in self.carried.items())
        text = f"warm start from {self.source}: {len(self.trials)} prior trials; carried over: {kept}"
        if self.left:
            text += "; not carried: " + "; ".join(f"{name} ({why})" for name, why in self.left.items())
        return text + f"; {len(self.queued)} of its best configs queued first"


def load(spec: Spec) -> Priors | None:
    """The earlier sweep's trials, as this sweep's priors; None without `search.warm_start`. Refuses
    (UserError) an earlier sweep that cannot inform this one."""
    source = spec.search.warm_start
    if not source:
        return None
    where = f"search.warm_start: {source}"
    earlier_dir = _local_copy(source)
    try:
        earlier = load_spec(earlier_dir / layout.SPEC_FILE)
    except UserError as exc:
        raise UserError(f"{where}: its spec.yaml does not read ({exc}); name the directory of a sweep tuner ran, "
                        "e.g. runs/tiny") from None
    _check_objective(spec, earlier, where)
    ended = [r for r in records.load_all(earlier_dir, str(earlier_dir)) if r.ended]
    if not any(records.finite(r.best_metric) for r in ended):
        raise UserError(f"{where}: none of its trials ended with a finite {spec.search.metric}; there is nothing "
                        "to learn from: drop search.warm_start, or name a sweep that ran")
    return _priors(spec, earlier, ended, source, where)


def _local_copy(source: str) -> Path:
    """The earlier sweep's directory: the path itself, or its bucket's driver files fetched once."""
    if storage.is_uri(source):
        digest = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:12]
        local = builtin.cache_root() / "warm_start" / digest
        try:
            found = mirror.pull(source.rstrip("/"), local)
        except OSError as exc:
            raise UserError(f"search.warm_start: {source}: cannot be read ({exc}); check the URI and the "
                            "bucket's credentials") from None
        if not found:
            raise UserError(f"search.warm_start: {source}: no sweep there; give the storage URI an earlier "
                            "sweep ran with, e.g. s3://bucket/sweeps/tiny")
        return local
    path = Path(source).expanduser()
    if not (path / layout.SPEC_FILE).is_file() or not (path / layout.TRIALS_DIR).is_dir():
        raise UserError(f"search.warm_start: {source}: not a sweep directory (no {layout.SPEC_FILE} and "
                        f"{layout.TRIALS_DIR}/); give the directory an earlier `tuner sweep` printed, e.g. runs/tiny")
    return path


def _check_objective(spec: Spec, earlier: Spec, where: str) -> None:
    if (earlier.search.metric, earlier.search.mode) != (spec.search.metric, spec.search.mode):
        raise UserError(f"{where}: that sweep optimised {earlier.search.metric} ({earlier.search.mode}), this one "
                        f"{spec.search.metric} ({spec.search.mode}); its values cannot inform this search: "
                        "warm-start from a sweep with the same search.metric and mode")
    if pareto.objectives(earlier) != pareto.objectives(spec):
        raise UserError(f"{where}: that sweep's objectives (search.metrics) were {_objectives(earlier)}, this one's "
                        f"{_objectives(spec)}; its values cannot inform this search: warm-start from a sweep with the "
                        "same search.metrics")


def _objectives(spec: Spec) -> str:
    return ", ".join(f"{name} ({mode})" for name, mode in pareto.objectives(spec)) or "none (one metric)"


def _priors(spec: Spec, earlier: Spec, ended: list[records.TrialRecord], source: str, where: str) -> Priors:
    distributions = space.distributions(spec)
    carried: dict[str, int] = dict.fromkeys(distributions, 0)
    trials = []
    for record in ended:
        params = {name: value for name, value in _values(earlier, record).items()
                  if name in distributions and contains(distributions[name], value)}
        for name in params:
            carried[name] += 1
        if params:
            trials.append(study.as_trial(record, params, distributions, spec.search.metric,
                                         {SOURCE_TRIAL: record.trial_id, "status": record.status},
                                         pareto.objectives(spec)))
    left = {name: _why_not(earlier, name, distributions[name]) for name, count in carried.items() if not count}
    if not trials:
        raise UserError(f"{where}: no parameter carries over: " + "; ".join(f"{n} ({w})" for n, w in left.items())
                        + "; widen search.space to hold that sweep's values, or drop search.warm_start")
    queued = top_configs(spec, earlier, ended)
    return Priors(source, trials, queued, {n: c for n, c in carried.items() if c}, left)


def _values(earlier: Spec, record: records.TrialRecord) -> dict[str, Any]:
    """Every hyperparameter the earlier trial trained with that this space could search: its
    sampled values over the earlier spec's fixed ones."""
    return {**space.fixed_values(earlier), **record.params}


def contains(distribution: Any, value: Any) -> bool:
    """Whether an Optuna distribution holds `value` (a categorical's choice, a number in range and
    on its step)."""
    if value is None or isinstance(value, (dict, list)):
        return False
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _why_not(earlier: Spec, name: str, distribution: Any) -> str:
    if name in space.distributions(earlier):
        return "none of its values is in this range"
    return f"held at {fixed_value(earlier, name)!r} there, outside this range"


def top_configs(spec: Spec, earlier: Spec, ended: list[records.TrialRecord]) -> list[dict[str, Any]]:
    """The earlier sweep's best `warm_start_top_k` trials as configs of this space (each searched
    field given, every value in range), best first; a config already queued here is skipped."""
    ranked = [r for r in records.ranked(ended, spec.search.mode) if r.promotable]
    already = {_key(point) for point in [*([spec.search.baseline] if spec.search.baseline else []),
                                         *(spec.search.enqueue or [])]}
    searched = space.distributions(spec)
    queued: list[dict[str, Any]] = []
    for record in ranked:
        if len(queued) >= spec.search.warm_start_top_k:
            break
        values = _values(earlier, record)
        point = {name: values[name] for name in searched if name in values}
        given = {**space.fixed_values(spec), **point}
        point = {name: value for name, value in point.items()
                 if condition_holds(conditions(spec.search.space[name]), given)}
        problems: list[str] = []
        check_point(point, spec.search, "", "", problems)
        if not problems and _key(point) not in already:
            queued.append(point)
            already.add(_key(point))
    return queued


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def prepare(spec: Spec, live: Path, sweep_id: str) -> Priors | None:
    """Add the earlier sweep's trials to this sweep's live study, and note its configs to queue,
    once: a study that holds them already (a resumed sweep) is left as it is, and the earlier sweep
    is not read again (it may be gone by then). Returns the priors added, if any."""
    if not spec.search.warm_start or WARM_START in _attrs(live, spec.name):
        return None
    if Path(spec.search.warm_start).expanduser().resolve() == spec.sweep_dir.resolve():
        raise UserError(f"search.warm_start: {spec.search.warm_start} is this sweep's own directory; name an "
                        "earlier sweep, or run `tuner resume` to go on with this one")
    priors = load(spec)
    if priors is None:  # not reached: warm_start is set
        return None
    import optuna

    modes = [mode for _, mode in pareto.objectives(spec)] or [spec.search.mode]
    found = optuna.create_study(study_name=spec.name, storage=study.url(live), load_if_exists=True,
                                directions=["minimize" if mode == "min" else "maximize" for mode in modes])
    found.set_user_attr(study.SWEEP_ID, found.user_attrs.get(study.SWEEP_ID, sweep_id))
    added = {t.user_attrs.get(SOURCE_TRIAL) for t in found.get_trials(deepcopy=False)}
    found.add_trials([t for t in priors.trials if t.user_attrs[SOURCE_TRIAL] not in added])  # a killed driver's
    found.set_user_attr(QUEUE, priors.queued)
    found.set_user_attr(WARM_START, priors.source)  # last: a driver killed before it adds what is missing
    log.info("%s", priors.describe())
    return priors


def queued(live: Path, name: str) -> list[dict[str, Any]]:
    """The earlier sweep's best configs, as `prepare` noted them in the study, to queue first."""
    return list(_attrs(live, name).get(QUEUE) or [])


def _attrs(live: Path, name: str) -> dict[str, Any]:
    """The live study's user attributes ({} before it exists)."""
    if not Path(live).exists():
        return {}
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=study.url(live)).user_attrs
    except KeyError:
        return {}
