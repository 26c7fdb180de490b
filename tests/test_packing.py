"""Packing token lists into blocks (one streaming pass over Arrow), tokenizing, chat turns."""

from __future__ import annotations

import pytest

from tuner.errors import UserError
from tuner.packing import IGNORE, chat_ids, check_chat_template, pack, tokenize_batch
from tuner.spec import DataSpec

EOS = 0


def docs(*lengths: int) -> list[list[int]]:
    """Documents of the given lengths with distinct, non-EOS token ids."""
    out, next_id = [], 1
    for n in lengths:
        out.append(list(range(next_id, next_id + n)))
        next_id += n
    return out


def stream(token_lists: list[list[int]]) -> list[int]:
    return [t for ids in token_lists for t in (*ids, EOS)]


def packed(token_lists, block_size, keep_remainder, tmp_path, labels=None, batch=None):
    """`pack` on a Dataset of these token lists; the rows it wrote, and its stats."""
    from datasets import Dataset

    from tuner import packing

    columns = {"input_ids": token_lists, **({"labels": labels} if labels is not None else {})}
    if batch is not None:  # small Arrow batches: the carry across batches is exercised
        original, packing.BATCH = packing.BATCH, batch
    try:
        stats = pack(Dataset.from_dict(columns), EOS, block_size, keep_remainder, tmp_path / "p.arrow")
    finally:
        if batch is not None:
            packing.BATCH = original
    return Dataset.from_file(str(tmp_path / "p.arrow")), stats


@pytest.mark.parametrize("lengths, block_size", [
    ((5, 3, 7), 4), ((10,), 11), ((10,), 5), ((1, 1, 1, 1), 3), ((30, 2, 9, 14), 8), ((3,), 16),
])
def test_pack_cuts_full_blocks_without_padding(lengths, block_size, tmp_path):
    token_lists = docs(*lengths)
    flat = stream(token_lists)
    out, stats = packed(token_lists, block_size, False, tmp_path)
    assert len(out) == stats.blocks == len(flat) // block_size
    assert all(len(row) == block_size for row in out["input_ids"])
    assert [t for row in out["input_ids"] for t in row] == flat[: len(out) * block_size]
    assert stats.tokens == len(flat) and stats.records == len(lengths)


