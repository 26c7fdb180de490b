"""The driver's files in the bucket: pushed at each trial's end and at least once a minute, fetched
back on a machine that has none (a real S3 API on loopback)."""

from __future__ import annotations

from tuner import layout, mirror, storage
from tuner import records as trial_records
from tuner.records import TrialRecord
from tuner.state import SweepState


def test_changed_records_reach_the_bucket_at_least_once_a_minute(s3_server, tmp_path):
    uri = f"s3://{s3_server['bucket']}/sweeps/mirrored"
    now = [0.0]
    sweep_dir = tmp_path / "runs" / "mirrored"
    state = SweepState("hash")
    state.save(sweep_dir)
    layout.write_text(sweep_dir / layout.SPEC_FILE, "name: mirrored\n")
    copy = mirror.Mirror(sweep_dir, uri, state.sweep_id, clock=lambda: now[0])
    trial_records.save(TrialRecord("t1", status="running", reports=1), sweep_dir)
    copy.record_changed("t1")
    now[0] = 59.0
    assert not copy.tick() and not storage.exists(f"{uri}/trials/t1.json")
    now[0] = 61.0
    assert copy.tick()
    assert storage.exists(f"{uri}/trials/t1.json") and storage.exists(f"{uri}/sweep.json")
    trial_records.save(TrialRecord("t1", status="completed", reports=2), sweep_dir)
    copy.record_changed("t1")
    copy.push()  # a trial ended: at once
    again = tmp_path / "machine-b" / "mirrored"
    assert mirror.pull(uri, again)
    record, = trial_records.load_all(again)
    assert (record.status, record.reports) == ("completed", 2)
    assert (again / layout.SPEC_FILE).read_text() == "name: mirrored\n"
    assert not mirror.pull(f"s3://{s3_server['bucket']}/sweeps/nothing-here", tmp_path / "empty")
