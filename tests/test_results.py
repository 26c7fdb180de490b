"""The baseline comparison: whether tuning beat the baseline trial, and whether that was like for like."""

from __future__ import annotations

from tuner import constants as C
from tuner import results
from tuner.records import TrialRecord


def _trial(trial_id: str, status: str, best: float, steps: int, tokens_per_step: int) -> TrialRecord:
    history = [{C.STEP: step, C.TOKENS_SEEN: step * tokens_per_step, C.EVAL_LOSS: best} for step in (steps // 2, steps)]
    return TrialRecord(trial_id, status=status, best_metric=best, history=history, reports=2,
                       tokens_seen=steps * tokens_per_step)


def test_a_baseline_stopped_early_is_no_like_for_like_match():
    baseline = _trial("base", C.STOPPED_ASHA, 5.0, steps=8, tokens_per_step=8192)
    winner = _trial("win", C.COMPLETED, 4.0, steps=940, tokens_per_step=1024)
    comparison = results.baseline_comparison(baseline, winner, "min")
    assert comparison == {"trial_id": "base", "status": C.STOPPED_ASHA, "search_metric": 5.0,
                          "tuning_beat_baseline": True, "tokens_seen": 65_536, "step": 8,
                          "winner_tokens_seen": 962_560, "winner_step": 940}
    assert not results.like_for_like(comparison)
    assert results.baseline_verdict(comparison, C.EVAL_LOSS) == (
        "tuning beat the baseline (trial base, stopped by ASHA at 65,536 tokens, step 8, against a winner "
        "trained 962,560 tokens, 940 steps; search eval_loss 5.0000) — not like for like")


def test_a_completed_baseline_is_compared_plainly():
    baseline = _trial("base", C.COMPLETED, 4.0, steps=900, tokens_per_step=512)
    winner = _trial("win", C.COMPLETED, 4.5, steps=940, tokens_per_step=1024)
    comparison = results.baseline_comparison(baseline, winner, "min")
    assert results.like_for_like(comparison) and not comparison["tuning_beat_baseline"]
    assert results.baseline_verdict(comparison, C.EVAL_LOSS) == (
        "tuning did not beat the baseline (trial base, completed, search eval_loss 4.0000)")


def test_the_baseline_that_won_itself_was_not_beaten():
    baseline = _trial("base", C.COMPLETED, 4.0, steps=900, tokens_per_step=512)
    assert results.baseline_comparison(baseline, baseline, "min")["tuning_beat_baseline"] is False
    assert results.baseline_comparison(None, baseline, "min") is None


def test_a_final_eval_written_before_the_amounts_were_kept_says_what_it_knows():
    older = {"trial_id": "base", "status": C.STOPPED_BUDGET, "search_metric": None, "tuning_beat_baseline": True}
    assert results.baseline_verdict(older, C.EVAL_LOSS) == (
        "tuning beat the baseline (trial base, cut short by the time budget or Ctrl-C; no finite search "
        "eval_loss) — not like for like")
