"""Trial records: one typed record per trial, one load and save path, one comparison."""

from __future__ import annotations

import json
import math

import pytest

from tuner import constants as C
from tuner import records
from tuner.errors import UserError
from tuner.records import TrialRecord


def test_a_record_round_trips_through_its_file(tmp_path):
    record = TrialRecord("t1", status=C.RUNNING, params={"learning_rate": 1e-4}, best_checkpoint="tune/t1/c",
                         history=[{C.STEP: 8, C.EVAL_LOSS: 5.0}], resumed_from_steps=[8])
    records.save(record, tmp_path)
    assert records.load_all(tmp_path) == [record]
    assert json.loads(records.path_of(tmp_path, "t1").read_text())["schema"] == records.SCHEMA


def test_a_record_from_before_the_schema_gets_relative_paths(tmp_path):
    old = {"trial_id": "t1", "status": "completed", "params": {}, "history": [], "reports": 0,
           "best_checkpoint": f"{tmp_path}/tune/t1/checkpoint_000003", "trial_dir": f"{tmp_path}/tune/t1",
           "log_file": f"{tmp_path}/logs/t1.log", "an_old_key": 1}
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "t1.json").write_text(json.dumps(old))
    record, = records.load_all(tmp_path)
    assert (record.best_checkpoint, record.trial_dir, record.log_file) == ("tune/t1/checkpoint_000003", "tune/t1",
                                                                           "logs/t1.log")
    assert record.crashes == [] and record.schema == records.SCHEMA


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable trial record"),
    ('{"status": "completed"}', "not a trial record"),
    ('{"trial_id": "t1", "schema": 99}', "written by a newer tuner"),
])
def test_an_unreadable_record_is_refused_by_name(tmp_path, content, message):
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "t1.json").write_text(content)
    with pytest.raises(UserError, match=rf"t1.json: {message}"):
        records.load_all(tmp_path)


def test_which_result_is_better_is_decided_once():
    assert records.better(1.0, 2.0, "min") and not records.better(2.0, 1.0, "min")
    assert records.better(2.0, 1.0, "max") and not records.better(1.0, 1.0, "max")
    assert records.better(3.0, None, "min") and records.better(3.0, math.nan, "min")
    assert not records.better(math.nan, 1.0, "min") and not records.better(None, 1.0, "max")
    done = [TrialRecord("a", status=C.COMPLETED, best_metric=3.0), TrialRecord("b", status=C.FAILED, best_metric=1.0),
            TrialRecord("c", status=C.STOPPED_ASHA, best_metric=2.0), TrialRecord("d", status=C.COMPLETED,
                                                                                best_metric=math.inf)]
    assert [r.trial_id for r in records.ranked(done, "min")] == ["c", "a", "b", "d"]
    assert [r.trial_id for r in records.ranked(done, "max")][:2] == ["a", "c"]
    assert records.best_of(done, "min").trial_id == "b"  # best so far, whatever the status


def test_only_an_unfinished_record_is_ever_set_aside(tmp_path):
    running = TrialRecord("r", status=C.RUNNING)
    finished = TrialRecord("f", status=C.COMPLETED)
    for record in (running, finished):
        records.save(record, tmp_path)
    records.set_aside(running, tmp_path)
    with pytest.raises(ValueError, match="a finished record is never moved"):
        records.set_aside(finished, tmp_path)
    assert [r.trial_id for r in records.load_all(tmp_path)] == ["f"]
    assert [(r.trial_id, r.status) for r in records.load_lost(tmp_path)] == [("r", C.LOST)]
