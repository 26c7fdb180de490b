"""The driver's own files in the sweep's bucket, kept current while it runs.

With `storage: s3://…` or `gs://…`, Ray writes Tune's snapshot and the checkpoints to the bucket,
but the driver keeps its state, trial records, leaderboard and study in its local `runs/<name>`.
Losing the driver's machine must not lose the sweep: those files go to the bucket after every
trial ends and at least once every `every_s` seconds while trials run, so `tuner resume
s3://…/X` on another machine, with an empty local directory, goes on with exact trial counts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from tuner import layout, storage, study
from tuner.errors import first_line

log = logging.getLogger("tuner")
EVERY_S = 60.0


class Mirror:
    def __init__(self, sweep_dir: Path, location: str, sweep_id: str, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.sweep_dir, self.location, self.sweep_id = Path(sweep_dir), location, sweep_id
        self.enabled = storage.is_uri(location)
        self.every_s, self.clock = every_s, clock
        self.last = clock()
        self.changed: set[str] = set()  # trial records written since the last push

    def record_changed(self, trial_id: str) -> None:
        self.changed.add(trial_id)

    def tick(self) -> bool:
        """Push if the last push is `every_s` old; returns whether it pushed."""
        if not self.enabled or self.clock() - self.last < self.every_s:
            return False
        self.push()
        return True

    def snapshot(self) -> None:
        """At a Tune snapshot: push when mirrored, else refresh the sweep directory's study copy."""
        if self.enabled:
            self.push()
        else:
            study.save_copy(self.sweep_dir, self.location, self.sweep_id)

    def push(self) -> None:
        """Upload the state, the changed records, the leaderboard and a fresh study copy. A failed
        upload is a warning: the next one carries the same files."""
        if not self.enabled:
            return
        self.last = self.clock()
        changed, self.changed = self.changed, set()
        try:
            study.save_copy(self.sweep_dir, self.location, self.sweep_id)
            for name in (layout.SPEC_FILE, layout.STATE_FILE, layout.LEADERBOARD):
                if (self.sweep_dir / name).exists():
                    storage.upload(self.sweep_dir / name, storage.join(self.location, name))
            for trial_id in sorted(changed):
                self._push_record(trial_id)
        except OSError as exc:
            self.changed |= changed
            log.warning("storage: the driver's files did not reach %s (%s); trying again at the next trial end",
                        self.location, first_line(exc))

    def _push_record(self, trial_id: str) -> None:
        """A record where it is now: in trials/, or set aside in trials/lost/ (and so gone from trials/)."""
        name = f"{trial_id}.json"
        path = self.sweep_dir / layout.TRIALS_DIR / name
        remote = storage.join(self.location, layout.TRIALS_DIR, name)
        if path.exists():
            storage.upload(path, remote)
            return
        lost = self.sweep_dir / layout.TRIALS_DIR / layout.LOST_DIR / name
        if lost.exists():
            storage.upload(lost, storage.join(self.location, layout.TRIALS_DIR, layout.LOST_DIR, name))
            storage.remove(remote)

    def mark_all(self) -> None:
        """Every record (the lost ones too) goes with the next push."""
        folder = self.sweep_dir / layout.TRIALS_DIR
        if self.enabled and folder.is_dir():
            self.changed |= {p.stem for p in folder.glob("*.json")}
            self.changed |= {p.stem for p in (folder / layout.LOST_DIR).glob("*.json")}

    def push_all(self) -> None:
        """Every record, then the rest: at the start and the end of a run."""
        self.mark_all()
        self.push()


def pull(location: str, sweep_dir: Path) -> bool:
    """Fetch a sweep's driver files from its bucket into an empty local directory (resume on another
    machine). Returns whether the bucket holds a sweep."""
    sweep_dir = Path(sweep_dir)
    if not storage.exists(storage.join(location, layout.STATE_FILE)):
        return False
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name in (layout.SPEC_FILE, layout.STATE_FILE, layout.STUDY_DB, layout.LEADERBOARD):
        remote = storage.join(location, name)
        if storage.exists(remote):
            storage.download_file(remote, sweep_dir / name)
    trials = storage.join(location, layout.TRIALS_DIR)
    if storage.exists(trials):
        storage.download(trials, sweep_dir / layout.TRIALS_DIR)
    return True
