"""The driver loop's own parts: connecting to Ray, and ASHA's state across a driver restart."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from tests.conftest import TINY
from tuner import constants as C
from tuner import sweep
from tuner.errors import UserError
from tuner.ledger import TrialLedger
from tuner.plan import make_plan
from tuner.spec import load_spec


def test_a_local_runtime_has_no_dashboard_and_would_bind_it_to_localhost(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(sweep, "check_reachable", lambda address: None)
    sweep.init_ray(None)
    sweep.init_ray("10.0.0.1:6379")  # a cluster's dashboard is the cluster's (cluster.yaml binds it)
    assert calls[0]["address"] == "local" and calls[0]["include_dashboard"] is False
    assert calls[0]["dashboard_host"] == "127.0.0.1"
    assert calls[1] == {"address": "10.0.0.1:6379", "log_to_driver": False, "configure_logging": False}


def test_an_unreachable_address_is_refused_at_once():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed once the block ends: nothing listens there
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"--address 127.0.0.1:{port}: cannot reach a Ray cluster there"):
        sweep.check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 5
    with pytest.raises(UserError, match="expected host:port"):
        sweep.check_reachable("127.0.0.1:port")


def test_ashas_rungs_survive_a_driver_restart_through_the_ledgers_state(tmp_path):
    """Tune saves no scheduler state: the ledger's, saved with every snapshot, carries ASHA's."""
    spec = load_spec(TINY, [f"storage={tmp_path}"])
    plan = make_plan(spec, train_tokens=100_000)

    def asha_with_ledger():
        scheduler = sweep.make_scheduler(spec, plan)
        return scheduler, TrialLedger(spec, plan, say=lambda _: None, sweep_id="s1", scheduler=scheduler)

    before, ledger = asha_with_ledger()
    for trial_id, loss in [("a", 5.0), ("b", 4.0), ("c", 6.0)]:
        trial = SimpleNamespace(trial_id=trial_id, config={})
        before.on_trial_add(None, trial)
        before.on_trial_result(None, trial, {C.TOKENS_SEEN: plan.grace_period, C.EVAL_LOSS: loss})
    after, restored = asha_with_ledger()
    restored.set_state(ledger.get_state())
    recorded = lambda asha: [dict(rung) for bracket in asha._brackets for _, rung in bracket._rungs]  # noqa: E731
    assert recorded(after) == recorded(before) and any(recorded(after))
    late = SimpleNamespace(trial_id="d", config={})  # worse than the cutoff the three set: stopped at once
    after.on_trial_add(None, late)
    assert after.on_trial_result(None, late, {C.TOKENS_SEEN: plan.grace_period, C.EVAL_LOSS: 7.0}) == "STOP"


def test_asha_never_stops_the_baseline_trial_early_and_counts_its_results():
    """The baseline runs to its end, so "tuning beat the baseline" compares like with like; what it
    reports still enters ASHA's rungs. Fake trials, as Ray's own scheduler tests feed them."""
    spec = load_spec(TINY)
    plan = make_plan(spec, train_tokens=100_000)
    asha = sweep.make_scheduler(spec, plan)
    tuned = {**spec.search.baseline, "learning_rate": 1e-3}

    def trial(trial_id: str, config: dict) -> SimpleNamespace:
        added = SimpleNamespace(trial_id=trial_id, config=config)
        asha.on_trial_add(None, added)
        return added

    def report(added: SimpleNamespace, loss: float, tokens: int | None = None) -> str:
        return asha.on_trial_result(None, added, {C.TOKENS_SEEN: tokens or plan.grace_period, C.EVAL_LOSS: loss})

    for n, loss in enumerate((3.2, 3.1, 3.0)):  # each better than the last: they set the first cutoff
        assert report(trial(f"good{n}", tuned), loss) == "CONTINUE"
    assert report(trial("bad", tuned), 9.0) == "STOP"
    baseline = trial("baseline", dict(spec.search.baseline))
    assert report(baseline, 9.0) == "CONTINUE"  # as bad as `bad`, at the same rung
    first_rung = dict(asha._brackets[0]._rungs[-1][1])
    assert first_rung["baseline"] == -9.0  # counted toward the cutoff (ASHA maximizes -loss)
    assert report(baseline, 9.0, tokens=2 * plan.grace_period) == "CONTINUE"  # the next rung too
    assert report(baseline, 9.0, tokens=plan.max_t) == "STOP"  # max_t ends every trial: it has completed


def test_the_live_leaderboard_is_written_at_most_every_two_seconds_and_at_the_end(tmp_path, monkeypatch):
    """A row per trial: written at every trial's end, it grew with the sweep (O(n) per end)."""
    import csv

    from tuner import ledger as ledger_module
    from tuner.records import TrialRecord

    spec = load_spec(TINY, [f"storage={tmp_path}"])
    ledger = TrialLedger(spec, make_plan(spec, train_tokens=100_000), say=lambda _: None, sweep_id="s1")
    clock = [100.0]
    monkeypatch.setattr(ledger_module.time, "monotonic", lambda: clock[0])
    board = tmp_path / "leaderboard.csv"

    def rows() -> list[str]:
        with open(board) as f:
            return [row["trial_id"] for row in csv.DictReader(f)]

    def ends(trial_id: str) -> None:
        ledger.records[trial_id] = TrialRecord(trial_id, status=C.COMPLETED, best_metric=5.0, reports=1)
        ledger._write_leaderboard()

    ends("a")
    assert rows() == ["a"]  # the first end writes at once
    clock[0] += 1.0
    ends("b")
    assert rows() == ["a"] and ledger.board_stale  # within 2 s: left for later
    clock[0] += 0.5
    ledger.on_step_begin(0, [])
    assert rows() == ["a"]  # still within 2 s of the last write
    clock[0] += 0.6
    ledger.on_step_begin(0, [])
    assert sorted(rows()) == ["a", "b"] and not ledger.board_stale
    clock[0] += 0.1
    ends("c")
    ledger.on_experiment_end([])  # the experiment's end writes what is left, whatever the clock
    assert sorted(rows()) == ["a", "b", "c"]


def test_a_successor_lost_in_turn_still_claims_the_trial_it_went_on_from(tmp_path):
    """A configuration lost at three driver kills in a row: only its newest lost trial is left to go
    on from (the older checkpoints may be gone: CI's chaos run fell back to step 0 on one)."""
    from tuner import records
    from tuner.records import TrialRecord

    chain = [TrialRecord("a", checkpoint_step=2), TrialRecord("b", checkpoint_step=4, continues="a"),
             TrialRecord("c", checkpoint_step=6, continues="b")]
    for record in chain:
        record.latest_checkpoint = {"path": f"tune/{record.trial_id}/checkpoint_000000", "metrics": {}}
        records.save(record, tmp_path)
        records.set_aside(record, tmp_path)
    assert [r.trial_id for r in sweep.unclaimed_lost(tmp_path, [])] == ["c"]
    assert sweep.unclaimed_lost(tmp_path, [TrialRecord("d", continues="c")]) == []
