"""Which checkpoints a sweep keeps: an ended trial its best alone, the sweep its `keep` best and the
baseline's, a lost trial's folder what it holds. On local folders laid out as Tune lays them out."""

from __future__ import annotations

from pathlib import Path

from tuner import constants as C
from tuner import retention
from tuner.records import TrialRecord


def _trial_folder(location: Path, trial_id: str, steps: int = 3) -> TrialRecord:
    """Tune's folder of one trial with `steps` checkpoints; its record names the second its best."""
    for n in range(steps):
        (location / "tune" / trial_id / f"checkpoint_{n:06d}").mkdir(parents=True)
    (location / "tune" / trial_id / "result.json").write_text("{}")
    return TrialRecord(trial_id, status=C.COMPLETED, best_metric=2.0, trial_dir=f"tune/{trial_id}",
                       best_checkpoint=f"tune/{trial_id}/checkpoint_000001")


def _left(location: Path, trial_id: str) -> list[str]:
    return sorted(p.name for p in (location / "tune" / trial_id).iterdir())


def test_an_ended_trial_keeps_its_best_checkpoint_alone(tmp_path):
    record = _trial_folder(tmp_path, "a")
    retention.prune_ended(record, str(tmp_path))
    assert _left(tmp_path, "a") == ["checkpoint_000001", "result.json"]
    assert not record.checkpoint_deleted


def test_a_trial_that_cannot_be_promoted_keeps_no_checkpoint(tmp_path):
    record = _trial_folder(tmp_path, "a")
    record.status = C.DIVERGED
    retention.prune_ended(record, str(tmp_path))
    assert _left(tmp_path, "a") == ["result.json"] and record.checkpoint_deleted


def test_a_lost_trials_folder_that_another_went_on_from_is_left_whole(tmp_path):
    lost = _trial_folder(tmp_path, "lost")
    successor = _trial_folder(tmp_path, "b")
    successor.best_checkpoint = lost.best_checkpoint  # its best came with the lost trial's reports
    retention.prune_ended(successor, str(tmp_path), skip=["tune/lost"])
    assert _left(tmp_path, "lost") == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002",
                                       "result.json"]
    assert _left(tmp_path, "b") == ["result.json"]  # its own checkpoints: none is its best


def test_beyond_keep_spares_the_best_the_baseline_and_the_front():
    found = [TrialRecord(t, status=C.COMPLETED, best_metric=m, best_checkpoint=f"tune/{t}/checkpoint_000000",
                         best_checkpoint_metric=m) for t, m in [("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 4.0)]]
    found.append(TrialRecord("gone", status=C.COMPLETED, best_metric=0.5, best_checkpoint="x",
                             checkpoint_deleted=True))
    found.append(TrialRecord("failed", status=C.FAILED, best_metric=0.1, best_checkpoint="y"))
    by_id = {r.trial_id: r for r in found}
    assert [r.trial_id for r in retention.beyond_keep(found, 2, "min", None)] == ["a", "d"]
    assert [r.trial_id for r in retention.beyond_keep(found, 2, "max", None)] == ["c", "b"]
    assert [r.trial_id for r in retention.beyond_keep(found, 2, "min", by_id["d"])] == ["a"]
    assert [r.trial_id for r in retention.beyond_keep(found, 2, "min", None, front=["a"])] == ["d"]


def test_dropping_a_checkpoint_deletes_it_and_says_so(tmp_path):
    record = _trial_folder(tmp_path, "a")
    retention.drop_checkpoint(record, str(tmp_path))
    assert "checkpoint_000001" not in _left(tmp_path, "a") and record.checkpoint_deleted