def test_pack_carries_the_remainder_across_batches(tmp_path):
    """Blocks do not depend on how records fall into batches (or processes): only the split's last
    partial block is dropped."""
    token_lists = docs(*[(7 * i) % 11 + 1 for i in range(60)])
    flat = stream(token_lists)
    one, _ = packed(token_lists, 8, True, tmp_path, batch=1000)
    (tmp_path / "small").mkdir()
    many, _ = packed(token_lists, 8, True, tmp_path / "small", batch=1)
    assert one["input_ids"] == many["input_ids"]
    assert len(one) == -(-len(flat) // 8)


def test_pack_writes_the_same_blocks_in_record_batches_of_any_size(tmp_path, monkeypatch):
    from tuner.packing import _BlockWriter

    token_lists = docs(*[(5 * i) % 13 + 1 for i in range(80)])
    whole, _ = packed(token_lists, 4, True, tmp_path)
    monkeypatch.setattr(_BlockWriter, "WRITE_ROWS", 3)
    (tmp_path / "small").mkdir()
    small, stats = packed(token_lists, 4, True, tmp_path / "small")
    assert small["input_ids"] == whole["input_ids"] and stats.blocks == len(whole)


def test_pack_inserts_eos_after_each_document(tmp_path):
    from datasets import Dataset

    pack(Dataset.from_dict({"input_ids": [[5, 6], [7], [8, 9, 10]]}), 99, 3, True, tmp_path / "p.arrow")
    assert Dataset.from_file(str(tmp_path / "p.arrow"))["input_ids"] == [[5, 6, 99], [7, 99, 8], [9, 10, 99]]


@pytest.mark.parametrize("lengths, block_size, remainder", [
    ((5, 3, 7), 4, 2),  # 18 tokens: 4 blocks + 2
    ((5, 3, 6), 4, 1),  # 17 tokens: 4 blocks + 1 (predicts nothing: dropped)
    ((3, 3), 4, 0),  # 8 tokens: 2 blocks, no remainder
    ((3,), 16, 4),  # only a partial block
])
def test_pack_keep_remainder(lengths, block_size, remainder, tmp_path):
    token_lists = docs(*lengths)
    flat = stream(token_lists)
    assert len(flat) % block_size == remainder  # the premise of the case
    kept, _ = packed(token_lists, block_size, True, tmp_path)
    full = len(flat) // block_size
    assert len(kept) == full + (remainder >= 2)
    if remainder >= 2:
        assert kept["input_ids"][-1] == flat[-remainder:]


def test_pack_empty_input_writes_an_empty_split(tmp_path):
    out, stats = packed([[]], 4, True, tmp_path)  # a lone EOS predicts nothing
    assert len(out) == 0 and out.column_names == ["input_ids"] and stats.efficiency() == 0


def test_pack_drops_blocks_with_nothing_to_predict(tmp_path):
    ids = [[1, 2, 3, 4, 5, 6, 7], [8, 9]]
    labels = [[IGNORE] * 7, [8, 9]]  # the first record's 7 tokens and EOS: a whole block of prompt
    out, stats = packed(ids, 4, True, tmp_path, labels=labels)
    assert out["labels"][0] == [IGNORE, IGNORE, IGNORE, EOS]  # the EOS after the prompt is predicted
    rows = list(zip(out["input_ids"], out["labels"]))
    assert all(any(label != IGNORE for label in labels[1:]) for _, labels in rows)
    assert stats.blocks == len(out)


def test_pack_writes_int32_and_counts_lengths(tmp_path):
    out, stats = packed(docs(7, 7, 1), 4, False, tmp_path)
    assert str(out.features["input_ids"].feature.dtype) == "int32"
    assert sum(stats.length_counts) == 3
    assert stats.efficiency() == pytest.approx(16 / 18)


def test_tokenize_batch_masks_prompts():
    from tuner import model as model_lib

    tokenizer = model_lib.load_tokenizer("builtin:tiny-gpt2")
    data = DataSpec(path="x", prompt_column="q", completion_column="a")
    out = tokenize_batch({"q": ["Q: what?\nA:"], "a": [" this."]}, tokenizer, data)
    prompt = tokenizer("Q: what?\nA:", add_special_tokens=False)["input_ids"]
    completion = tokenizer(" this.", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0] == prompt + completion
    assert out["labels"][0] == [IGNORE] * len(prompt) + completion


TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_tokenizer():
    from tuner import model as model_lib

    tokenizer = model_lib.load_tokenizer("builtin:tiny-gpt2")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_chat_ids_learn_the_assistant_turns_only():
    tokenizer = chat_tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "see you"}]
    ids, labels = chat_ids(messages, tokenizer)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == whole
    learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])
    assert learned == "hello there<|end|>\nsee you<|end|>\n"
    assert all(label in (token, IGNORE) for token, label in zip(ids, labels))


def test_chat_data_needs_a_chat_template():
    from tuner import model as model_lib

    tokenizer = model_lib.load_tokenizer("builtin:tiny-gpt2")
    with pytest.raises(UserError, match="data.messages_column: the model's tokenizer has no chat template"):
        check_chat_template(tokenizer, DataSpec(path="x", messages_column="messages"))
    with pytest.raises(UserError, match="data.chat_template: the model's tokenizer has no chat template"):
        check_chat_template(tokenizer, DataSpec(path="x", prompt_column="q", completion_column="a",
                                                chat_template=True))
    check_chat_template(chat_tokenizer(), DataSpec(path="x", messages_column="messages"))


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(UserError, match="does not render a conversation as its turns one after another"):
        chat_ids([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tokenizer)
