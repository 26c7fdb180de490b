"""The sweep directory: the name of everything in it, where a stored path points, and how a file in
it is written.

Every file and folder of a sweep is named here, once. Paths kept inside the sweep's own files
(records, state, the exported config) are stored relative to the sweep, so a directory that is
copied, moved or synced elsewhere still points into itself. Every file the driver writes goes
through `atomic_path`: written beside its target under a temporary name, then renamed over it, so
a process killed at any instant leaves each file whole, old or new, and a reader (`status`, a
dashboard on the study copy) never sees half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, overload

SPEC_FILE = "spec.yaml"  # the resolved spec the sweep runs under
STATE_FILE = "sweep.json"  # the sweep's id and its Tune experiments (see `state`)
LOCK_FILE = "driver.lock"  # who drives the sweep now (see `lock`)
TRIALS_DIR = "trials"  # one JSON record per trial (see `records`)
LOST_DIR = "lost"  # under TRIALS_DIR: trials a dead driver had started after Tune's last snapshot
LOGS_DIR = "logs"  # one log file per trial
STUDY_DB = "optuna.db"  # a consistent copy of the live Optuna study (see `study`)
LEADERBOARD = "leaderboard.csv"
BEST_DIR = "best"  # the promoted trial: config.yaml, model/, final_eval.json, samples.jsonl
EXPORTS_DIR = "exports"  # `tuner export --trial ID`: exports/ID/ holds that trial's config.yaml and model/
REPORT_FILE = "report.html"
SWEEP_LOG = "sweep.log"  # every log line of the sweep's drivers, at debug level
WANDB_DIR = "wandb"  # offline W&B runs, for `tuner sync`
DATA_DIR = "data"  # prepared data, one folder per fingerprint
DATA_SUMMARY = "summary.json"  # what preparing did: in each prepared folder, and the sweep's in data/
TRAIN_DIR = "train"  # Ray Train's runs of data-parallel trials, one per trial
PROMOTED_DIR = "promoted"  # checkpoints downloaded from a bucket for the final evaluation
LR_FIND_JSON = "lr_find.json"  # `tuner lr-find`: the range test's curve and suggested bounds
LR_FIND_SVG = "lr_find.svg"  # its plot of loss against learning rate
LR_FIND_PNG = "lr_find.png"  # the same plot as a PNG, with --png
FIRST_EXPERIMENT = "tune"  # Ray Tune's experiment directory of the first run; then tune-2, tune-3, …

# What the driver keeps current in a bucket while the sweep runs: enough for another machine to go
# on with it (`resume s3://…`). Tune's snapshot and the checkpoints are written there by Ray.
DRIVER_FILES = (SPEC_FILE, STATE_FILE, TRIALS_DIR, STUDY_DB, LEADERBOARD)

_TMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------------------------
# Writing: one writer for every file of the sweep.


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without
    an error, removed otherwise. The rename is atomic on POSIX filesystems."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the content is on disk before the name points at it
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh directory to fill; when the block ends, it takes `target`'s place in one step (an
    atomic exchange where the kernel has one), so `target` is always the old whole or the new."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.{os.getpid()}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if target.exists() and _exchange(staging, target):
            shutil.rmtree(staging)  # now the old content
        else:
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            if target.exists():
                os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_temporaries(folder: Path) -> None:
    """What a killed writer left: its temporary files and staging folders (never a real file)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(".") and path.name.endswith((_TMP_SUFFIX, ".staging", ".old")):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Stored paths: relative to the sweep, resolved against wherever it is now.


@overload
def relative(path: str | Path, base: str | Path) -> str: ...
@overload
def relative(path: None, base: str | Path) -> None: ...
@overload
def relative(path: str | Path | None, base: str | Path) -> str | None: ...


def relative(path: str | Path | None, base: str | Path) -> str | None:
    """`path` as stored in the sweep's files: relative to `base` (the sweep directory, or its bucket
    URI) when it lies inside it, else unchanged."""
    if path is None:
        return None
    path, base = str(path), str(base).rstrip("/")
    if path == base:
        return "."
    return path[len(base) + 1:] if path.startswith(base + "/") else path


@overload
def resolve(stored: str, base: str | Path) -> str: ...
@overload
def resolve(stored: None, base: str | Path) -> None: ...
@overload
def resolve(stored: str | None, base: str | Path) -> str | None: ...


def resolve(stored: str | None, base: str | Path) -> str | None:
    """A stored path made usable: joined onto `base` unless it is absolute or a URI already."""
    if stored is None:
        return None
    if "://" in stored or os.path.isabs(stored):
        return stored
    base = str(base).rstrip("/")
    return base if stored == "." else f"{base}/{stored}"


def experiment_names(count: int) -> list[str]:
    """Tune's experiment directories of a sweep's first `count` experiments."""
    return [FIRST_EXPERIMENT if n == 1 else f"{FIRST_EXPERIMENT}-{n}" for n in range(1, count + 1)]
