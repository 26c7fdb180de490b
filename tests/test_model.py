"""Model loading rules: remote code only when the spec allows it, with a pinned revision."""

from __future__ import annotations

import json

import pytest

from tuner import model
from tuner.errors import UserError
from tuner.pipeline import check_model
from tuner.spec import SpecError, load_spec

from tests.conftest import TINY

COMMIT = "0123456789abcdef" * 2 + "01234567"


@pytest.fixture
def remote_code_model(tmp_path):
    """A local model whose config class lives in the repository's own Python file."""
    folder = tmp_path / "remote-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "remote-gpt", "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"}}))
    (folder / "configuration_remote.py").write_text(
        "from transformers import PretrainedConfig\n\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'remote-gpt'\n")
    return folder


def test_a_model_needing_remote_code_is_refused_without_trust(remote_code_model, tmp_path):
    spec = load_spec(TINY, [f"model.name_or_path={remote_code_model}", f"storage={tmp_path / 'sweep'}"])
    with pytest.raises(UserError) as error:
        check_model(spec)
    assert "model.trust_remote_code" in str(error.value) and "pin model.revision" in str(error.value)


def test_trusted_remote_code_loads(remote_code_model):
    config = model.load_config(str(remote_code_model), trust_remote_code=True)
    assert type(config).__name__ == "RemoteConfig"


def test_trust_remote_code_needs_a_pinned_commit():
    with pytest.raises(SpecError) as error:
        load_spec(TINY, ["model.trust_remote_code=true", "model.revision=main"])
    assert "model.revision: got 'main'" in str(error.value) and "commit hash" in str(error.value)
    assert load_spec(TINY, ["model.trust_remote_code=true", f"model.revision={COMMIT}"]).model.trust_remote_code
    assert load_spec(TINY).model.trust_remote_code is False
