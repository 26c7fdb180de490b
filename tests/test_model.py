"""Model loading rules: remote code only when the spec allows it, with a pinned revision; a local
path that holds no model is named as such."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, write_remote_code_model
from tuner import model
from tuner.errors import UserError
from tuner.pipeline import check_model
from tuner.spec import SpecError, load_spec

COMMIT = "0123456789abcdef" * 2 + "01234567"


@pytest.fixture
def remote_code_model(tmp_path):
    return write_remote_code_model(tmp_path / "remote-model")


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


@pytest.mark.parametrize("make, found", [(lambda p: None, "no such directory"),
                                         (lambda p: p.mkdir(), "a directory without config.json")])
def test_a_model_path_that_is_not_a_model_directory_is_named(tmp_path, make, found):
    """A local path is never looked up on the hub: the message says what is there instead."""
    path = tmp_path / "my-model"
    make(path)
    with pytest.raises(UserError, match=f"model.name_or_path: got '{path}', {found}; give a model directory"):
        model.load_config(str(path))


def test_lora_placement_is_checked_from_the_config():
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2)
    assert model.lora_problem(config, None) is None  # peft's default for GPT-2: c_attn
    assert model.lora_problem(config, ["c_attn", "c_proj"]) is None
    problem = model.lora_problem(config, ["q_proj", "c_attn"])
    assert "got ['q_proj'], not layers of 'gpt2'" in problem and "'c_fc'" in problem
    config.model_type = "my-own-lm"
    assert "peft has no default layers for 'my-own-lm'" in model.lora_problem(config, None)


def test_lora_without_peft_installed_says_how_to_get_it(monkeypatch):
    import sys

    from transformers import GPT2Config

    monkeypatch.setitem(sys.modules, "peft.utils.constants", None)  # as if peft were not installed
    problem = model.lora_problem(GPT2Config(n_layer=2, n_embd=64, n_head=2), None)
    assert "LoRA needs peft, which is not installed" in problem and "pip install 'tuner[lora]'" in problem


def test_code_from_another_repository_is_found_in_every_auto_map_form():
    from tuner.model import code_repositories

    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "org/code--modeling_x.XModel",
                "AutoTokenizer": ["org/tok--tokenization_x.XTokenizer", None]}
    assert code_repositories(auto_map) == {"org/code", "org/tok"}
    assert code_repositories({"AutoConfig": "configuration_x.XConfig"}) == set()


def test_a_pinned_other_repository_passes_and_its_pin_reaches_from_pretrained():
    from tuner.model import check_remote_code, hub_kwargs

    config = {"auto_map": {"AutoModelForCausalLM": "org/code--modeling_x.XModel"}}
    check_remote_code("org/model", config, trust_remote_code=True, code_revision="ab" * 20)
    assert hub_kwargs("cd" * 20, None, True, "ab" * 20) == {"revision": "cd" * 20, "trust_remote_code": True,
                                                           "code_revision": "ab" * 20}
    assert "code_revision" not in hub_kwargs("cd" * 20, None, False, "ab" * 20)  # no code runs: nothing to pin
