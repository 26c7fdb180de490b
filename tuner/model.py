"""Models and tokenizers: the only module that calls `from_pretrained`.

A model is named by hub name, local path, or `builtin:tiny-gpt2`; `resolve` turns each into what
`from_pretrained` takes, so every other stage handles one kind of name.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from tuner import builtin, hyperparams, limits, secret
from tuner.errors import UserError, first_line

log = logging.getLogger("tuner")


def resolve(name_or_path: str) -> str:
    """What `from_pretrained` takes for a spec's `model.name_or_path`."""
    if builtin.is_builtin(name_or_path):
        if name_or_path != builtin.TINY_GPT2:
            raise UserError(f"model.name_or_path: got {name_or_path!r}; the built-in model is "
                            f"{builtin.TINY_GPT2!r}")
        return str(builtin.tiny_gpt2_path())
    return os.path.expanduser(name_or_path) if is_path(name_or_path) else name_or_path


def is_path(name_or_path: str) -> bool:
    """A local directory, never a hub name (those read `org/name`)."""
    return name_or_path.startswith(("~", ".", "/"))


def hub_kwargs(revision: str | None, token_env: str | None = None, trust_remote_code: bool = False,
               code_revision: str | None = None) -> dict[str, Any]:
    """Hub arguments; the token is read from its environment variable now and passed on, never kept.
    `trust_remote_code` is passed only when the spec turns it on (validation demands a pinned revision),
    and with it `code_revision`, the commit of code an `auto_map` takes from another repository."""
    token = secret.from_env(token_env)
    return {**({"revision": revision} if revision else {}), **({"token": token} if token else {}),
            **({"trust_remote_code": True} if trust_remote_code else {}),
            **({"code_revision": code_revision} if trust_remote_code and code_revision else {})}


def code_repositories(auto_map: Any) -> set[str]:
    """The other repositories whose code an `auto_map` names (`other/repo--module.Class`)."""
    entries = auto_map.values() if isinstance(auto_map, dict) else []
    names = [n for e in entries for n in (e if isinstance(e, (list, tuple)) else [e]) if isinstance(n, str)]
    return {n.split("--", 1)[0] for n in names if "--" in n}


def check_remote_code(name_or_path: str, raw_config: dict[str, Any], trust_remote_code: bool,
                      code_revision: str | None) -> None:
    """Before any code or weights download: a model that runs its own code needs trust_remote_code
    (and validation has its repository pinned); code from another repository, its own pin."""
    auto_map = raw_config.get("auto_map")
    if not auto_map:
        return
    if not trust_remote_code:
        raise UserError(f"model.trust_remote_code: got false, but {name_or_path!r} runs its own code from the "
                        "model repository (config.json has an auto_map); read that code, then set "
                        "model.trust_remote_code: true and pin model.revision to the commit you read")
    others = sorted(code_repositories(auto_map))
    if len(others) > 1:
        raise UserError(f"model.name_or_path: {name_or_path!r} runs code from {len(others)} other repositories "
                        f"({', '.join(others)}); one model.code_revision cannot pin them all: use a model whose "
                        "code lives in one place")
    if others and not limits.is_commit(code_revision):
        raise UserError(f"model.code_revision: got {code_revision!r}, but {name_or_path!r} runs code from another "
                        f"repository, {others[0]} (its config.json auto_map); read that code, then pin "
                        "model.code_revision to its 40-character commit hash")


