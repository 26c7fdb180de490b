"""The few places tuner reaches past Ray Tune's public API into its trial objects, kept together so
a Ray upgrade has one module to check (the resume, chaos and ledger tests exercise each of them;
the searcher's reach into OptunaSearch is in tuner/searcher.py).

- Registering a checkpoint with a restored trial, or dropping its checkpoints: Tune's snapshot can
  lag the trial's record (it is uploaded in the background), and Tune restores a trial from the
  checkpoint its snapshot names.
- Ending a trial now, without a retry: a trial hung in native code frees its GPU only when its
  process dies, and Tune's failure handling would start it again.
- ASHA's state, through the scheduler's own save and restore (Tune keeps none of its own).
- Ending the experiment as Tune's own stop signal does: its snapshot saved, its unfinished trials
  left to resume from their checkpoints (the driver's Ctrl-C, once the trials have checkpointed).
- The driver's AWS credentials kept out of the trial actors' runtime_env, which Ray logs in clear.
- Tune's snapshots on their schedule, not forced after every trial checkpoint (they grow with the
  sweep; the records say where each trial goes on from).

tests/test_tune_hooks.py touches each of these internals; pyproject.toml pins Ray to the minor
version they were tested on.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from tuner import layout, storage

log = logging.getLogger("tuner")


def checkpoint_index(path: str) -> int:
    """Tune numbers a trial's checkpoints checkpoint_000000, checkpoint_000001, … in order."""
    digits = path.rstrip("/").rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def catch_up(trial, latest: dict[str, Any], location: str) -> bool:
    """Give a restored trial the record's latest checkpoint where Tune's snapshot names an older one
    (or none): registered as Tune registers a checkpoint a trial saves, and Tune's checkpoint index
    moved past it so its next checkpoint takes a new directory. Returns whether it did."""
    ours = layout.resolve(latest["path"], location)
    theirs = trial.checkpoint.path if trial.checkpoint is not None else None
    if theirs is not None and checkpoint_index(theirs) >= checkpoint_index(ours):
        return False
    if not register(trial, latest, location):
        return False
    trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, checkpoint_index(ours) + 1)
    return True


def register(trial, latest: dict[str, Any], location: str) -> bool:
    """Register a recorded checkpoint ({"path": relative, "metrics": …}) with a Tune trial, as Tune
    does when a trial saves one: the trial restores from it when it starts."""
    from ray.train._internal.session import _TrainingResult

    path = layout.resolve(latest["path"], location)
    if not storage.exists(path):
        log.warning("trial %s: its checkpoint %s is gone; it goes on from the one before", trial.trial_id, path)
        return False
    fs_path = path.split("://", 1)[1] if "://" in path else path
    result = _TrainingResult(checkpoint=tune.Checkpoint(fs_path, trial.storage.storage_filesystem),
                             metrics=dict(latest["metrics"]))
    try:
        trial.on_checkpoint(result)
    except FileNotFoundError:  # an older one it then deletes was deleted by the dead driver already
        trial.invalidate_json_state()
        trial.run_metadata.invalidate_cache()
    return True


def forget_checkpoints(trial) -> None:
    """A restored trial that had ended after Tune's snapshot (its record says how) starts without
    restoring a checkpoint: its trainable only repeats how it ended, and the checkpoints Tune's
    snapshot names may have been pruned since."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    metadata = trial.run_metadata
    metadata.checkpoint_manager = _CheckpointManager(metadata.checkpoint_manager.checkpoint_config)
    trial.invalidate_json_state()
    metadata.invalidate_cache()


def end_now(trial) -> None:
    """Kill a running trial's actor, with no retry: Tune reports the trial failed."""
    actor = trial.temporary_state.ray_actor
    trial.max_failures = 0  # Tune's failure handling would otherwise start it again
    if actor is not None:
        ray.kill(actor, no_restart=True)


def end_experiment() -> None:
    """Stop Tune's loop after this step the way its stop signal does (Tune's SIGUSR1 handler, which
    `tune.run` installs in the main thread): the experiment's snapshot is saved, and its running
    trials stay unfinished there, so a restore starts them again from their latest checkpoints."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler):  # Tune installed none (not in the main thread): stop at once instead
        raise KeyboardInterrupt
    handler(signal.SIGUSR1, None)


def scheduler_state(scheduler) -> bytes | None:
    """The scheduler's state through its own save (ASHA has one; FIFO keeps none)."""
    from ray.tune.schedulers import TrialScheduler

    if scheduler is None or type(scheduler).save is TrialScheduler.save:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        scheduler.save(os.path.join(tmp, "scheduler.pkl"))
        return Path(tmp, "scheduler.pkl").read_bytes()


def restore_scheduler(scheduler, saved: bytes | None) -> None:
    if scheduler is None or saved is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "scheduler.pkl").write_bytes(saved)
        scheduler.restore(os.path.join(tmp, "scheduler.pkl"))


# What Ray Tune copies from the driver's environment into each trial actor's runtime_env; Ray's
# runtime-env agent then logs the runtime_env, values and all, in every node's session logs.
CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_runtime_env() -> None:
    """Tune propagates the driver's AWS credentials to its trial actors through their runtime_env,
    which Ray logs in clear. Trials get credentials from their own node's environment instead (a
    local runtime's workers inherit the driver's; a cluster's nodes have their own, see cluster.yaml)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_VARS  # a set, as Ray's


def snapshot_on_schedule() -> None:
    """Tune forces a snapshot of the whole experiment once a trial has saved `num_to_keep`
    checkpoints since the last one, so that a snapshot never names a checkpoint Tune has deleted:
    with num_to_keep=1, after every report that carries a checkpoint. A snapshot holds every trial's
    state and the searcher's, so the driver's work per report grew with the sweep (at 400 trials,
    most of the driver's time went to snapshots). tuner does not need them: each trial's record holds
    its latest checkpoint, and a restore brings the trial up to it (`catch_up`). Tune's own schedule
    remains: a snapshot every 10 s at least, or 19 times as long as one takes (5% of the time)."""
    from ray.tune.execution.tune_controller import TuneController

    create = TuneController._create_checkpoint_manager
    if getattr(create, "_tuner", False):
        return

    def on_schedule(self):
        manager = create(self)
        manager._sync_every_n_trial_checkpoints = None  # Tune's own value when num_to_keep is None
        return manager

    # Marks on the patch: a second call leaves it be, and a test restores Tune's own from `_stock`.
    on_schedule._tuner = True  # type: ignore[attr-defined]  # a function's own attribute: no type for it
    on_schedule._stock = create  # type: ignore[attr-defined]
    TuneController._create_checkpoint_manager = on_schedule  # type: ignore[method-assign]  # the patch itself
