"""Promotion and export from a sweep's records, without running the sweep: trial records written
here, the untrained tiny model copied in as their checkpoints. The same stage at the end of real
sweeps is the integration tier's (tests/test_pipeline.py, tests/test_promote.py)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from tests.conftest import TINY
from tuner import constants as C
from tuner import data, model, promotion, records, results, tracking
from tuner.context import TrialContext
from tuner.errors import UserError
from tuner.records import TrialRecord
from tuner.spec import load_spec
from tuner.state import SweepState

TINY_MODEL = "builtin:tiny-gpt2"
PARAMS = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "num_train_epochs": 1, "warmup_ratio": 0.1,
          "gradient_accumulation_steps": 2, "weight_decay": 0.0}  # what a trial of the tiny preset samples


@pytest.fixture
def sweep(tmp_path):
    """A sweep's spec, its prepared data, and three ended trials: the best one's checkpoint gone,
    the next one's the tiny model, the third failed."""
    spec = load_spec(TINY, ["data.max_records=300", "data.block_size=32", "promote.num_prompts=2",
                            "promote.max_new_tokens=4", "promote.evaluate_base=false", "promote.top_k=1",
                            "search.baseline=null",
                            "tracking.wandb.mode=disabled", f"storage={tmp_path / 'tiny'}"])
    prepared = data.prepare(spec, spec.sweep_dir)
    shutil.copytree(model.resolve(TINY_MODEL), spec.sweep_dir / "tune" / "next" / "checkpoint_000004")
    for record in (TrialRecord("best", status=C.COMPLETED, params=PARAMS, best_metric=2.0,
                               best_checkpoint="tune/best/checkpoint_000004", best_step=4),
                   TrialRecord("next", status=C.COMPLETED, params=PARAMS, best_metric=2.5,
                               best_checkpoint="tune/next/checkpoint_000004", best_step=4),
                   TrialRecord("failed", status=C.FAILED, error="boom")):
        records.save(record, spec.sweep_dir)
    return spec, TrialContext(spec, prepared, model.resolve(TINY_MODEL))


def test_the_best_readable_checkpoint_is_promoted_and_exported_to_best(sweep, caplog):
    spec, ctx = sweep
    board = results.leaderboard(spec.sweep_dir, "min", spec.name)
    with caplog.at_level(logging.WARNING, logger="tuner"):
        result = promotion.promote_and_export(spec, ctx, board, tracking.Tracker(spec, say=lambda _: None))
    assert result.best is not None and result.best.trial_id == "next"
    assert "trial best is missing or unreadable" in caplog.text and "promoting the next best" in caplog.text
    final = json.loads(result.paths["final_eval"].read_text())
    assert final["trial_id"] == "next" and final["num_test_tokens"] > 0
    assert len(result.paths["samples"].read_text().splitlines()) == 2
    assert (result.paths["model"] / "config.json").is_file() and result.paths["config"].is_file()
    progress = SweepState(spec_hash="h", exported_trials=len(board))
    assert promotion.already_exported(spec, board, progress)  # a second run promotes nothing
    assert not promotion.already_exported(spec, board, SweepState(spec_hash="h"))


def test_no_readable_checkpoint_fails_the_sweep_naming_each(sweep):
    spec, ctx = sweep
    shutil.rmtree(spec.sweep_dir / "tune" / "next")
    board = results.leaderboard(spec.sweep_dir, "min", spec.name)
    with pytest.raises(promotion.SweepFailed, match=r"no readable checkpoint(.|\n)*best: (.|\n)*next: "):
        promotion.promote_and_export(spec, ctx, board, tracking.Tracker(spec, say=lambda _: None))


def test_export_of_one_trial_writes_exports_or_says_why_not(sweep):
    spec, _ = sweep
    out = promotion.export_trial(spec, "next")
    assert out == spec.sweep_dir / "exports" / "next" and (out / "model" / "config.json").is_file()
    with pytest.raises(UserError, match="--trial nope: no such trial .* its trials are best, failed, next"):
        promotion.export_trial(spec, "nope")
    with pytest.raises(UserError, match="--trial failed: it has no checkpoint to export"):
        promotion.export_trial(spec, "failed")
    with pytest.raises(UserError, match="--trial best: its checkpoint cannot be read"):
        promotion.export_trial(spec, "best")
