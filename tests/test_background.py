"""Calls off Tune's event loop: queued calls return at once and run in order; others wait for them."""

from __future__ import annotations

import threading
import time

import pytest

from tuner.background import Background


class Slow:
    """Stands in for a W&B tracker whose every call takes `delay` seconds."""

    def __init__(self, delay: float):
        self.delay, self.calls, self.threads = delay, [], set()

    def started(self, trial_id, params):
        time.sleep(self.delay)
        self.calls.append(("started", trial_id, dict(params)))
        self.threads.add(threading.current_thread().name)

    def reported(self, trial_id, report):
        time.sleep(self.delay)
        self.calls.append(("reported", trial_id, dict(report)))

    def close(self):
        return list(self.calls)


def test_queued_calls_return_at_once_and_run_in_order_on_one_thread():
    slow = Slow(delay=0.5)
    proxy = Background(slow, queued=("started", "reported"))
    start = time.monotonic()
    report = {"step": 1}
    proxy.started("a", {"lr": 1})
    proxy.reported("a", report)
    report["step"] = 99  # changed by the caller after the call: the queued call saw it as it was
    proxy.reported("a", {"step": 2})
    assert time.monotonic() - start < 0.2  # three calls of 0.5 s each, none waited on
    assert proxy.close() == [("started", "a", {"lr": 1}), ("reported", "a", {"step": 1}),
                             ("reported", "a", {"step": 2})]  # a direct call drains the queue first
    assert time.monotonic() - start >= 1.5 and slow.threads == {"tuner-background"}
    proxy.stop()


def test_a_failing_call_does_not_stop_the_ones_after_it(caplog):
    slow = Slow(delay=0)
    proxy = Background(slow, queued=("started", "reported"))
    proxy.started("a", None)  # dict(None) raises inside the worker
    proxy.reported("b", {"step": 1})
    assert proxy.close() == [("reported", "b", {"step": 1})]
    assert "background call failed" in caplog.text
    proxy.stop()


def instant_trial(config, report):
    """Three reports at once, each with a checkpoint (the tiny model's files)."""
    import shutil
    import tempfile

    from tuner import model

    for step in range(1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(model.resolve("builtin:tiny-gpt2"), tmp, dirs_exist_ok=True)
            report({"eval_loss": 5.0 - step / 10 - config["learning_rate"], "tokens_seen": 100 * step,
                    "step": step}, tmp)


@pytest.mark.integration
def test_a_slow_wandb_never_holds_the_trials_up(ray_runtime, tmp_path, monkeypatch):
    """Every call of the tracker made from Tune's loop takes 2 s (a slow W&B server): 15 of them
    would add 30 s to a search of three one-at-a-time trials; it runs as fast as without."""
    from tests.conftest import LIGHT_PROMOTE, TINY
    from tuner import records, run_sweep, tracking

    done = []
    for name in tracking.TRIAL_CALLS:
        original = getattr(tracking.Tracker, name)

        def slow(self, *args, _original=original, _name=name, **kwargs):
            time.sleep(2)
            done.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(tracking.Tracker, name, slow)
    sweep_dir = tmp_path / "slow-wandb"
    run_sweep(TINY, name="slow-wandb", trial_fn=instant_trial, overrides=[
        f"storage={sweep_dir}", "search.num_samples=3", "search.max_concurrent_trials=1", "search.baseline=null",
        "scheduler=none", "data.max_records=300", "tracking.wandb.mode=offline", *LIGHT_PROMOTE])
    found = records.load_all(sweep_dir)
    search_s = max(r.ended_at for r in found) - min(r.started_at for r in found)
    assert len(found) == 3 and search_s < 15, search_s
    assert sorted(done) == sorted(["trial_started"] * 3 + ["trial_reported"] * 9 + ["trial_ended"] * 3)
    runs = [p for p in (sweep_dir / "wandb").glob("offline-run-*") if any(p.glob("*.wandb"))]
    assert len(runs) >= 4  # the three trials' runs and the sweep's, opened from the worker thread
