"""Which checkpoints a sweep keeps on disk: only those that can still matter.

While a trial runs, Tune keeps its latest checkpoint (to resume from) and its best. Once it ends,
only its best stays (none if it cannot be promoted); sweep-wide, only the best `keep` ended trials
keep theirs, plus the baseline trial's, which the final evaluation scores beside the winner. Every
path is resolved against the sweep's location as it is now: a copied sweep never deletes in the
original.
"""

from __future__ import annotations

from typing import Iterable

from tuner import layout, records, storage
from tuner.records import TrialRecord


def prune_ended(record: TrialRecord, location: str, skip: Iterable[str] = ()) -> None:
    """An ended trial keeps its best checkpoint only, and none if it cannot be promoted. `skip`:
    folders not this trial's to prune (a lost trial it continued from keeps what it had)."""
    best = layout.resolve(record.best_checkpoint, location) if record.promotable else None
    folders = {layout.resolve(record.trial_dir, location)} if record.trial_dir is not None else set()
    if record.best_checkpoint:
        folders.add(layout.resolve(record.best_checkpoint, location).rstrip("/").rsplit("/", 1)[0])
    skipped = {layout.resolve(s, location).rstrip("/") for s in skip}
    for folder in folders - skipped:
        for checkpoint in storage.subdirs(folder, "checkpoint_"):
            if checkpoint.rstrip("/") != (best or "").rstrip("/"):
                storage.remove(checkpoint)
    if record.best_checkpoint and best is None:
        record.checkpoint_deleted = True


def beyond_keep(found: Iterable[TrialRecord], keep: int, mode: str,
                baseline: TrialRecord | None, front: Iterable[str] = ()) -> list[TrialRecord]:
    """Ended trials whose best checkpoint can no longer be among the `keep` best (the baseline's is
    kept regardless, and with several objectives those of the Pareto `front`'s trials, which
    `promote.pick` and `export --trial` may take): their checkpoints can go."""
    spared = set(front)
    kept = [r for r in found if r.promotable and r is not baseline and r.best_checkpoint
            and not r.checkpoint_deleted]
    return [r for r in records.ranked(kept, mode, by_checkpoint=True)[keep:] if r.trial_id not in spared]


def drop_checkpoint(record: TrialRecord, location: str) -> None:
    if record.best_checkpoint is not None:
        storage.remove(layout.resolve(record.best_checkpoint, location))
    record.checkpoint_deleted = True
