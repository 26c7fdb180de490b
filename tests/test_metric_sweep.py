"""Whole sweeps that optimise what the task cares about: a generation metric (through the CLI), a
metric_fn from Python, and a bad metric_fn that fails its trials, not the sweep."""

from __future__ import annotations

import csv
import json

import pytest

from tests import metric_helpers
from tests.conftest import TINY
from tuner import constants as C
from tuner import records

pytestmark = pytest.mark.integration

# Small: 3 trials of one short epoch, a few prompts of a few tokens at each report.
SMALL = ["data.max_records=600", "train.report_every_tokens=8192", "scheduler.grace_period=8192",
         "search.n_startup_trials=2",
         "search.space.num_train_epochs={type: int, low: 1, high: 1}", "search.metric_sample.num_prompts=4",
         "promote.num_prompts=4", "promote.evaluate_base=false",
         "tracking.wandb.mode=disabled"]


# Every searched field of the tiny preset, for the enqueued configs.
FIXED = ("learning_rate: 1.0e-3, per_device_train_batch_size: 8, num_train_epochs: 1, warmup_ratio: 0.0, "
         "gradient_accumulation_steps: 1, weight_decay: 0.0")


def _leaderboard(sweep_dir) -> list[dict[str, str]]:
    with open(sweep_dir / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def _sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def test_a_sweep_maximises_a_generation_metric(ray_runtime, tmp_path, capsys):
    """search.metric: eval_rougeL (mode max): every report carries it, the leaderboard ranks by it,
    promote.top_k re-ranks by it on a larger validation sample, and the final evaluation shows ROUGE."""
    import launch

    sweep_dir = tmp_path / "rouge"
    code = launch.main(["sweep", str(TINY), "--name", "rouge", *_sets(*SMALL, "search.num_samples=3",
                        "search.metric_sample.num_prompts=8", "search.metric=eval_rougeL", "search.mode=max",
                        "promote.top_k=2", f"storage={sweep_dir}")])
    assert code == 0
    found = records.load_all(sweep_dir)
    for record in found:
        assert record.history and all(0.0 <= h["eval_rougeL"] <= 1.0 for h in record.history)
        if record.promotable:
            assert record.best_metric == max(h["eval_rougeL"] for h in record.history)
    rows = _leaderboard(sweep_dir)
    ranked = [float(row["best_metric"]) for row in rows if row["status"] in C.PROMOTABLE]
    assert ranked == sorted(ranked, reverse=True)  # best (highest ROUGE-L) first
    final = json.loads((sweep_dir / "best" / "final_eval.json").read_text())
    selection = final["selection"]
    assert selection["metric"] == "eval_rougeL" and selection["prompts"] == 32  # 4 × the search's 8 prompts
    scored = {c["trial_id"]: c["validation_metric"] for c in selection["candidates"]}
    assert final["trial_id"] == selection["chosen"] == max(scored, key=scored.get)
    assert {"perplexity", "bleu", "rouge1", "rouge2", "rougeL"} <= set(final["tuned"])
    tuned = next(r for r in found if r.trial_id == final["trial_id"])
    assert final["search_eval_rougeL"] == records.checkpoint_metric(tuned)
    assert "ROUGE-L" in capsys.readouterr().err or "ROUGE-L" in (sweep_dir / "sweep.log").read_text()
    report = (sweep_dir / "report.html").read_text()
    assert "by eval_rougeL on 32 validation prompts" in report


def test_a_sweep_optimises_a_metric_fn_from_python(ray_runtime, tmp_path):
    """run_sweep(metric_fn=...): its dict's keys are reported with the eval_ prefix, search.metric
    ranks, promotion re-ranks and picks by it, and the final evaluation shows it beside BLEU and ROUGE."""
    from tuner import run_sweep

    result = run_sweep(TINY, name="own-metric", metric_fn=metric_helpers.token_accuracy, overrides=[
        *SMALL, "search.num_samples=2", "search.metric=eval_token_accuracy", "search.mode=max", "promote.top_k=2",
        f"storage={tmp_path / 'own'}"])
    found = records.load_all(result.sweep_dir)
    assert all(h["eval_token_accuracy"] is not None and h["eval_reference_tokens"] == 4 * 16
               for r in found for h in r.history)
    best = max((r for r in found if r.promotable), key=lambda r: records.checkpoint_metric(r))
    selection = result.final_eval["selection"]
    assert selection["metric"] == "eval_token_accuracy"
    scored = {c["trial_id"]: c["validation_metric"] for c in selection["candidates"]}
    assert result.best.trial_id == max(scored, key=scored.get)
    assert selection["search_winner"] == best.trial_id
    tuned = result.final_eval["tuned"]
    assert 0.0 <= tuned["token_accuracy"] <= 1.0 and tuned["reference_tokens"] == 4 * 32  # the test prompts, m=32
    assert "token_accuracy" in result.final_eval["baseline"] and result.final_eval["custom_metrics"] == [
        "reference_tokens", "token_accuracy"]
    assert result.leaderboard[0]["trial_id"] == best.trial_id
    log = (result.sweep_dir / "sweep.log").read_text()
    assert " reference_tokens  token_accuracy" in log  # the A/B table's columns
    assert "token_accuracy" in (result.sweep_dir / "report.html").read_text()


def test_a_bad_metric_fn_fails_its_trials_and_the_sweep_goes_on(ray_runtime, tmp_path):
    """A metric_fn that returns NaN for one trial (frozen embeddings) and a number for the other: the
    first ends failed with the message in its record and log, once (no retry); the other is promoted."""
    from tuner import run_sweep

    result = run_sweep(TINY, name="bad-metric", overrides=[
        *SMALL, "search.num_samples=2", "search.metric=eval_token_accuracy", "search.mode=max",
        "search.metric_fn=tests.metric_helpers:nan_when_frozen", "promote.top_k=1",
        "search.space.freeze_layers={type: categorical, choices: [0, 1]}", "search.baseline=null",
        f"search.enqueue=[{{{FIXED}, freeze_layers: 1}}, {{{FIXED}, freeze_layers: 0}}]",
        f"storage={tmp_path / 'bad'}"])
    found = {r.params["freeze_layers"]: r for r in records.load_all(result.sweep_dir)}
    failed, good = found[1], found[0]
    message = "metric_fn tests.metric_helpers:nan_when_frozen returned nan for its value; it must be a finite number"
    assert failed.status == C.FAILED and failed.error == message and failed.retries == 0
    assert failed.reports == 0 and not failed.best_checkpoint
    log = (result.sweep_dir / failed.log_file).read_text()
    assert message in log and log.rstrip().splitlines()[-1].endswith(message)
    assert good.status == C.COMPLETED and result.best.trial_id == good.trial_id
    assert 0.0 <= result.final_eval["tuned"]["token_accuracy"] <= 1.0
