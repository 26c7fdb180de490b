"""The ledger's watch over running trials: a trial that goes silent is ended as `stalled`, its
resources freed for the next one, its checkpoint kept; the sweep goes on."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import LIGHT_PROMOTE, TINY
from tuner import constants as C
from tuner import records, study

pytestmark = pytest.mark.integration


def silent_after_one_report(config, report):
    """The first trial reports once, with a checkpoint, then hangs; the others run 4 steps."""
    from ray import tune

    from tuner import model

    claim = Path(tune.get_context().get_trial_dir()).parent / "stall.claim"
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
        stalls = True
    except FileExistsError:
        stalls = False
    for step in range(1, 5):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(model.resolve("builtin:tiny-gpt2"), tmp, dirs_exist_ok=True)
            report({"eval_loss": 5.0 - step / 10, "tokens_seen": 100 * step, "step": step}, tmp)
        if stalls:
            time.sleep(3600)


def test_a_silent_trial_ends_as_stalled_and_the_sweep_goes_on(ray_runtime, tmp_path):
    from tuner import run_sweep

    sweep_dir = tmp_path / "stall"
    result = run_sweep(TINY, name="stall", trial_fn=silent_after_one_report, overrides=[
        f"storage={sweep_dir}", "search.num_samples=2", "search.max_concurrent_trials=1", "search.baseline=null",
        "search.stall_timeout=6s", "scheduler=none", "data.max_records=300", "tracking.wandb.mode=disabled",
        *LIGHT_PROMOTE])
    found = {r.status: r for r in records.load_all(sweep_dir)}
    assert set(found) == {C.STALLED, C.COMPLETED}
    stalled = found[C.STALLED]
    assert "no report for" in stalled.error and "search.stall_timeout (6 s)" in stalled.error
    assert stalled.reports == 1 and stalled.retries == 0  # ended, not retried
    assert (sweep_dir / stalled.best_checkpoint / "config.json").is_file()  # still promotable
    assert found[C.COMPLETED].started_at >= stalled.ended_at - 1  # its one slot was freed for the next
    states = {t.user_attrs["ray_trial_id"]: t.state for t in optuna.load_study(
        study_name="stall", storage=study.url(sweep_dir / "optuna.db")).trials}
    assert states == {stalled.trial_id: optuna.trial.TrialState.FAIL,
                      found[C.COMPLETED].trial_id: optuna.trial.TrialState.COMPLETE}
    assert result.best.trial_id == found[C.COMPLETED].trial_id
