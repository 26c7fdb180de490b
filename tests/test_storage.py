"""Storage: URIs and paths alike, node-local copies made once, consistent copies of the study."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner import cluster, storage
from tuner.errors import UserError
from tuner.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]


def test_uris_and_paths(tmp_path):
    assert storage.is_uri("s3://bucket/sweeps") and not storage.is_uri("/mnt/nfs/sweeps")
    assert storage.join("gs://b/x/", "data", "abc") == "gs://b/x/data/abc"
    assert storage.join(str(tmp_path), "data") == str(tmp_path / "data")
    assert storage.scheme("s3://b") == "s3" and storage.scheme("/x") == ""


@pytest.mark.parametrize("as_uri", [True, False])
def test_upload_download_round_trip(tmp_path, as_uri):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "sub" / "b.txt").write_text("beta")
    remote = f"file://{tmp_path}/bucket/run" if as_uri else str(tmp_path / "bucket" / "run")
    storage.upload(source, remote)
    assert storage.exists(storage.join(remote, "sub", "b.txt"))
    storage.download(remote, tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "beta"
    storage.write_text(storage.join(remote, "marker"), "token")
    assert storage.read_text(storage.join(remote, "marker")) == "token"


def test_a_node_copies_the_prepared_data_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "bucket" / "data" / "fp1"
    source.mkdir(parents=True)
    (source / "prepared.json").write_text("{}")
    first = storage.node_copy(f"file://{source}", "fp1")
    assert (first / "prepared.json").exists() and (first / ".complete").exists()
    (source / "prepared.json").write_text('{"changed": true}')
    assert storage.node_copy(f"file://{source}", "fp1") == first
    assert (first / "prepared.json").read_text() == "{}"  # not copied again


def test_unshared_storage_is_refused_with_what_to_set():
    cluster.refuse_unshared("/data/sweeps", [])  # every node read the marker
    with pytest.raises(UserError, match=r"storage: '/data/sweeps' is not shared: node\(s\) abcdef.*s3://"):
        cluster.refuse_unshared("/data/sweeps", ["abcdef0123456789"])


def test_bucket_storage_keeps_the_drivers_files_in_runs(tmp_path):
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml", ["storage=s3://bucket/sweeps/tiny"])
    assert spec.location == "s3://bucket/sweeps/tiny"
    assert spec.sweep_dir == (Path("runs") / "tiny").resolve()
    local = load_spec(ROOT / "search_spaces" / "tiny.yaml", [f"storage={tmp_path}"])
    assert local.location == str(tmp_path) == str(local.sweep_dir)
    with pytest.raises(SpecError, match="storage: got 'http://host/x'"):
        load_spec(ROOT / "search_spaces" / "tiny.yaml", ["storage=http://host/x"])
