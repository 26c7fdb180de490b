"""Shared fixtures: one real sweep (local Ray, Optuna on SQLite, HF Trainer on a tiny GPT-2) that
every test which only reads its results shares, so the suite pays for it once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"

# Sentinel secrets for the whole session, set before any Ray runtime starts so every trial process
# has them too: tests assert they never reach a file. W&B stays offline (nothing is uploaded).
SENTINEL_WANDB_KEY = "SENTINELwandbkey0000aaaa1111bbbb2222cccc"
SENTINEL_HF_TOKEN = "SENTINELhftoken0000dddd3333eeee"
os.environ["WANDB_API_KEY"] = SENTINEL_WANDB_KEY
os.environ["HF_TOKEN"] = SENTINEL_HF_TOKEN
os.environ["WANDB_MODE"] = "offline"

# Small enough for 2 cores, big enough that ASHA has rungs to stop trials at.
SWEEP_OVERRIDES = [
    "data.max_records=900",
    "train.report_every_tokens=8192",
    "scheduler.grace_period=8192",
    "search.num_samples=6",
    "search.n_startup_trials=3",
    "search.space.num_train_epochs={type: int, low: 1, high: 2}",
    "promote.num_prompts=4",
    "tracking.wandb.mode=offline",
]

# For sweeps whose test is not about the final evaluation: no prompts to generate, no re-ranking, no
# base model (the A/B is tested on the shared sweep above).
LIGHT_PROMOTE = ["promote.num_prompts=0", "promote.top_k=1", "promote.evaluate_base=false"]


# The tiers (docs/testing.md): a test that starts Ray or trains is marked `integration`, so
# `-m "not integration and not cluster"` stays fast. These fixtures start Ray; a test that requests
# one, itself or through another fixture, must carry the mark.
RAY_FIXTURES = frozenset({"ray_runtime", "tiny_sweep"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail an unmarked test that requests a Ray fixture before the fixture starts anything."""
    wanted = sorted(RAY_FIXTURES & set(getattr(item, "fixturenames", ())))
    if wanted and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} uses {', '.join(wanted)}, which start Ray: mark it "
                    "@pytest.mark.integration (see docs/testing.md)", pytrace=False)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray_and_trains_nothing(request, monkeypatch):
    """In a test without the `integration` mark, `ray.init` or a `Trainer.train` in this process
    fails at once, naming the mark, instead of quietly making the fast tier slow. Ray is imported
    here (a third of a second, once); transformers only where something already loaded it (seconds),
    as the fast tier's collection does. Drivers in subprocesses are not seen: mark those by hand."""
    if request.node.get_closest_marker("integration") is not None:
        return
    import sys

    import ray

    def refuse(what: str):
        def refused(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} {what} without the integration mark: mark it "
                        "@pytest.mark.integration (see docs/testing.md)", pytrace=False)
        return refused

    monkeypatch.setattr(ray, "init", refuse("starts Ray"))
    if "transformers" in sys.modules:
        from transformers import Trainer  # a tenth of a second, once transformers is loaded

        monkeypatch.setattr(Trainer, "train", refuse("trains a model"))


def write_remote_code_model(folder: Path) -> Path:
    """A local model whose config class lives in the repository's own Python file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "remote-gpt", "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"}}))
    (folder / "configuration_remote.py").write_text(
        "from transformers import PretrainedConfig\n\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'remote-gpt'\n")
    return folder


@pytest.fixture(scope="session")
def ray_runtime():
    """A private local Ray runtime for the session (the sweeps attach to it instead of starting one)."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_sweep(ray_runtime, tmp_path_factory):
    """The tiny preset, shrunk, run end to end once."""
    from tuner import run_sweep

    sweep_dir = tmp_path_factory.mktemp("sweeps") / "tiny-test"
    return run_sweep(TINY, overrides=[*SWEEP_OVERRIDES, f"storage={sweep_dir}"], name="tiny-test")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on loopback (moto's server mode), with a bucket; the AWS variables point boto3
    and pyarrow at it for this session and every process it starts."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket="tuner-test")
        yield {"endpoint": endpoint, "bucket": "tuner-test"}
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_tiny_model(path: Path, texts: list[str], positions: int = 128) -> None:
    """A 2-layer, 64-wide GPT-2 config and a byte-level BPE tokenizer trained on `texts`, saved to
    `path`: a local model for tests that need one before any training (bad input, bad data)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=positions, vocab_size=len(tokenizer),
               bos_token_id=eos, eos_token_id=eos).save_pretrained(path)
    tokenizer.save_pretrained(path)
