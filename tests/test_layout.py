"""The sweep directory's writer and stored paths: every file whole at any instant, every path
relative to the sweep."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from tuner import layout


def _rewrite_forever(path: str) -> None:
    """Write ever longer JSON through the one writer, as fast as it can (killed by the test)."""
    n = 0
    while True:
        n += 1
        layout.write_json(path, {"n": n, "pad": "x" * (n % 5000)})


def test_a_writer_killed_at_any_instant_leaves_the_file_whole(tmp_path):
    """A real process, SIGKILLed again and again mid-writing: the file always parses."""
    path = tmp_path / "trials" / "t.json"
    layout.write_json(path, {"n": 0, "pad": ""})
    context = multiprocessing.get_context("spawn")
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        writer = context.Process(target=_rewrite_forever, args=(str(path),))
        writer.start()
        time.sleep(delay + 0.3)  # the spawned interpreter's start, then writing
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert json.loads(path.read_text())["n"] >= 0
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "t.json"]
    assert all(name.startswith(".t.json.") and name.endswith(".tmp") for name in leftovers)
    layout.remove_temporaries(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    layout.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with layout.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "best"
    with layout.staged_dir(target) as out:
        (out / "config.yaml").write_text("first")
    with pytest.raises(RuntimeError):
        with layout.staged_dir(target) as out:
            (out / "config.yaml").write_text("half")
            raise RuntimeError("killed while writing the model")
    assert (target / "config.yaml").read_text() == "first"
    with layout.staged_dir(target) as out:
        (out / "model").mkdir()
        (out / "config.yaml").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "model"]
    assert (target / "config.yaml").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no staging or old copy left


def test_stored_paths_are_relative_to_the_sweep_and_resolve_where_it_is_now(tmp_path):
    sweep = tmp_path / "runs" / "s"
    stored = layout.relative(f"{sweep}/tune/t1/checkpoint_000002", sweep)
    assert stored == "tune/t1/checkpoint_000002"
    assert layout.resolve(stored, tmp_path / "moved") == f"{tmp_path}/moved/tune/t1/checkpoint_000002"
    assert layout.relative("s3://b/x/tune/t1/checkpoint_0", "s3://b/x") == "tune/t1/checkpoint_0"
    assert layout.resolve("tune/t1/checkpoint_0", "s3://b/y") == "s3://b/y/tune/t1/checkpoint_0"
    assert layout.relative("/elsewhere/ckpt", sweep) == "/elsewhere/ckpt"  # outside the sweep: kept as is
    assert layout.resolve("/elsewhere/ckpt", tmp_path) == "/elsewhere/ckpt"
    assert layout.relative(None, sweep) is None and layout.resolve(None, sweep) is None
