"""A real two-node Ray cluster on this machine: GPUs declared as resources, token auth on.

Each node is a `ray start --block` process on loopback; sweeps attach to it with `--address` (or are
submitted as a Ray Job), as a user's would. Nodes on one machine share an IP, so trials are told
apart by Ray node id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import LIGHT_PROMOTE
from tuner import constants as C
from tuner.records import load_all as load_records

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SMALL = ["--set", "data.max_records=300", "--set", "data.block_size=32", "--set", "scheduler=none",
         "--set", "train.report_every_tokens=2048", "--set", "search.space.num_train_epochs=1",
         "--set", "search.baseline=null", "--set", "search.max_concurrent_trials=null",
         *(arg for item in LIGHT_PROMOTE for arg in ("--set", item))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CACHE = Path(tempfile.mkdtemp(prefix="tuner-cluster-cache-"))  # the nodes' and drivers' TUNER_CACHE


def _env(**extra: str) -> dict[str, str]:
    # The venv's bin first on PATH, as for a user with it activated: job entrypoints run `python`.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1",
           "TUNER_CACHE": str(CACHE), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def cluster():
    """Head (2 CPUs, 2 GPUs, dashboard on 127.0.0.1) plus a second node (2 CPUs, 2 GPUs)."""
    # One temp dir per node, as on separate machines (nodes sharing one would share, and delete,
    # each other's runtime-env files); short, as Ray's socket paths have a length limit.
    temps = [tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(2)]
    port, dashboard = _free_port(), _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "2",
              "--disable-usage-stats", "--block"]
    # Each node's agent on its own HTTP port: the default (52365) may be held by another Ray on this
    # machine, and an agent without its port leaves the head unable to take jobs.
    agents = [["--dashboard-agent-listen-port", str(_free_port())] for _ in range(2)]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--temp-dir", temps[0], *agents[0],
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard), *common],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    _wait_for_nodes(address, 1)
    second = subprocess.Popen([RAY, "start", "--address", address, "--temp-dir", temps[1], *agents[1], *common],
                              env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_nodes(address, 2)
    _wait_for_job_agent(f"http://127.0.0.1:{dashboard}")
    yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}", "cache": CACHE}
    for process in (second, head):  # both stop at once: each takes seconds to wind its node down
        process.send_signal(signal.SIGTERM)
    for process in (second, head):
        process.wait(timeout=60)
    for temp in temps:
        subprocess.run(["pkill", "-f", temp])  # anything of this cluster still alive


def _wait_for_nodes(address: str, count: int) -> None:
    script = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    for _ in range(60):
        result = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise RuntimeError(f"the cluster at {address} never had {count} nodes")


def _wait_for_job_agent(dashboard: str) -> None:
    """The head's job agent registers a little after the node: submit a no-op job until it takes it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        result = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--", "true"], env=_env(),
                                capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"the job server at {dashboard} never took a job")


def sweep(cluster, tmp_path: Path, gpus: float, samples: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "sweep", str(ROOT / "search_spaces" / "tiny.yaml"),
         "--address", cluster["address"], "--name", "cluster-test", "--num-samples", str(samples),
         "--set", f"storage={tmp_path / 'sweep'}", "--set", f"resources.gpus_per_trial={gpus}",
         "--set", "resources.cpus_per_trial=0.5", *SMALL, *extra],
        env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)


def _overlap(a, b) -> bool:
    return a.started_at < b.ended_at and b.started_at < a.ended_at


def test_one_gpu_trials_spread_over_both_nodes_without_sharing_a_gpu(cluster, tmp_path):
    result = sweep(cluster, tmp_path, gpus=1, samples=4)
    assert result.returncode == 0, result.stderr[-3000:]
    records = load_records(tmp_path / "sweep")
    assert [r.status for r in records] == [C.COMPLETED] * 4
    assert len({r.node_id for r in records}) == 2  # both nodes ran trials
    for a in records:
        for b in records:
            if a is not b and a.node_id == b.node_id and _overlap(a, b):
                assert a.gpu_ids != b.gpu_ids
    assert "concurrent trials: 4" in result.stderr


