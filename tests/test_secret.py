"""Secrets never written: sentinel credentials of each current form, passed every way a user could.

Through the spec (`--set`, the YAML file, a data file's path, a hub model name) a secret is refused
with exit 2 and a message that shows no more than its first characters. Through the environment,
where they belong, a real sweep runs with all of them set (W&B offline, its own local Ray runtime),
and none appears in the sweep directory, W&B's offline files, Ray's session logs, stdout or stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import launch
from tests.conftest import ROOT, TINY
from tuner import secret

# One sentinel of each current form (none is a real credential).
SENTINELS = {
    "wandb": "wandb_v1_" + "SENTINELwandb0123456789" * 3 + "abcdefgh",  # 86 characters, as W&B's new keys
    "hf": "hf_SENTINELhuggingface0123456789abcd",  # a user or fine-grained token: hf_ and 34 characters
    "aws_id": "AKIASENTINEL01234567",  # an access key id: AKIA and 16 characters
    "github": "ghp_SENTINELgithub0123456789abcdefghijk",
    "github_pat": "github_pat_" + "SENTINELgithubpat_0123456789" * 3,
}
assert len(SENTINELS["wandb"]) == 86 and len(SENTINELS["aws_id"]) == 20
AWS_SECRET = "SENTINELawsSecret0123456789abcdefghijklm"  # 40 characters: no shape, known by its variable
ENVIRONMENT = {"WANDB_API_KEY": SENTINELS["wandb"], "HF_TOKEN": SENTINELS["hf"],
               "AWS_ACCESS_KEY_ID": SENTINELS["aws_id"], "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
               "GITHUB_TOKEN": SENTINELS["github"], "GH_FINE_GRAINED_TOKEN": SENTINELS["github_pat"]}


@pytest.mark.parametrize("name", SENTINELS)
def test_each_current_token_form_is_hidden_in_any_text(name):
    token = SENTINELS[name]
    line = f"GET https://example.org/x?token={token} failed; key={token}."
    hidden = secret.redact(line, known=[])
    assert token not in hidden and hidden.count(secret.HIDDEN) == 2 and hidden.endswith(".")


@pytest.mark.parametrize("text", [
    "model.revision 0123456789abcdef0123456789abcdef01234567 pinned",  # a commit hash in text is kept
    "task-language-modeling-finetune-2026-12-05-run-0001",  # no `sk-` key inside a word
    "/data/pdf_extraction_corpus_for_language_models/train.jsonl",
    "AKIAN is a name; BAKIASENTINEL0123456 is part of a word",
])
def test_text_that_only_resembles_a_token_is_left_alone(text):
    assert secret.redact(text, known=[]) == text


def _refused(args: list[str], capsys) -> str:
    code = launch.main(args)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("tuner: error:") == 1 and "Traceback" not in captured.err
    return captured.out + captured.err


WAYS = [
    pytest.param("tracking.wandb.api_key_env={wandb}", "tracking.wandb.api_key_env", id="key-for-its-variable-name"),
    pytest.param("tracking.wandb.project={aws_id}", "tracking.wandb.project", id="aws-id-in-a-field"),
    pytest.param("model.token_env={hf}", "model.token_env", id="hf-token-for-its-variable-name"),
    pytest.param("model.name_or_path={hf}", "model.name_or_path", id="hf-token-as-hub-name"),
    pytest.param("model.name_or_path=someone/{github}", "model.name_or_path", id="github-token-in-hub-name"),
    pytest.param("data.path=/data/{github_pat}/train.jsonl", "data.path", id="github-pat-in-data-path"),
    pytest.param("data.dataset=org/{wandb}", "data.dataset", id="wandb-key-in-hub-dataset"),
]


@pytest.mark.parametrize("override, field", WAYS)
def test_a_secret_given_through_set_is_refused_and_never_shown(override, field, tmp_path, capsys):
    value = override.split("=", 1)[1].format(**SENTINELS)
    output = _refused(["validate", str(TINY), "--set", f"storage={tmp_path / 's'}", "--set",
                       f"{override.split('=', 1)[0]}={value}"], capsys)
    assert f"{field}: got " in output and "environment variable" in output
    assert not any(token in output for token in SENTINELS.values()), output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", SENTINELS)
def test_a_secret_written_in_the_yaml_file_is_refused_and_the_file_kept(name, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    text = Path(TINY).read_text().replace("tracking:\n", f"tracking:\n  note_for_me: {SENTINELS[name]}\n", 1)
    text = text.replace("  wandb:", f"  wandb:\n    entity: {SENTINELS[name]}\n", 1)
    spec.write_text(text)
    output = _refused(["validate", str(spec), "--set", f"storage={tmp_path / 's'}"], capsys)
    assert "tracking.wandb.entity: got " in output and SENTINELS[name] not in output, output
    assert spec.read_text() == text and not (tmp_path / "s").exists()


@pytest.mark.integration
def test_a_sweep_run_with_every_sentinel_in_its_environment_writes_none_anywhere(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a limit
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_SERVICE")}
    env |= ENVIRONMENT | {"RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "offline"}
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "launch.py"), "sweep", str(TINY), "-v", "--set", f"storage={sweep_dir}",
             "--set", "data.max_records=300", "--set", "search.num_samples=2", "--set", "scheduler=none",
             "--set", "promote.num_prompts=2",
             "--set", "tracking.wandb.mode=offline"],
            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        sessions = list(ray_tmp.glob("ray/session_*/logs"))
        wandb_files = list((sweep_dir / "wandb").rglob("*"))
        assert sessions and any(p.suffix == ".wandb" for p in wandb_files)  # where we look holds what we wrote
        places = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
        for root in (sweep_dir, *sessions):
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    places[str(path)] = path.read_bytes()
        assert len(places) > 50
        for where, data in places.items():
            for token in (*SENTINELS.values(), AWS_SECRET):
                assert token.encode() not in data, f"{token[:8]}… found in {where}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
