"""A user's own training loop (`run_sweep(trial_fn=…)`) under the built-in reporting contract,
without Ray: the reports it makes reach the reporter completed, closed and stopped as ours are.
The same loops under Ray Tune are the integration tier's (tests/test_pipeline.py)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import TINY
from tuner import constants as C
from tuner.context import TrialContext
from tuner.spec import load_spec
from tuner.user_trial import run_user_trial, takes_checkpoint

SAMPLED = {"learning_rate": 1e-3}


def _run(trial_fn, resume_from: str | None = None, start: dict | None = None) -> list[tuple[dict, str | None]]:
    """The reports `trial_fn` makes, as the trainable receives them."""
    spec = load_spec(TINY)
    sent: list[tuple[dict, str | None]] = []
    # A user's loop reads no prepared data and no base model: the context carries neither.
    ctx = TrialContext(spec, prepared=None, model_path="unused", trial_fn=trial_fn)
    run_user_trial(SAMPLED, ctx, lambda metrics, checkpoint: sent.append((metrics, checkpoint)), resume_from,
                   start)
    return sent


def test_each_report_is_completed_and_the_last_repeated_once_as_final():
    seen_hyper = {}

    def loop(hyper, report):
        seen_hyper.update(hyper)
        report({"eval_loss": 3.0, "tokens_seen": 100}, "/ckpt/1")
        report({"eval_loss": 2.5, "tokens_seen": 200, "step": 7})

    sent = _run(loop)
    assert seen_hyper["learning_rate"] == 1e-3 and seen_hyper["use_lora"] is False  # sampled over fixed
    assert [m[C.STEP] for m, _ in sent] == [1, 7, 7]  # counted where the loop names no step
    assert [c for _, c in sent] == ["/ckpt/1", None, None]
    assert [m[C.TRIAL_STATUS] for m, _ in sent] == [C.RUNNING, C.RUNNING, C.COMPLETED]
    assert [m[C.FINAL] for m, _ in sent] == [False, False, True] and sent[-1][0][C.REPEAT]
    first = sent[0][0]
    assert set(C.REPORT_KEYS) <= set(first)  # every key the ledger and the searcher read
    assert math.isnan(first[C.TRAIN_LOSS]) and first[C.START_STEP] == 0


def test_a_nan_loss_ends_the_loop_at_once_as_diverged():
    after = []

    def loop(hyper, report):
        report({"eval_loss": 3.0, "tokens_seen": 100})
        report({"eval_loss": 2.0, "tokens_seen": 200, "train_loss": float("inf")})
        after.append("went on")

    sent = _run(loop)
    assert not after  # stopped inside its own report call, as ReportCallback stops the Trainer
    assert [m[C.TRIAL_STATUS] for m, _ in sent] == [C.RUNNING, C.DIVERGED]
    assert sent[-1][0][C.FINAL] and math.isnan(sent[-1][0][C.EVAL_LOSS]) and sent[-1][1] is None


def test_a_report_without_the_required_keys_is_refused_naming_them():
    def loop(hyper, report):
        report({"loss": 3.0})

    with pytest.raises(ValueError, match=r"every report needs \['eval_loss', 'tokens_seen'\]"):
        _run(loop)


def test_a_restarted_loop_gets_its_checkpoint_and_counts_on_from_its_step():
    given = []

    def loop(hyper, report, checkpoint):
        given.append(checkpoint)
        report({"eval_loss": 2.0, "tokens_seen": 500})

    sent = _run(loop, resume_from="/ckpt/4", start={C.STEP: 4})
    assert given == ["/ckpt/4"]
    assert sent[0][0][C.STEP] == 5 and sent[0][0][C.START_STEP] == 4
    assert _run(loop) and given[-1] is None  # a first run: nothing to go on from


def test_a_loop_that_never_reports_sends_nothing():
    assert _run(lambda hyper, report: None) == []


@pytest.mark.parametrize("fn, takes", [
    (lambda hyper, report: None, False),
    (lambda hyper, report, checkpoint: None, True),
    (lambda hyper, report, checkpoint=None: None, True),
    (lambda *args: None, True),
    (lambda hyper, report, *, checkpoint=None: None, False),  # keyword-only: never passed
    (print, True),  # a builtin: *args
])
def test_takes_checkpoint_reads_the_signature(fn, takes):
    assert takes_checkpoint(fn) is takes
