"""W&B tracking with real W&B in offline mode: runs are read back from their `.wandb` files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import LIGHT_PROMOTE, ROOT, SENTINEL_HF_TOKEN, SENTINEL_WANDB_KEY, SWEEP_OVERRIDES, TINY
from tests.wandb_reader import read_runs
from tuner import constants as C
from tuner import tracking
from tuner.records import TrialRecord
from tuner.records import load_all as load_records
from tuner.spec import SpecError, WandbSpec, load_spec


def _spec(tmp_path: Path, *extra: str):
    return load_spec(TINY, [f"storage={tmp_path / 'sweep'}", *extra])


# ---------------------------------------------------------------------------------------------
# Units: mode, names, metrics.


def test_mode_is_online_with_a_key_and_offline_with_a_notice_without(tmp_path):
    settings = WandbSpec()
    assert tracking.resolve_mode(settings, tmp_path, {"WANDB_API_KEY": "k" * 40}) == ("online", None)
    assert tracking.resolve_mode(WandbSpec(api_key_env="MY_KEY"), tmp_path, {"MY_KEY": "k" * 40})[0] == "online"
    mode, notice = tracking.resolve_mode(settings, tmp_path, {"NETRC": str(tmp_path / "none")})
    assert mode == "offline" and f"tuner sync {tmp_path}" in notice
    assert tracking.resolve_mode(WandbSpec(mode="disabled"), tmp_path, {"WANDB_API_KEY": "k"}) == ("disabled", None)
    assert tracking.resolve_mode(settings, tmp_path, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"})[0] == "offline"


def test_a_key_stored_by_wandb_login_in_netrc_counts(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert tracking.has_api_key(WandbSpec(), {"NETRC": str(netrc)})
    assert not tracking.has_api_key(WandbSpec(), {"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"})


def test_report_metrics_are_named_as_in_hf_panels_with_perplexity():
    report = {C.EVAL_LOSS: 2.0, C.TRAIN_LOSS: 2.5, C.LEARNING_RATE: 1e-3, C.EPOCH: 0.5, C.STEP: 40,
              C.TOKENS_SEEN: 4096, C.TOKENS_PER_S: 900.0, C.TRIAL_STATUS: "running", C.FINAL: False}
    metrics = tracking.report_metrics(report)
    assert metrics["eval/loss"] == 2.0 and metrics["train/global_step"] == 40
    assert metrics["eval/perplexity"] == pytest.approx(7.389056, rel=1e-6)
    assert "train/gpu_memory_mb" not in metrics  # CPU: no GPU memory
    assert "train/gpu_memory_mb" in tracking.report_metrics({**report, C.GPU_MEMORY_MB: 120.5})


def test_run_ids_are_stable_per_trial_and_valid():
    assert tracking.run_id("tiny", "ab12_00001") == tracking.run_id("tiny", "ab12_00001") == "tiny-ab12_00001"
    assert tracking.run_id("my.sweep", "x") == "my-sweep-x"


# ---------------------------------------------------------------------------------------------
# The tracker against real offline W&B.


def test_a_retried_trial_keeps_one_run_and_its_steps_go_on(tmp_path):
    spec = _spec(tmp_path, "tracking.wandb.mode=offline")
    tracker = tracking.Tracker(spec, say=lambda _: None)
    params = {"learning_rate": 1e-3, "per_device_train_batch_size": 8}

    def report(step: int) -> dict:
        return {C.EVAL_LOSS: 5.0 - step / 100, C.STEP: step, C.TOKENS_SEEN: step * 512}

    tracker.trial_started("t1", params)
    tracker.trial_reported("t1", report(10))
    tracker.trial_reported("t1", report(20))
    tracker.trial_retried("t1")  # the worker died; Tune restarts the trial from its step-20 checkpoint
    tracker.trial_started("t1", params)
    tracker.trial_reported("t1", report(20))  # a report the checkpoint had already made
    tracker.trial_reported("t1", report(30))
    tracker.trial_ended(TrialRecord("t1", status=C.COMPLETED, best_eval_loss=4.7, best_metric=4.7, reports=3,
                                    retries=1))
    tracker.close()
    runs = [r for r in read_runs(spec.sweep_dir / "wandb") if r.job_type == "trial"]
    assert len(runs) == 1 and runs[0].run_id == tracking.run_id("tiny", "t1")
    assert [row["_step"] for row in runs[0].history] == [10, 20, 30]
    assert runs[0].summary["status"] == C.COMPLETED and runs[0].summary["retries"] == 1
    assert runs[0].config["learning_rate"] == 1e-3 and runs[0].config["sweep"] == "tiny"


def test_an_online_start_that_fails_falls_back_to_offline(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: the W&B server is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_MODE")
    spec = _spec(tmp_path, "tracking.wandb.init_timeout=1")
    said: list[str] = []
    tracker = tracking.Tracker(spec, say=said.append)
    assert tracker.mode == "online"  # the sentinel key is set
    started = time.monotonic()
    tracker.trial_started("t1", {"learning_rate": 1e-3})
    tracker.trial_ended(TrialRecord("t1", status=C.COMPLETED, best_metric=1.0, reports=0))
    tracker.close()
    assert time.monotonic() - started < 30
    assert tracker.mode == "offline"
    assert any("could not start online" in line and "tuner sync" in line for line in said)
    assert not any(SENTINEL_WANDB_KEY in line for line in said)
    assert [r.job_type for r in read_runs(spec.sweep_dir / "wandb")].count("trial") == 1
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert SENTINEL_WANDB_KEY.encode() not in path.read_bytes(), path


def test_disabled_tracking_writes_nothing(tmp_path):
    spec = _spec(tmp_path, "tracking.wandb.mode=disabled")
    tracker = tracking.Tracker(spec, say=lambda _: None)
    tracker.trial_started("t1", {})
    tracker.trial_reported("t1", {C.EVAL_LOSS: 1.0, C.STEP: 1})
    tracker.trial_ended(TrialRecord("t1", status=C.COMPLETED, best_metric=1.0))
    tracker.sweep_ended([], None)
    assert not (spec.sweep_dir / "wandb").exists()


# ---------------------------------------------------------------------------------------------
# Secrets in the spec.


@pytest.mark.parametrize("override", [
    f"tracking.wandb.project={SENTINEL_WANDB_KEY}",
    f"data.path=/data/{SENTINEL_HF_TOKEN}/train.txt",
    "tracking.wandb.entity=hf_" + "A1b2" * 9,
    "model.token_env=hf_" + "A1b2" * 9,
    "tracking.wandb.api_key_env=" + "0123456789abcdef" * 2 + "01234567",
])
def test_a_secret_in_the_spec_is_refused_without_being_shown(override):
    with pytest.raises(SpecError) as error:
        load_spec(TINY, [override])
    message = str(error.value)
    assert override.split("=")[0] in message and "environment variable" in message
    assert override.split("=", 1)[1] not in message and SENTINEL_WANDB_KEY not in message


def test_a_pinned_revision_is_not_taken_for_a_key():
    spec = load_spec(TINY, ["model.revision=" + "0123456789abcdef" * 2 + "01234567", "model.token_env=HF_TOKEN"])
    assert spec.model.token_env == "HF_TOKEN"


def test_the_cli_refuses_a_sentinel_key_with_exit_2():
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "validate", str(TINY), "--set",
                             f"tracking.wandb.group={SENTINEL_WANDB_KEY}"], capture_output=True, text=True)
    assert result.returncode == 2 and "tracking.wandb.group" in result.stderr
    assert SENTINEL_WANDB_KEY not in result.stderr + result.stdout and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The real sweep (the shared tiny sweep, run offline with sentinel secrets in the environment).


@pytest.fixture(scope="module")
def runs(tiny_sweep):
    return read_runs(tiny_sweep.sweep_dir / "wandb")


@pytest.mark.integration
def test_one_run_per_trial_plus_the_sweep_and_final_evaluation(tiny_sweep, runs):
    records = load_records(tiny_sweep.sweep_dir)
    kinds = sorted(r.job_type for r in runs)
    assert kinds == sorted(["trial"] * len(records) + ["sweep", "final-eval"])
    assert {r.group for r in runs} == {"tiny-test"}
    trials = {r.name: r for r in runs if r.job_type == "trial"}
    assert set(trials) == {r.trial_id for r in records}
    assert len({r.run_id for r in runs}) == len(runs)


@pytest.mark.integration
def test_each_trial_run_has_its_config_metrics_and_summary(tiny_sweep, runs):
    trials = {r.name: r for r in runs if r.job_type == "trial"}
    for record in load_records(tiny_sweep.sweep_dir):
        run = trials[record.trial_id]
        for name, value in record.params.items():
            assert run.config[name] == pytest.approx(value)
        assert {"model", "data", "train", "search", "scheduler", "resources", "sweep"} <= set(run.config)
        assert len(run.history) == record.reports  # one point per report
        steps = [row["_step"] for row in run.history]
        assert steps == [h[C.STEP] for h in record.history] and steps == sorted(set(steps))
        for row in run.history:
            assert {"eval/loss", "eval/perplexity", "train/loss", "train/learning_rate", "train/epoch",
                    "train/global_step", "train/tokens_per_s"} <= set(row)
        assert run.summary["status"] == record.status
        assert run.summary["best_eval_loss"] == pytest.approx(record.best_eval_loss)


@pytest.mark.integration
def test_asha_stopped_trials_say_at_which_report(tiny_sweep, runs):
    stopped = [r for r in load_records(tiny_sweep.sweep_dir) if r.status == C.STOPPED_ASHA]
    assert stopped, "the shared sweep is sized so that ASHA stops some trials"
    trials = {r.name: r for r in runs if r.job_type == "trial"}
    for record in stopped:
        summary = trials[record.trial_id].summary
        assert summary["stopped_at_report"] == record.reports and summary["stopped_at_tokens"] == record.rung


@pytest.mark.integration
def test_the_sweep_run_holds_leaderboard_progress_and_best_config(tiny_sweep, runs):
    (sweep,) = [r for r in runs if r.job_type == "sweep"]
    trials = len(load_records(tiny_sweep.sweep_dir))
    assert sweep.summary["leaderboard.nrows"] == trials and sweep.summary["best_trial"] == tiny_sweep.best.trial_id
    progress = [row["search/best_eval_loss"] for row in sweep.history if "search/best_eval_loss" in row]
    assert progress == sorted(progress, reverse=True)  # best so far only improves
    assert progress[-1] == pytest.approx(tiny_sweep.best.best_metric)
    assert "tiny-test-best-config" in sweep.artifacts


@pytest.mark.integration
def test_the_final_evaluation_run_has_test_metrics_and_samples(tiny_sweep, runs):
    (final,) = [r for r in runs if r.job_type == "final-eval"]
    assert final.summary["test/perplexity"] == pytest.approx(tiny_sweep.final_eval["perplexity"])
    assert final.summary["samples.nrows"] == len(tiny_sweep.paths["samples"].read_text().splitlines())


@pytest.mark.integration
def test_no_secret_reaches_any_file_of_the_sweep(tiny_sweep):
    assert os.environ["WANDB_API_KEY"] == SENTINEL_WANDB_KEY  # the trials ran with both set
    files = [p for p in tiny_sweep.sweep_dir.rglob("*") if p.is_file()]
    assert any(p.name == "params.json" for p in files) and any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        assert SENTINEL_WANDB_KEY.encode() not in data and SENTINEL_HF_TOKEN.encode() not in data, path


@pytest.mark.integration
def test_sync_uploads_offline_runs_and_needs_a_key(tiny_sweep):
    launch = [sys.executable, str(ROOT / "launch.py"), "sync", str(tiny_sweep.sweep_dir)]
    dry = subprocess.run([*launch, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "offline-run-" in dry.stdout + dry.stderr
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"NETRC": "/nonexistent"}
    refused = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "WANDB_API_KEY is not set" in refused.stderr


# ---------------------------------------------------------------------------------------------
# A trial whose worker is killed mid-training: one run, steps that never restart.


def _kill_trial_worker_after_reports(sweep_dir: Path, reports: int, done: threading.Event) -> None:
    """SIGKILL the Ray worker running the trial once its record shows `reports` reports."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for path in (sweep_dir / "trials").glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record["reports"] >= reports and record["status"] == C.RUNNING:
                for pid in _trial_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                done.set()
                return
        time.sleep(0.05)


