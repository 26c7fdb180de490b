"""The ledger: the records it keeps of each trial's life, with Tune's trials faked (fast tier), and
its watch over running trials in a real sweep: a trial that goes silent is ended as `stalled`, its
resources freed for the next one, its checkpoint kept; the sweep goes on (integration tier)."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from tests.conftest import LIGHT_PROMOTE, TINY
from tuner import constants as C
from tuner import records, study
from tuner.ledger import TrialLedger
from tuner.plan import make_plan
from tuner.spec import load_spec


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


@pytest.mark.integration
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


# ---------------------------------------------------------------------------------------------
# A trial's life through the ledger, Tune's trials faked (Ray's own callback tests feed them so).


@pytest.fixture
def ledger(tmp_path):
    spec = load_spec(TINY, [f"storage={tmp_path}", "promote.keep_best=1", "promote.top_k=1"])
    said: list[str] = []
    return TrialLedger(spec, make_plan(spec, train_tokens=100_000), say=said.append, sweep_id="s1"), said


def _trial(ledger: TrialLedger, trial_id: str) -> SimpleNamespace:
    """A Tune trial as the callbacks see it, started, with its log file where the trainable writes it."""
    folder = ledger.sweep_dir / "tune" / trial_id
    (ledger.sweep_dir / "logs").mkdir(exist_ok=True)
    (ledger.sweep_dir / "logs" / f"{trial_id}.log").write_text("training...\n")
    trial = SimpleNamespace(trial_id=trial_id, config={"learning_rate": 1e-3}, path=str(folder), last_result={},
                            status="RUNNING", error_file=None, error_msg=None)
    ledger.on_trial_start(0, [trial], trial)
    return trial


def _report(ledger: TrialLedger, trial, step: int, loss: float, checkpoint: bool = True, **extra) -> None:
    """One report, and the checkpoint Tune keeps with it."""
    result = {C.STEP: step, C.TOKENS_SEEN: step * 1024, C.EVAL_LOSS: loss, C.TRIAL_STATUS: C.RUNNING,
              C.FINAL: False, "time_total_s": float(step), **extra}
    trial.last_result = result
    ledger.on_trial_result(0, [trial], trial, result)
    if checkpoint:
        path = Path(trial.path) / f"checkpoint_{step:06d}"
        path.mkdir(parents=True)
        ledger.on_checkpoint(0, [trial], trial, SimpleNamespace(path=str(path)))


def test_a_trial_stopped_by_asha_is_recorded_with_its_best_checkpoint_and_rung(ledger):
    ledger, said = ledger
    trial = _trial(ledger, "t1")
    assert records.load_all(ledger.sweep_dir)[0].status == C.RUNNING  # on disk from its start
    _report(ledger, trial, 4, 3.0, **{C.MICRO_BATCH: 8})
    # Tune's `done` without the trial's final report: ASHA stopped it, past its second rung
    second_rung = ledger.plan.rungs[1]
    _report(ledger, trial, 8, 3.5, done=True, **{C.TOKENS_SEEN: second_rung + 100})
    assert trial.last_result[C.TRIAL_STATUS] == C.STOPPED_ASHA  # the searcher reads the same status
    ledger.on_trial_complete(0, [trial], trial)
    (record,) = records.load_all(ledger.sweep_dir)
    assert record.status == C.STOPPED_ASHA and record.rung == second_rung
    assert (record.reports, record.best_metric, record.best_step) == (2, 3.0, 4)
    assert record.best_checkpoint == "tune/t1/checkpoint_000004" and record.micro_batch == 8
    assert sorted(p.name for p in Path(trial.path).iterdir()) == ["checkpoint_000004"]  # the best alone
    assert "stopped early by ASHA" in (ledger.sweep_dir / "logs" / "t1.log").read_text().splitlines()[-1]
    with open(ledger.sweep_dir / "leaderboard.csv") as f:
        assert [row["trial_id"] for row in csv.DictReader(f)] == ["t1"]
    assert said[-1].startswith("trial t1: stopped_asha") and "1/" in said[-1]


def test_a_closing_copy_after_a_resume_records_where_it_went_on_and_completes_it(ledger):
    """A trial resumed from the checkpoint of its last report sends only a closing copy of it: the
    resume is recorded at that step, no report counted again, and the trial completes."""
    ledger, _ = ledger
    trial = _trial(ledger, "t1")
    _report(ledger, trial, 4, 3.0)
    ledger.records["t1"].awaiting_start = True  # as a driver's restore leaves a trial Tune goes on with
    _report(ledger, trial, 4, 3.0, checkpoint=False, **{C.START_STEP: 4, C.TRIAL_STATUS: C.COMPLETED,
                                                        C.FINAL: True, C.REPEAT: True})
    ledger.on_trial_complete(0, [trial], trial)
    (record,) = records.load_all(ledger.sweep_dir)
    assert record.resumed_from_steps == [4] and record.reports == 1 and record.status == C.COMPLETED


def test_a_crashed_trial_retries_from_its_checkpoint_and_counts_no_report_twice(ledger):
    ledger, said = ledger
    trial = _trial(ledger, "t1")
    _report(ledger, trial, 4, 3.0)
    trial.error_msg = "RuntimeError: worker died"
    ledger.on_trial_recover(0, [trial], trial)
    assert "crashed (RuntimeError: worker died); retry 1" in said[-1]
    _report(ledger, trial, 4, 3.0, checkpoint=False, **{C.START_STEP: 4})  # redone after the checkpoint
    _report(ledger, trial, 8, 2.5, checkpoint=False)
    ledger.on_trial_error(0, [trial], trial)
    (record,) = records.load_all(ledger.sweep_dir)
    assert record.retries == 1 and record.resumed_from_steps == [4] and record.reports == 2
    assert [h[C.STEP] for h in record.history] == [4, 8]
    assert record.status == C.FAILED and record.error == "RuntimeError: worker died"
    assert record.best_metric == 2.5 and record.best_checkpoint == "tune/t1/checkpoint_000004"


def test_only_keep_best_checkpoints_stay_across_the_sweep(ledger):
    ledger, _ = ledger  # promote.keep_best=1
    for trial_id, loss in [("a", 3.0), ("b", 2.0), ("c", 4.0)]:
        trial = _trial(ledger, trial_id)
        _report(ledger, trial, 4, loss, **{C.FINAL: True, C.TRIAL_STATUS: C.COMPLETED})
        ledger.on_trial_complete(0, [trial], trial)
    found = {r.trial_id: r for r in records.load_all(ledger.sweep_dir)}
    assert {t for t, r in found.items() if not r.checkpoint_deleted} == {"b"}
    assert [t for t in "abc" if (ledger.sweep_dir / "tune" / t / "checkpoint_000004").exists()] == ["b"]