def raw_config(name_or_path: str, revision: str | None, token_env: str | None) -> dict[str, Any]:
    """The model's config.json as written (no code runs to read it): a local file, or the one
    small file fetched from the hub."""
    where = resolve(name_or_path)
    if os.path.isdir(where):
        path = os.path.join(where, "config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(where, "config.json", revision=revision, token=secret.from_env(token_env))
    with open(path, encoding="utf-8") as f:
        found = json.load(f)
    return found if isinstance(found, dict) else {}


def load_config(name_or_path: str, revision: str | None = None, token_env: str | None = None,
                trust_remote_code: bool = False, code_revision: str | None = None):
    from transformers import AutoConfig

    where = resolve(name_or_path)
    if is_path(name_or_path):
        if not os.path.isdir(where) or not os.path.isfile(os.path.join(where, "config.json")):
            found = "a directory without config.json" if os.path.isdir(where) else "no such directory"
            raise UserError(f"model.name_or_path: got {name_or_path!r}, {found}; give a model directory "
                            "(saved with save_pretrained), a Hugging Face hub name, or "
                            f"{builtin.TINY_GPT2}")
    try:
        check_remote_code(name_or_path, raw_config(name_or_path, revision, token_env), trust_remote_code,
                          code_revision)
        return AutoConfig.from_pretrained(where, **hub_kwargs(revision, token_env, trust_remote_code, code_revision))
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"model.trust_remote_code: got {str(trust_remote_code).lower()}, but {name_or_path!r} "
                            "runs its own code from the model repository; read that code, then set "
                            "model.trust_remote_code: true and pin model.revision to the commit you read") from None
        raise UserError(f"model.name_or_path: cannot load {name_or_path!r} ({first_line(exc)}); "
                        "give a Hugging Face hub name, a local model directory, or "
                        f"{builtin.TINY_GPT2}") from None


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings allow (None: no fixed limit)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def load_tokenizer(name_or_path: str, revision: str | None = None, token_env: str | None = None,
                   trust_remote_code: bool = False, code_revision: str | None = None):
    """The model's tokenizer, with a pad token set (to EOS) where it has none, and said so."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path),
                                                  **hub_kwargs(revision, token_env, trust_remote_code,
                                                               code_revision))
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load the tokenizer of {name_or_path!r} "
                        f"({first_line(exc)})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"model.name_or_path: the tokenizer of {name_or_path!r} has neither a pad "
                            "nor an EOS token; packing needs an EOS token between documents")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: set it to the EOS token %r", tokenizer.eos_token)
    return tokenizer


def load_model(name_or_path: str | Path, revision: str | None = None, freeze_layers: int = 0,
               token_env: str | None = None, trust_remote_code: bool = False, reuse: bool = False,
               code_revision: str | None = None):
    """A causal LM from a hub name, a local path or a checkpoint, with the first blocks frozen.

    With `reuse`, the weights read once are kept in this process (up to `REUSE_MAX_BYTES`) and each
    call returns a fresh copy of them: the trials a reused worker runs one after another skip the read.
    """
    key = (str(name_or_path), revision, token_env, trust_remote_code, code_revision)
    if reuse and key in _pristine:
        model = copy.deepcopy(_pristine[key])
    else:
        model = _read(*key)
        if reuse and parameter_bytes(model) <= REUSE_MAX_BYTES:
            _pristine.clear()  # one base model per worker: a sweep has one
            _pristine[key] = copy.deepcopy(model)
    if freeze_layers:
        freeze(model, freeze_layers)
    return model


def with_lora(model, hyper: dict[str, Any], target_modules: list[str] | None = None):
    """The model with LoRA adapters (peft) on its attention and projection weights: only the
    adapters train. `target_modules` None leaves the choice to peft's table for the architecture."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(**hyperparams.keywords(hyper, "lora"), target_modules=target_modules,
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # an architecture peft has no default modules for
        raise UserError(f"model.lora_target_modules: peft cannot place LoRA on {type(model).__name__} "
                        f"({first_line(exc)}); name its linear layers, e.g. [q_proj, v_proj]") from None


def lora_problem(config, target_modules: list[str] | None) -> str | None:
    """Why LoRA cannot go on this architecture, checked from its config before any trial: peft has no
    default layers for it, or a named layer is not in the model (built on the meta device: no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    except ImportError:
        return ("model.use_lora: LoRA needs peft, which is not installed; install it with "
                "`pip install 'tuner[lora]'` (peft>=0.21.2,<0.22), or turn LoRA off")

    if target_modules is None:
        if config.model_type in DEFAULTS:
            return None
        return (f"model.lora_target_modules: peft has no default layers for {config.model_type!r}; name the "
                "linear layers LoRA should wrap, e.g. [q_proj, v_proj]")
    with torch.device("meta"):
        names = {name.rsplit(".", 1)[-1] for name, _ in AutoModelForCausalLM.from_config(config).named_modules()}
    missing = [m for m in target_modules if m not in names]
    if missing:
        return (f"model.lora_target_modules: got {missing!r}, not layers of {config.model_type!r}; its layers "
                f"include {sorted(n for n in names if n and not n.isdigit())[:12]!r}")
    return None


def is_adapter(path: str | Path) -> bool:
    """A checkpoint holding LoRA adapters (peft's adapter_config.json) rather than whole weights."""
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter(base, checkpoint: str | Path):
    """The base model with a LoRA checkpoint's adapters on it (peft), ready to evaluate or merge."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(checkpoint))


REUSE_MAX_BYTES = 4 * 2**30  # larger models are read again for each trial rather than held twice in RAM
_pristine: dict[tuple, Any] = {}  # this process's untouched copy of the base model, by how it was loaded


def _read(name: str, revision: str | None, token_env: str | None, trust_remote_code: bool,
          code_revision: str | None = None):
    """`from_pretrained` with PyTorch's fused attention (SDPA) where the model supports it."""
    from transformers import AutoModelForCausalLM

    kwargs = hub_kwargs(revision, token_env, trust_remote_code, code_revision)
    try:
        return AutoModelForCausalLM.from_pretrained(resolve(name), attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as exc:  # an architecture without an SDPA path
        log.info("model: no SDPA attention for %s (%s); using its own", name, first_line(exc))
        return AutoModelForCausalLM.from_pretrained(resolve(name), **kwargs)


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def freeze(model, num_layers: int) -> None:
    """Freeze the embeddings and the first `num_layers` transformer blocks."""
    blocks = transformer_blocks(model)
    if num_layers > len(blocks):
        raise UserError(f"freeze_layers: got {num_layers}, but the model has {len(blocks)} blocks; "
                        f"use at most {len(blocks)}")
    frozen = [model.get_input_embeddings(), *blocks[:num_layers]]
    positions = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2 style
    if positions is not None:
        frozen.append(positions)
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def transformer_blocks(model) -> list:
    """The model's stack of blocks: the ModuleList as long as `num_hidden_layers`."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    raise UserError(f"model: cannot find the {count} transformer blocks of "
                    f"{type(model).__name__} to freeze; set freeze_layers: 0")

