"""Built-in assets for runs with no network: a corpus every Python has and a tiny GPT-2.

`builtin:pydoc-topics` is the Python reference documentation that CPython ships in
`pydoc_data.topics`; `builtin:tiny-gpt2` is a 2-layer, 64-wide GPT-2 with a byte-level BPE tokenizer
trained on that corpus. Both are made on first use and cached outside the checkout
(`$TUNER_CACHE`, default `~/.cache/tuner`), then read like any local file or model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PREFIX = "builtin:"
CORPUS = "builtin:pydoc-topics"
TINY_GPT2 = "builtin:tiny-gpt2"
TINY_CONFIG: dict[str, Any] = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}
TINY_VOCAB = 1024


def cache_root() -> Path:
    return Path(os.environ.get("TUNER_CACHE", Path.home() / ".cache" / "tuner")).expanduser()


def is_builtin(name: str | None) -> bool:
    return name is not None and name.startswith(PREFIX)


def corpus_path() -> Path:
    """The pydoc topics as JSON lines, one paragraph a record (field `text`)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = cache_root() / "builtin" / f"pydoc-topics-py{version}.jsonl"
    if not path.exists():
        from pydoc_data.topics import topics

        lines = [json.dumps({"text": paragraph.strip()})
                 for topic in sorted(topics) for paragraph in re.split(r"\n\s*\n", topics[topic])]
        _write_atomically(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return path


def tiny_gpt2_path() -> Path:
    """A randomly initialised (seeded) tiny GPT-2 and its tokenizer, saved as a local model dir."""
    path = cache_root() / "builtin" / f"tiny-gpt2-v{TINY_VOCAB}-l{TINY_CONFIG['n_layer']}-d{TINY_CONFIG['n_embd']}"
    if not (path / "config.json").exists():
        _write_atomically(path, _make_tiny_gpt2)
    return path


def _make_tiny_gpt2(out: Path) -> None:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in corpus_path().read_text().splitlines()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=TINY_VOCAB, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    # No pad token on purpose, like GPT-2 itself: data preparation sets one and says so.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        model_max_length=TINY_CONFIG["n_positions"])
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, **TINY_CONFIG)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_atomically(path: Path, write) -> None:
    """Build in a temporary sibling, then rename: concurrent first uses never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    target = tmp / path.name
    try:
        write(target)
        try:
            os.replace(target, path)
        except OSError:  # another process won the race with a directory of its own
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
