"""The driver's clock on running trials: trial_timeout over all of a trial's runs, stall_timeout
since its last report."""

from __future__ import annotations

from tuner import constants as C
from tuner.deadline import Deadlines


def test_a_trial_running_too_long_in_all_its_runs_is_named_timed_out():
    clock = Deadlines(trial_timeout=100, stall_timeout=None)
    clock.start("a", ran_before=0.0, now=0.0)
    assert clock.overdue(99.0) == []
    assert clock.stop("a", 60.0) == 60.0  # crashed after 60 s; retried
    clock.start("a", ran_before=60.0, now=500.0)
    assert clock.overdue(539.0) == []
    (trial, status, why), = clock.overdue(541.0)
    assert (trial, status) == ("a", C.TIMED_OUT) and "longer than search.trial_timeout (100 s)" in why


def test_a_silent_trial_is_named_stalled_and_a_report_resets_the_clock():
    clock = Deadlines(trial_timeout=None, stall_timeout=30)
    clock.start("a", 0.0, now=0.0)
    clock.start("b", 0.0, now=0.0)
    clock.reported("a", 25.0)
    found = clock.overdue(40.0)
    assert [(t, s) for t, s, _ in found] == [("b", C.STALLED)] and "no report for 40 s" in found[0][2]
    assert clock.overdue(56.0)[0][:2] == ("a", C.STALLED)


def test_no_limits_no_verdicts():
    clock = Deadlines(None, None)
    clock.start("a", 0.0, now=0.0)
    assert clock.overdue(1e9) == [] and clock.ran("a", 10.0) == 10.0 and clock.ran("z", 1.0) is None
