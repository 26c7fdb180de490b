"""One record per trial: what it was given, what it reported, where its checkpoints are, how it ended.

The ledger writes a trial's record at each of its events; `status`, the leaderboard, the report,
promotion and resume read it. It is a typed dataclass with a schema version, loaded and saved
here only, atomically. Checkpoint paths are stored relative to the sweep's location (its directory,
or its bucket) and the log file relative to the sweep directory, so a moved or copied sweep still
points into itself. Which of two results is better is decided here once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeGuard

from tuner import constants as C
from tuner import layout
from tuner.errors import UserError

SCHEMA = 2  # 1: before the schema field (absolute paths); 2: paths relative to the sweep


@dataclass
class TrialRecord:
    trial_id: str
    experiment: str = layout.FIRST_EXPERIMENT  # the Tune experiment that ran it
    status: str = C.PENDING  # one of C.UNFINISHED, C.STATUSES
    params: dict[str, Any] = field(default_factory=dict)  # the sampled hyperparameters
    reports: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per report: C.REPORT_KEYS
    best_metric: float | None = None  # the search metric of its best report (with a checkpoint or not)
    best_eval_loss: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None  # relative to the sweep's location
    best_checkpoint_metric: float | None = None  # the metric of the report that checkpoint came with
    best_checkpoint_step: int | None = None  # and its step (a user's loop may report without saving)
    checkpoint_deleted: bool = False  # its best checkpoint was removed (it can no longer win)
    checkpoint_step: int | None = None  # the step of its latest checkpoint: where a resume goes on
    latest_checkpoint: dict[str, Any] | None = None  # {"path": relative, "metrics": what Tune registered}
    tokens_seen: int = 0
    train_seconds: float = 0.0
    run_seconds: float = 0.0  # time it ran, over all its runs, up to its last event (trial_timeout)
    timing: dict[str, float] | None = None  # this run's time by part (C.TIME_KEYS)
    rung: int | None = None  # the ASHA rung (tokens) it was stopped at
    error: str | None = None
    crashes: list[str] = field(default_factory=list)
    retries: int = 0  # crashes Tune retried from the latest checkpoint
    resumes: int = 0  # drivers that died while it ran, and the ones after that resumed it
    resumed_from_steps: list[int] = field(default_factory=list)  # one per crash or resume
    restarted_from_step_0: int = 0  # restarts that had no checkpoint to go on from
    continues: str | None = None  # a lost trial whose checkpoint this one went on from
    micro_batch: int | None = None  # what it trained with (an OOM halves it)
    accumulation: int | None = None
    node_id: str | None = None
    gpu_ids: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    trial_dir: str | None = None  # Tune's trial directory, relative to the sweep's location
    log_file: str | None = None  # relative to the sweep directory
    awaiting_start: bool = False  # restarted; its first report says where it went on from
    pending_value: float | None = None  # the metric of a report whose checkpoint is not yet known
    schema: int = SCHEMA

    @property
    def ended(self) -> bool:
        return self.status not in C.UNFINISHED

    @property
    def promotable(self) -> bool:
        """It trained normally up to its last report, and its best result is a finite number."""
        return self.status in C.PROMOTABLE and finite(self.best_metric)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(TrialRecord)}


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# Better: the one comparison.


def better(value: float | None, than: float | None, mode: str) -> bool:
    """Whether `value` beats `than` under `mode` ("min" or "max"); a non-finite value never does,
    and any finite value beats none."""
    if not finite(value):
        return False
    if not finite(than):
        return True
    return value < than if mode == "min" else value > than


def rank_key(record: TrialRecord, mode: str, by_checkpoint: bool = False) -> tuple:
    """Sort key, best first: promotable trials by their best metric (or, to choose a checkpoint, by
    their best checkpoint's), then everything else."""
    value = checkpoint_metric(record) if by_checkpoint else record.best_metric
    if not record.promotable or not finite(value):
        return (1, 0.0)
    return (0, value if mode == "min" else -value)


def ranked(found: Iterable[TrialRecord], mode: str, by_checkpoint: bool = False) -> list[TrialRecord]:
    return sorted(found, key=lambda r: rank_key(r, mode, by_checkpoint))


def checkpoint_metric(record: TrialRecord) -> float | None:
    """The metric its best checkpoint was saved with (a record from before these were kept apart:
    its best report's, which every checkpointed report then was)."""
    if record.best_checkpoint_metric is not None:
        return record.best_checkpoint_metric
    return record.best_metric if record.best_checkpoint else None


def checkpoint_step(record: TrialRecord) -> int | None:
    """The step its best checkpoint was saved at (see `checkpoint_metric`)."""
    if record.best_checkpoint_step is not None:
        return record.best_checkpoint_step
    return record.best_step if record.best_checkpoint else None


def best_of(found: Iterable[TrialRecord], mode: str) -> TrialRecord | None:
    """The trial with the best finite metric so far, whatever its status."""
    top = None
    for record in found:
        if better(record.best_metric, top.best_metric if top else None, mode):
            top = record
    return top


# ---------------------------------------------------------------------------------------------
# Disk: one load and one save path.


def folder(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / layout.TRIALS_DIR


def path_of(sweep_dir: Path, trial_id: str) -> Path:
    return folder(sweep_dir) / f"{trial_id}.json"


def save(record: TrialRecord, sweep_dir: Path) -> None:
    layout.write_json(path_of(sweep_dir, record.trial_id), record.to_dict())


def load(path: Path, location: str | None = None, sweep_dir: Path | None = None) -> TrialRecord:
    """A record from its file; one written before schema 2 has its absolute paths made relative
    (to `location` and `sweep_dir`, where given). An unreadable one is refused by name."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable trial record ({type(exc).__name__}: {exc}); restore it from a "
                        "copy of the sweep, or move it out of trials/ to drop that trial") from None
    if not isinstance(raw, dict) or "trial_id" not in raw:
        raise UserError(f"{path}: not a trial record (no trial_id); move it out of trials/")
    if raw.get("schema", 1) > SCHEMA:
        raise UserError(f"{path}: written by a newer tuner (record schema {raw['schema']}, this one reads "
                        f"up to {SCHEMA}); upgrade tuner to go on with this sweep")
    if raw.get("schema", 1) < 2:
        raw = _upgrade(raw, location, sweep_dir)
    return TrialRecord(**{k: v for k, v in raw.items() if k in _FIELDS})


def _upgrade(raw: dict[str, Any], location: str | None, sweep_dir: Path | None) -> dict[str, Any]:
    """Schema 1 → 2: absolute paths inside the sweep become relative; missing lists become empty."""
    raw = dict(raw)
    for key in ("best_checkpoint", "trial_dir"):
        if location and raw.get(key):
            raw[key] = layout.relative(raw[key], location)
    if location and isinstance(raw.get("latest_checkpoint"), dict):
        raw["latest_checkpoint"] = {**raw["latest_checkpoint"],
                                    "path": layout.relative(raw["latest_checkpoint"]["path"], location)}
    if sweep_dir and raw.get("log_file"):
        raw["log_file"] = layout.relative(raw["log_file"], sweep_dir)
    for key in ("crashes", "resumed_from_steps", "history"):
        raw[key] = raw.get(key) or []
    raw["schema"] = SCHEMA
    return raw


def load_all(sweep_dir: Path, location: str | None = None) -> list[TrialRecord]:
    """Every trial record of the sweep (not the lost ones), by trial id."""
    sweep_dir = Path(sweep_dir)
    base = folder(sweep_dir)
    if not base.is_dir():
        return []
    return [load(p, location or str(sweep_dir), sweep_dir) for p in sorted(base.glob("*.json"))]


def load_lost(sweep_dir: Path) -> list[TrialRecord]:
    lost = folder(sweep_dir) / layout.LOST_DIR
    return [load(p, str(sweep_dir), sweep_dir) for p in sorted(lost.glob("*.json"))] if lost.is_dir() else []


def set_aside(record: TrialRecord, sweep_dir: Path) -> None:
    """Move an unfinished record to trials/lost/ (kept whole, status `lost`)."""
    if record.ended:
        raise ValueError(f"trial {record.trial_id} ended ({record.status}): a finished record is never moved")
    record.status = C.LOST
    layout.write_json(folder(sweep_dir) / layout.LOST_DIR / f"{record.trial_id}.json", record.to_dict())
    path_of(sweep_dir, record.trial_id).unlink(missing_ok=True)


def same_params(params: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether `params` holds every value of `other` (numbers compared to rounding)."""
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        return a == b
    return all(key in params and same(params[key], value) for key, value in other.items())
