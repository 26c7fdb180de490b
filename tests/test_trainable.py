"""The function Tune runs for each trial, with Tune's own calls faked: what reaches `tune.report`,
the checkpoint it is handed, the step a restarted trial goes on from, the trial's log. The same
function under a real Ray runtime is the integration tier's (tests/test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune

from tests.conftest import TINY
from tuner import constants as C
from tuner import trainable
from tuner.context import TrialContext
from tuner.spec import load_spec


@pytest.fixture
def fake_tune(monkeypatch):
    """Tune's calls inside a trial, answered here: what was reported (with a listing of each
    checkpoint handed over, read while it exists) and the checkpoint to resume from."""
    seen = SimpleNamespace(reports=[], resume=None)

    def report(metrics, checkpoint=None):
        files = None
        if checkpoint is not None:
            folder = Path(checkpoint.path)
            files = {p.name: p.read_text() for p in folder.iterdir()}
        seen.reports.append((metrics, files))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: seen.resume)
    monkeypatch.setattr(trainable, "placement", lambda: "node1:0")  # no Ray runtime to ask
    return seen


def _ctx(tmp_path: Path, trial_fn, **changes) -> TrialContext:
    spec = load_spec(TINY, [f"storage={tmp_path / 'sweep'}"])
    # A user's loop reads no prepared data and no base model: the context carries neither.
    return TrialContext(spec, prepared=None, model_path="unused", trial_fn=trial_fn, **changes)


def test_a_user_trial_reports_to_tune_with_its_placement_and_a_copy_of_its_checkpoint(tmp_path, fake_tune):
    users = tmp_path / "users-checkpoint"
    users.mkdir()
    (users / "weights.bin").write_text("w")

    def loop(hyper, report):
        print("epoch 1 done")
        report({"eval_loss": 2.0, "tokens_seen": 100, "step": 3}, str(users))

    ctx = _ctx(tmp_path, loop)
    trainable.tune_trainable({"learning_rate": 1e-3}, ctx)
    (metrics, files), (closing, none) = fake_tune.reports
    assert metrics[C.NODE_ID] == "node1" and metrics[C.GPU_IDS] == "node1:0"
    assert files is not None and files["weights.bin"] == "w"
    assert json.loads(files[trainable.REPORT_FILE]) == {C.STEP: 3, C.TOKENS_SEEN: 100}
    assert [p.name for p in users.iterdir()] == ["weights.bin"]  # the user's own folder is left alone
    assert closing[C.FINAL] and none is None
    log = (ctx.spec.sweep_dir / "logs" / "t1.log").read_text()
    assert "epoch 1 done" in log


def test_a_restarted_user_trial_goes_on_from_its_checkpoints_step(tmp_path, fake_tune):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / trainable.REPORT_FILE).write_text(json.dumps({C.STEP: 4, C.TOKENS_SEEN: 400}))
    fake_tune.resume = tune.Checkpoint.from_directory(str(saved))
    given = []

    def loop(hyper, report, checkpoint):
        given.append(json.loads((Path(checkpoint) / trainable.REPORT_FILE).read_text()))
        report({"eval_loss": 2.0, "tokens_seen": 500})

    trainable.tune_trainable({"learning_rate": 1e-3}, _ctx(tmp_path, loop))
    assert given == [{C.STEP: 4, C.TOKENS_SEEN: 400}]
    first = fake_tune.reports[0][0]
    assert first[C.START_STEP] == 4 and first[C.STEP] == 5


def test_a_trial_that_had_ended_repeats_its_last_report_and_runs_nothing(tmp_path, fake_tune):
    ran = []
    ended = {C.EVAL_LOSS: 1.5, C.TRIAL_STATUS: C.COMPLETED, C.FINAL: True}
    ctx = _ctx(tmp_path, lambda hyper, report: ran.append(1), ended={"t1": ended})
    trainable.tune_trainable({"learning_rate": 1e-3}, ctx)
    assert fake_tune.reports == [(ended, None)] and not ran


def test_the_trial_log_holds_a_crashs_traceback_but_not_a_stops(tmp_path):
    import logging

    handlers = list(logging.getLogger().handlers)
    stopped, crashed = tmp_path / "logs" / "stopped.log", tmp_path / "logs" / "crashed.log"
    with pytest.raises(SystemExit), trainable.trial_log(stopped):
        print("until the stop")
        raise SystemExit  # Tune stopping the trial: the driver says why
    with pytest.raises(ZeroDivisionError), trainable.trial_log(crashed):
        print("before the crash")
        logging.getLogger("tests.a_library").warning("a library's warning")  # reaches the root logger
        1 / 0
    assert stopped.read_text() == "until the stop\n"
    text = crashed.read_text()
    assert "before the crash" in text and "a library's warning" in text
    assert "Traceback" in text and text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert logging.getLogger().handlers == handlers  # a reused actor's next trial logs elsewhere


def test_placement_keys_name_each_node_once_and_every_workers_gpus():
    keys = trainable.placement_keys(["n2:1", "n1:0", "n2:2"])
    assert keys == {C.NODE_ID: "n1,n2", C.GPU_IDS: "n2:1;n1:0;n2:2"}