def test_half_gpu_trials_share_one_gpu(cluster, tmp_path):
    result = sweep(cluster, tmp_path, gpus=0.5, samples=4)
    assert result.returncode == 0, result.stderr[-3000:]
    records = load_records(tmp_path / "sweep")
    shared = [(a.trial_id, b.trial_id) for a in records for b in records
              if a.trial_id < b.trial_id and a.gpu_ids == b.gpu_ids and _overlap(a, b)]
    assert shared, [(r.gpu_ids, r.started_at, r.ended_at) for r in records]


def test_a_data_parallel_trial_trains_reports_and_checkpoints_as_one_trial(cluster, tmp_path):
    result = sweep(cluster, tmp_path, 2, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    record, = load_records(tmp_path / "sweep")
    assert record.status == C.COMPLETED and record.reports >= 3
    workers = record.gpu_ids.split(";")
    assert len(workers) == 2  # two workers, one GPU each, one record
    assert record.best_checkpoint.startswith("train/")  # relative to the sweep
    assert (tmp_path / "sweep" / record.best_checkpoint / "model.safetensors").exists()
    final = json.loads((tmp_path / "sweep" / "best" / "final_eval.json").read_text())
    assert final["trial_id"] == record.trial_id and final["perplexity"] > 0


def test_bucket_storage_checkpoints_to_the_bucket_and_nodes_read_local_data(cluster, tmp_path):
    bucket = tmp_path / "bucket"
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "sweep", str(ROOT / "search_spaces" / "tiny.yaml"),
         "--address", cluster["address"], "--name", "bucket-test", "--num-samples", "4",
         "--set", f"storage=file://{bucket}", "--set", "resources.gpus_per_trial=1",
         "--set", "resources.cpus_per_trial=0.5", *SMALL],
        env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    local = tmp_path / "runs" / "bucket-test"  # the driver's own files
    records = load_records(local)
    assert len(records) == 4 and len({r.node_id for r in records}) == 2
    for record in records:  # stored relative to the bucket, where Tune wrote them
        assert record.best_checkpoint.startswith("tune/")
        assert (bucket / record.best_checkpoint).is_dir() != record.checkpoint_deleted
    fingerprint = next(p for p in (local / "data").iterdir() if p.is_dir()).name
    assert (bucket / "data" / fingerprint / "prepared.json").exists()  # written to storage once
    copies = list((cluster["cache"] / "data").glob(f"{fingerprint}*"))
    assert [c.name for c in copies] == [fingerprint]  # one node-local copy on this machine
    for name in ("optuna.db", "leaderboard.csv", "best/config.yaml", "trials"):
        assert (bucket / name).exists(), name  # the results are in the bucket too


def test_validate_prints_the_plan_against_the_live_cluster(cluster):
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "validate", "search_spaces/tiny.yaml",
                             "--address", cluster["address"], "--set", "resources.gpus_per_trial=1"],
                            env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cluster: 2 node(s), 4 CPUs, 4 GPUs" in result.stdout
    assert "concurrent trials: 2" in result.stdout  # the spec's cap (2) is below the 4 GPUs allow


def test_more_gpus_than_the_cluster_has_is_refused_before_any_trial(cluster, tmp_path):
    result = sweep(cluster, tmp_path, gpus=6, samples=1)
    assert result.returncode == 2
    assert "resources.gpus_per_trial: got 6" in result.stderr and "4 GPUs in all" in result.stderr
    assert not (tmp_path / "sweep" / "trials").exists()


def test_a_driver_without_the_auth_mode_is_refused(cluster):
    env = _env()
    env.pop("RAY_AUTH_MODE")
    script = f"import ray; ray.init(address={cluster['address']!r}); print('joined')"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "joined" not in result.stdout


def test_a_sweep_submitted_as_a_ray_job_completes(cluster, tmp_path):
    storage = tmp_path / "job-sweep"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT), "--",
         "python", "launch.py", "sweep", "tiny", "--address", "auto", "--name", "job-test",
         "--num-samples", "2", "--set", f"storage={storage}", *SMALL],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-12000:]
    assert f"results: {storage}" in submit.stdout
    assert (storage / "best" / "config.yaml").exists()
    assert len(load_records(storage)) == 2