def _trial_worker_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.integration
def test_a_killed_trial_resumes_from_its_checkpoint_in_the_same_run(ray_runtime, tmp_path):
    from tuner import run_sweep

    sweep_dir = tmp_path / "killed"
    killed = threading.Event()
    watcher = threading.Thread(target=_kill_trial_worker_after_reports, args=(sweep_dir, 2, killed), daemon=True)
    watcher.start()
    result = run_sweep(TINY, name="killed", overrides=[
        *SWEEP_OVERRIDES, f"storage={sweep_dir}", "search.num_samples=1", "search.baseline=null",
        "scheduler=none", "train.report_every_tokens=4096", "search.space.num_train_epochs=2",
        "search.space.per_device_train_batch_size=8", "search.max_failures=2", *LIGHT_PROMOTE])
    watcher.join(timeout=1)
    assert killed.is_set(), "the trial ended before it could be killed"
    (record,) = load_records(sweep_dir)
    assert record.status == C.COMPLETED and record.retries == 1
    steps = [h[C.STEP] for h in record.history]
    assert steps == sorted(set(steps)) and steps[0] > 0  # resumed from its checkpoint, not step 0
    (run,) = [r for r in read_runs(sweep_dir / "wandb") if r.job_type == "trial"]
    assert [row["_step"] for row in run.history] == steps and run.summary["retries"] == 1
    assert result.best.trial_id == record.trial_id
