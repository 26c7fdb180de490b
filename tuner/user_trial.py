"""A user's own training loop as a trial (`run_sweep(trial_fn=…)`), under the same reporting
contract as the built-in one. No transformers here: a worker running user loops never imports it.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from tuner import constants as C
from tuner import memory, space
from tuner.context import Reporter, TrialContext


def run_user_trial(params: dict[str, Any], ctx: TrialContext, report: Reporter, resume_from: str | None = None,
                   start: dict[str, Any] | None = None) -> None:
    """Run the user's `trial_fn(hyperparameters, report)` with the same reporting contract as ours.

    Each report is completed with the keys the sweep reads; when the function returns, its last
    report is repeated once marked final, so the trial counts as completed, not stopped. A function
    that takes a third argument, `checkpoint`, gets the directory of the checkpoint to go on from
    when the trial restarts (a crash, a resumed driver), else None; `start` is the report that
    checkpoint came with.
    """
    last: dict[str, Any] = {}
    start_step = int((start or {}).get(C.STEP) or 0) if resume_from else 0
    count = [start_step]  # reports so far: the step of a report that names none

    def user_report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        missing = [k for k in (C.EVAL_LOSS, C.TOKENS_SEEN) if k not in metrics]
        if missing:
            raise ValueError(f"trial_fn reported {sorted(metrics)}; every report needs {missing}")
        count[0] += 1
        last.clear()
        # The costs default to what is known from outside the loop: its own count of trainable
        # parameters is the loop's to report.
        last.update({C.TRAIN_LOSS: math.nan, C.LEARNING_RATE: 0.0, C.EPOCH: 0.0, C.STEP: count[0],
                     C.TOKENS_PER_S: 0.0, C.TRAIN_TOKENS_PER_S: metrics.get(C.TOKENS_PER_S, 0.0),
                     C.TRAINABLE_PARAMS: math.nan, C.PEAK_MEMORY_MB: memory.resident_peak_mb(), **metrics,
                     C.START_STEP: start_step, C.TRIAL_STATUS: C.RUNNING, C.FINAL: False})
        count[0] = int(last[C.STEP])
        if not all(math.isfinite(float(last[k])) for k in (C.EVAL_LOSS, C.TRAIN_LOSS) if k in metrics):
            report({**last, C.EVAL_LOSS: math.nan, C.TRIAL_STATUS: C.DIVERGED, C.FINAL: True}, None)
            raise _Diverged  # stop the user's loop at once, as ReportCallback stops the Trainer
        report(dict(last), checkpoint_dir)

    hyper = space.resolve(ctx.spec, params)
    trial_fn = ctx.trial_fn
    assert trial_fn is not None  # the trainable runs this only for a sweep given a trial_fn
    try:
        if takes_checkpoint(trial_fn):
            trial_fn(hyper, user_report, resume_from)
        else:
            trial_fn(hyper, user_report)
    except _Diverged:
        return
    if last:
        report({**last, C.TRIAL_STATUS: C.COMPLETED, C.FINAL: True, C.REPEAT: True}, None)


def takes_checkpoint(fn: Callable) -> bool:
    """Whether a user's trial function takes the checkpoint to go on from (a third argument)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


class _Diverged(Exception):
    """A user's training loop reported a NaN or inf loss."""
