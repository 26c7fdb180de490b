"""The sweep's Optuna study: where it lives, whose it is, and the copy readers see.

The live study is a SQLite file on the driver's own disk (SQLite is unsafe on NFS and S3), in the
cache under the sweep's id (written in `sweep.json` when the sweep is created) and its directory:
a new sweep never opens another sweep's study, whatever its name or path, and a copy of a sweep
directory starts from its own copy. The sweep directory (and its bucket) holds a consistent copy,
`optuna.db`, replaced by rename at every Tune snapshot, which dashboards and `status` read and
which a driver on another machine, or in a moved directory, starts from. The study carries the
sweep id as a user attribute: a study file of another sweep is refused.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Literal

from tuner import builtin, layout, records, storage
from tuner import constants as C
from tuner.errors import UserError

log = logging.getLogger("tuner")
SWEEP_ID = "sweep_id"  # the study's user attribute naming the sweep that owns it
RAY_TRIAL_ID = "ray_trial_id"  # a study trial's user attribute: the Tune trial it is
# Several objectives: a study trial's user attribute, the values of its best report on the first so far
BEST_VALUES = "best_values"


def live_path(sweep_dir: Path, sweep_id: str) -> Path:
    """The live study on the driver's disk, for this sweep id in this directory."""
    digest = hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    path = builtin.cache_root() / "studies" / f"{sweep_id}-{digest}" / layout.STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def copy(source: Path, destination: Path) -> None:
    """A consistent copy of a live SQLite database (its backup API, not a file copy), put in place
    by rename: a reader with the old copy open keeps reading it."""
    if not source.exists():
        return
    with layout.atomic_path(destination) as tmp:
        src, dst = sqlite3.connect(source), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()


def restore(sweep_dir: Path, location: str, sweep_id: str) -> Path:
    """The live study for this driver: the one it kept, else the sweep's copy (from the bucket when
    the local directory has none). Returns its path; it may not exist yet (a new sweep)."""
    live = live_path(sweep_dir, sweep_id)
    if live.exists():
        return live
    copy_path = Path(sweep_dir) / layout.STUDY_DB
    remote = storage.join(location, layout.STUDY_DB)
    if not copy_path.exists() and storage.is_uri(location) and storage.exists(remote):
        storage.download(remote, copy_path)
    if copy_path.exists():
        copy(copy_path, live)
    return live


def save_copy(sweep_dir: Path, location: str, sweep_id: str) -> None:
    """The sweep directory's copy of the live study (and the bucket's, for bucket storage)."""
    destination = Path(sweep_dir) / layout.STUDY_DB
    copy(live_path(sweep_dir, sweep_id), destination)
    if destination.exists() and storage.is_uri(location):
        storage.upload(destination, storage.join(location, layout.STUDY_DB))


def claim(path: Path, name: str, sweep_id: str, origin: Path | None = None) -> None:
    """Make sure the study `name` in `path` is this sweep's: mark it if it is new, refuse it if it
    belongs to another sweep or cannot be read. `origin` is the file a user would fix."""
    import optuna

    where = origin or path
    try:
        study = optuna.load_study(study_name=name, storage=url(path))
    except KeyError:
        return  # not created yet: the searcher creates it, and claims it then
    except Exception as exc:  # noqa: BLE001 (sqlite3 and SQLAlchemy raise many kinds)
        raise UserError(_unreadable(where, exc)) from None
    owner = study.user_attrs.get(SWEEP_ID)
    if owner is None:
        study.set_user_attr(SWEEP_ID, sweep_id)
    elif owner != sweep_id:
        raise UserError(f"{where}: the Optuna study {name!r} belongs to sweep {owner}, not to this sweep "
                        f"({sweep_id}); put this sweep's own optuna.db back, or run `tuner resume SWEEP_DIR "
                        "--restart-search` to rebuild the study from the trial records")


def check(sweep_dir: Path, location: str, sweep_id: str, name: str) -> None:
    """Refuse, before any trial starts, a study that cannot be read or is another sweep's."""
    origin = Path(sweep_dir) / layout.STUDY_DB
    try:
        live = restore(sweep_dir, location, sweep_id)
    except sqlite3.DatabaseError as exc:
        raise UserError(_unreadable(origin, exc)) from None
    if live.exists():
        claim(live, name, sweep_id, origin=origin)


def _unreadable(path: Path, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"{path}: the Optuna study cannot be read ({first}); put a good copy back, or run "
            "`tuner resume SWEEP_DIR --restart-search`, which keeps every finished trial and rebuilds the "
            "study from their records")


