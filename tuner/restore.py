"""Picking up an experiment whose driver died: Tune's snapshot is checked here before Tune reads it.

Tune restores from the newest `experiment_state-*.json` of the experiment's directory; left to
itself, it starts a new experiment without a word when that file cannot be read. Here:

- a readable snapshot is restored, and the search is capped so trials the dead driver finished
  after the snapshot (their records are kept) count toward `num_samples`;
- an experiment that died before its first snapshot is abandoned, its unfinished trials set aside
  and their configurations queued again (they go on from their checkpoints);
- an unreadable or mismatched snapshot is refused (exit 2) with the choices, one of which,
  `--restart-search`, does the same as above and keeps every finished trial.

A finished trial's record is never moved, rewritten or deleted. No Ray here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tuner import layout, records, storage, study
from tuner.errors import UserError, first_line
from tuner.records import TrialRecord
from tuner.state import Experiment, SweepState

log = logging.getLogger("tuner")
STATE_GLOB = "experiment_state-"


@dataclass
class Snapshot:
    path: str
    trial_ids: set[str]
    limit: int | None = None  # how many trials the restored search may hold in all


def read_snapshot(location: str, experiment: str) -> Snapshot | None:
    """Tune's newest snapshot of `experiment`, or None when it never wrote one. Raises UserError
    when the newest one cannot be read."""
    folder = storage.join(location, experiment)
    names = sorted(n for n in storage.list_files(folder, STATE_GLOB) if n.endswith(".json"))
    if not names:
        return None
    path = storage.join(folder, names[-1])
    try:
        state = json.loads(storage.read_text(path))
        ids = {json.loads(trial_state)["trial_id"] for trial_state, _ in state["trial_data"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(_refusal(path, f"it cannot be read ({type(exc).__name__}: {first_line(exc)})")) from None
    return Snapshot(path, ids)


def _refusal(path: str, why: str) -> str:
    return (f"{path}: Tune's snapshot of the interrupted experiment is refused: {why}. Choices: put a good copy "
            "back and run `tuner resume SWEEP_DIR` again; or run `tuner resume SWEEP_DIR --restart-search`, "
            "which keeps every finished trial, sets the unfinished ones aside in trials/lost/ and runs their "
            "configurations again from their checkpoints")


def check_matches(snapshot: Snapshot, found: list[TrialRecord], experiment: str) -> None:
    """A snapshot that holds none of the experiment's recorded trials is another experiment's."""
    ours = {r.trial_id for r in found if r.experiment == experiment}
    if snapshot.trial_ids and ours and not snapshot.trial_ids & ours:
        raise UserError(_refusal(snapshot.path, f"it holds none of the {len(ours)} trials this sweep recorded "
                                                f"for experiment {experiment!r} (another sweep's?)"))


def plan(progress: SweepState, sweep_dir: Path, location: str, name: str, restart_search: bool) -> Snapshot | None:
    """What to do with the sweep's unfinished experiment, if it has one: restore it (returns its
    snapshot, with how many trials its search may hold in all), or abandon it (returns None; a new
    experiment follows)."""
    if not progress.experiments or progress.experiments[-1].finished:
        return None
    experiment = progress.experiments[-1]
    found = records.load_all(sweep_dir, location)
    close_told(found, experiment.name, sweep_dir, study.told(study.live_path(sweep_dir, progress.sweep_id), name))
    try:
        snapshot = read_snapshot(location, experiment.name)
        if snapshot is not None:
            check_matches(snapshot, found, experiment.name)
    except UserError:
        if not restart_search:
            raise
        snapshot = None
    if snapshot is None:
        abandon(progress, experiment, sweep_dir, location, name, found)
        return None
    experiment.restore = True
    finished_after = [r for r in found if r.experiment == experiment.name and r.ended
                      and r.trial_id not in snapshot.trial_ids]
    snapshot.limit = experiment.num_samples - len(finished_after)
    return snapshot


def close_told(found: list[TrialRecord], experiment: str, sweep_dir: Path, told: dict[str, str]) -> None:
    """Close the unfinished records of trials whose end the searcher had told Optuna, with what it
    was told. Tune tells its searcher a trial ended before its callbacks write the record: a driver
    killed between the two leaves a record still running for a trial the search has counted, whose
    configuration Optuna will never queue again. It ended: run again, it would only repeat that."""
    for record in found:
        status = told.get(record.trial_id)
        if record.experiment != experiment or record.ended or status is None:
            continue
        record.status, record.awaiting_start, record.pending_value = status, False, None
        record.ended_at = record.ended_at or time.time()
        records.save(record, sweep_dir)
        log.info("trial %s: the dead driver told Optuna it ended (%s) but did not record it; recorded now",
                 record.trial_id, status)


def abandon(progress: SweepState, experiment: Experiment, sweep_dir: Path, location: str, name: str,
            found: list[TrialRecord]) -> None:
    """Go on without the experiment's snapshot: its finished trials stay as they are; its unfinished
    ones are set aside, and Optuna fails them and queues their configurations again."""
    lost = [r for r in found if r.experiment == experiment.name and not r.ended]
    for record in lost:
        records.set_aside(record, sweep_dir)
    live = study.live_path(sweep_dir, progress.sweep_id)
    if live.exists():
        study.fail_lost(live, name, keep=set())
    experiment.finished, experiment.restore, experiment.abandoned = True, False, True
    progress.save(sweep_dir)
    log.info("experiment %s: going on without its snapshot; %d finished trials kept, %d unfinished set aside in "
             "%s/%s/ and run again", experiment.name, sum(r.experiment == experiment.name and r.ended for r in found),
             len(lost), layout.TRIALS_DIR, layout.LOST_DIR)