def set_aside(sweep_dir: Path, sweep_id: str) -> None:
    """Move an unreadable study (live and copy) out of the way, renamed, never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (live_path(sweep_dir, sweep_id), Path(sweep_dir) / layout.STUDY_DB):
        if path.exists():
            shutil.move(path, path.with_name(f"{path.name}.unreadable-{stamp}"))
            log.warning("optuna: %s set aside as %s.unreadable-%s", path, path.name, stamp)


def rebuild(path: Path, name: str, sweep_id: str, metric: str, mode: str, distributions: dict[str, Any],
            ended: Iterable[Any], objectives: list[tuple[str, str]] | None = None) -> int:
    """A new study holding the ended trials of the records, with the states and values the searcher
    would have told: what `--restart-search` keeps. `objectives` (several, `search.metrics`) make
    it a study of as many directions. Returns how many trials it holds."""
    import optuna

    directions: list[Literal["minimize", "maximize"]] = ["minimize" if m == "min" else "maximize"
                                                         for _, m in objectives or [(metric, mode)]]
    study = optuna.create_study(study_name=name, storage=url(path), load_if_exists=True, directions=directions)
    study.set_user_attr(SWEEP_ID, sweep_id)
    trials = [as_trial(record, record.params, distributions, metric,
                       {RAY_TRIAL_ID: record.trial_id, "status": record.status}, objectives) for record in ended]
    study.add_trials(trials)
    return len(trials)


def as_trial(record: Any, params: dict[str, Any], distributions: dict[str, Any], metric: str,
             user_attrs: dict[str, Any], objectives: list[tuple[str, str]] | None = None) -> Any:
    """An ended trial record as the finished Optuna trial the searcher would have told, holding the
    `params` that `distributions` name: COMPLETE at its best value (several `objectives`: its best
    report's values), PRUNED with its reports by tokens seen (several: none), or FAIL."""
    import optuna

    dists = {k: distributions[k] for k in params if k in distributions}
    told = _told(record, metric, objectives)
    attrs = told.pop("attrs")
    state = final_state(record.status, told["values"] is not None)
    if state != optuna.trial.TrialState.COMPLETE:
        told["values"] = None
    return optuna.trial.create_trial(params={k: params[k] for k in dists}, distributions=dists, state=state,
                                     user_attrs={**user_attrs, **attrs}, **told)


def _told(record: Any, metric: str, objectives: list[tuple[str, str]] | None) -> dict[str, Any]:
    """A record's values, intermediate values and user attributes as the searcher told them."""
    if objectives:
        from tuner import pareto

        values = pareto.values(record, objectives)
        report = pareto.best_report(record, objectives[0][0])
        kept = values_of(report, [n for n, _ in objectives]) if report is not None else None
        return {"values": list(values) if values else None, "attrs": {BEST_VALUES: kept} if kept else {}}
    intermediate = {int(h[C.TOKENS_SEEN]): float(h[metric])
                    for h in record.history if h.get(C.TOKENS_SEEN) is not None and records.finite(h.get(metric))}
    value = [float(record.best_metric)] if records.finite(record.best_metric) else None
    return {"values": value, "intermediate_values": intermediate, "attrs": {}}


def values_of(report: dict[str, Any], metrics: list[str]) -> list[float | None]:
    """A report's values of several objectives, as a study's user attribute keeps them (None: not finite)."""
    return [float(report[m]) if records.finite(report.get(m)) else None for m in metrics]


def final_state(status: str, finite: bool) -> Any:
    """What Optuna is told of a trial that ended with `status`, `finite` if it reported a finite
    metric: COMPLETE for a completed trial, PRUNED for one a scheduler, patience or the budget
    stopped, FAIL for the rest (failed, diverged, out of memory, cut off by the driver's clock)."""
    import optuna

    if status == C.COMPLETED and finite:
        return optuna.trial.TrialState.COMPLETE
    if status in C.PROMOTABLE and status not in C.CUT_OFF and finite:
        return optuna.trial.TrialState.PRUNED
    return optuna.trial.TrialState.FAIL


def fail_and_requeue(ot_study: Any, known: set[str]) -> list[Any]:
    """Trials the study holds RUNNING that no Tune trial will finish (not in `known`): FAIL, marked
    lost, their configurations queued again (each queued copy names the trial it retries).
    Returns them."""
    import optuna

    lost = [t for t in ot_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING
            and t.user_attrs.get(RAY_TRIAL_ID) not in known]
    for trial in lost:
        optuna.trial.Trial(ot_study, trial._trial_id).set_user_attr(C.LOST, True)
        ot_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        ot_study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.info("optuna: trial %s was running when the driver died, after Tune's last snapshot; marked FAIL and "
                 "its configuration queued again", trial.number)
    return lost


def fail_lost(path: Path, name: str, keep: set[str]) -> list[Any]:
    import optuna

    try:
        found = optuna.load_study(study_name=name, storage=url(path))
    except KeyError:
        return []
    return fail_and_requeue(found, keep)


def told(path: Path, name: str) -> dict[str, str]:
    """Tune trial id → the status the searcher told Optuna, for each trial the study has finished
    (a lost one is not told: it has no status)."""
    if not path.exists():
        return {}
    import optuna

    try:
        found = optuna.load_study(study_name=name, storage=url(path))
    except KeyError:
        return {}
    return {t.user_attrs[RAY_TRIAL_ID]: t.user_attrs["status"] for t in found.get_trials(deepcopy=False)
            if t.state.is_finished() and RAY_TRIAL_ID in t.user_attrs and t.user_attrs.get("status") in C.STATUSES}


def close_running(path: Path, name: str) -> None:
    """Trials the time budget or Ctrl-C cut short: PRUNED if they reported, else FAIL."""
    import optuna

    if not path.exists():
        return
    study = optuna.load_study(study_name=name, storage=url(path))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if RAY_TRIAL_ID not in trial.user_attrs:
            continue
        reported = trial.intermediate_values or trial.user_attrs.get(BEST_VALUES)
        state = optuna.trial.TrialState.PRUNED if reported else optuna.trial.TrialState.FAIL
        study.tell(trial.number, state=state)


def states(sweep_dir: Path, name: str | None) -> dict[str, tuple[int, str]]:
    """Tune trial id → (Optuna trial number, state), from the sweep directory's copy."""
    path = Path(sweep_dir) / layout.STUDY_DB
    if not path.exists() or not name:
        return {}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url(path))
    except KeyError:
        return {}
    return {t.user_attrs[RAY_TRIAL_ID]: (t.number, t.state.name)
            for t in study.get_trials(deepcopy=False) if RAY_TRIAL_ID in t.user_attrs}
