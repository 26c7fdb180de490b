"""Data preparation: cleaning, splitting, packing, and one small real `prepare` on a tiny GPT-2."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tuner.data import (SPLITS, Prepared, _to_dataset, check_prepared, clean_and_split, clean_records,
                        clean_text, fingerprint, pack, prepare, read_prepared, split_records)
from tuner.errors import UserError
from tuner.spec import CleanSpec, DataSpec, validate

ALL_ON = CleanSpec()
ALL_OFF = CleanSpec(strip_html=False, normalize_whitespace=False, drop_empty=False, drop_duplicates=False)
RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


# ---------------------------------------------------------------------------------------------
# clean_text.


def test_clean_text_strips_tags_and_unescapes_entities():
    assert clean_text("<p>Fish &amp; chips</p>", ALL_ON) == "Fish & chips"
    assert clean_text('a<br/>b <a href="x">link</a>', ALL_ON) == "a b link"


def test_clean_text_entities_are_unescaped_after_tags_are_removed():
    """An escaped tag is text the author meant: it survives as literal '<b>'."""
    assert clean_text("use &lt;b&gt; for bold", ALL_ON) == "use <b> for bold"


def test_clean_text_normalises_whitespace():
    text = "  one\t\ttwo \u00a0three  \r\nfour   \n"
    assert clean_text(text, ALL_ON) == "one two three\nfour"


def test_clean_text_collapses_blank_lines():
    assert clean_text("para one\n\n\n  \n\t\npara two\n\n\npara three", ALL_ON) == \
        "para one\n\npara two\n\npara three"


def test_clean_text_switches_off():
    text = "  <b>bold</b> &amp;\t\tmore \n\n\n\nend  "
    assert clean_text(text, ALL_OFF) == text
    only_html = CleanSpec(strip_html=True, normalize_whitespace=False)
    assert clean_text("<b>x</b>  y", only_html) == " x   y"
    only_space = CleanSpec(strip_html=False, normalize_whitespace=True)
    assert clean_text("  <b>x</b>   &amp; ", only_space) == "<b>x</b> &amp;"


# ---------------------------------------------------------------------------------------------
# clean_records.


def test_clean_records_counts():
    texts = ["alpha", "  ", "<p></p>", "beta", "alpha", "  alpha  ", None, "gamma", "beta"]
    kept, counts = clean_records(texts, ALL_ON)
    assert kept == ["alpha", "beta", "gamma"]
    assert counts == {"records_in": 9, "dropped_empty": 3, "dropped_duplicate": 3, "records_out": 3}


def test_clean_records_duplicates_judged_after_cleaning():
    kept, counts = clean_records(["a  b", "a b", "<i>a</i> b"], ALL_ON)
    assert kept == ["a b"] and counts["dropped_duplicate"] == 2


def test_clean_records_switches_off_keep_everything():
    texts = ["x", "", "x"]
    kept, counts = clean_records(texts, ALL_OFF)
    assert kept == texts
    assert counts == {"records_in": 3, "dropped_empty": 0, "dropped_duplicate": 0, "records_out": 3}


def test_clean_records_shares_seen_across_calls():
    seen: set[str] = set()
    first, _ = clean_records(["a", "b"], ALL_ON, seen)
    second, counts = clean_records(["b", "c", "a", "d"], ALL_ON, seen)
    assert first == ["a", "b"]
    assert second == ["c", "d"]
    assert counts["dropped_duplicate"] == 2 and counts["records_out"] == 2
    assert seen == {"a", "b", "c", "d"}


def test_clean_records_without_seen_calls_are_independent():
    clean_records(["a"], ALL_ON)
    kept, _ = clean_records(["a"], ALL_ON)
    assert kept == ["a"]


# ---------------------------------------------------------------------------------------------
# split_records.

TEXTS = [f"record {i}" for i in range(100)]


def test_split_is_seeded():
    assert split_records(TEXTS, RATIOS, seed=3) == split_records(TEXTS, RATIOS, seed=3)
    assert split_records(TEXTS, RATIOS, seed=3) != split_records(TEXTS, RATIOS, seed=4)


def test_split_shuffles():
    assert split_records(TEXTS, RATIOS, seed=0)["train"] != TEXTS[:80]


@pytest.mark.parametrize("n, ratios, sizes", [
    (100, RATIOS, (80, 10, 10)),
    (1000, {"train": 0.7, "validation": 0.2, "test": 0.1}, (700, 200, 100)),
    (10, RATIOS, (8, 1, 1)),
    (3, RATIOS, (1, 1, 1)),  # every split gets at least one record
    (5, {"train": 0.98, "validation": 0.01, "test": 0.01}, (3, 1, 1)),
])
def test_split_sizes_follow_ratios(n, ratios, sizes):
    texts = [f"t{i}" for i in range(n)]
    splits = split_records(texts, ratios, seed=0)
    assert tuple(len(splits[s]) for s in SPLITS) == sizes
    assert sorted(t for s in SPLITS for t in splits[s]) == sorted(texts)  # nothing lost or repeated


def test_split_no_record_in_two_splits():
    splits = split_records(TEXTS, RATIOS, seed=1)
    train, val, test = (set(splits[s]) for s in SPLITS)
    assert not (train & val or train & test or val & test)
    assert len(train) + len(val) + len(test) == len(TEXTS)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_split_needs_three_records(n):
    with pytest.raises(UserError, match=f"only {n} records left after cleaning"):
        split_records([f"t{i}" for i in range(n)], RATIOS, seed=0)


# ---------------------------------------------------------------------------------------------
# pack.

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


@pytest.mark.parametrize("lengths, block_size", [
    ((5, 3, 7), 4), ((10,), 11), ((10,), 5), ((1, 1, 1, 1), 3), ((30, 2, 9, 14), 8), ((3,), 16),
])
def test_pack_cuts_full_blocks_without_padding(lengths, block_size):
    token_lists = docs(*lengths)
    flat = stream(token_lists)
    blocks = pack(token_lists, EOS, block_size, keep_remainder=False)
    assert len(blocks) == len(flat) // block_size
    assert all(len(b) == block_size for b in blocks)
    joined = np.concatenate(blocks).tolist() if blocks else []
    assert joined == flat[: len(blocks) * block_size]


def test_pack_inserts_eos_after_each_document():
    blocks = pack([[5, 6], [7], [8, 9, 10]], eos_id=99, block_size=3, keep_remainder=True)
    assert [b.tolist() for b in blocks] == [[5, 6, 99], [7, 99, 8], [9, 10, 99]]


@pytest.mark.parametrize("lengths, block_size, remainder", [
    ((5, 3, 7), 4, 2),  # 18 tokens: 4 blocks + 2
    ((5, 3, 6), 4, 1),  # 17 tokens: 4 blocks + 1 (predicts nothing: dropped)
    ((5, 3, 4), 4, 3),  # 15 tokens: 3 blocks + 3
    ((3, 3), 4, 0),  # 8 tokens: 2 blocks, no remainder
    ((3,), 16, 4),  # only a partial block
])
def test_pack_keep_remainder(lengths, block_size, remainder):
    token_lists = docs(*lengths)
    flat = stream(token_lists)
    rest = len(flat) % block_size
    assert rest == remainder  # the premise of the case
    kept = pack(token_lists, EOS, block_size, keep_remainder=True)
    dropped = pack(token_lists, EOS, block_size, keep_remainder=False)
    assert len(dropped) == len(flat) // block_size
    if rest >= 2:
        assert len(kept) == len(dropped) + 1
        assert kept[-1].tolist() == flat[-rest:]
    else:
        assert len(kept) == len(dropped)
    assert np.concatenate(kept).tolist() == flat[: len(flat) - (rest if rest < 2 else 0)]


def test_pack_empty_input():
    assert pack([], EOS, 4, keep_remainder=True) == []
    assert pack([[]], EOS, 4, keep_remainder=True) == []  # a lone EOS predicts nothing


def test_pack_dtype():
    blocks = pack(docs(7, 7), EOS, 4, keep_remainder=False)
    assert all(b.dtype == np.int32 for b in blocks)


def test_to_dataset_rows_match_blocks():
    blocks = [np.arange(4, dtype=np.int32), np.arange(4, 8, dtype=np.int32), np.array([8, 9], np.int32)]
    ds = _to_dataset(blocks)
    assert ds.column_names == ["input_ids"]
    assert ds["input_ids"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(_to_dataset([])) == 0


# ---------------------------------------------------------------------------------------------
# clean_and_split.


@pytest.mark.parametrize("validation_name", ["validation", "valid", "dev"])
def test_clean_and_split_uses_source_splits(validation_name):
    source = {"train": [f"train {i}" for i in range(20)],
              validation_name: ["val 0", "val 1"], "test": ["test 0", "test 1", "test 2"]}
    splits, counts = clean_and_split(DataSpec(path="x"), source)
    assert splits == {"train": source["train"], "validation": ["val 0", "val 1"],
                      "test": ["test 0", "test 1", "test 2"]}
    assert counts["source"] == "own splits"


def test_clean_and_split_no_leakage_from_source_splits():
    source = {"train": ["shared", "t1", "t2"], "validation": ["shared", "v1", "v2", "v1"],
              "test": ["<b>shared</b>", "v2", "x1"]}
    splits, counts = clean_and_split(DataSpec(path="x"), source)
    assert splits == {"train": ["shared", "t1", "t2"], "validation": ["v1", "v2"], "test": ["x1"]}
    assert counts["validation"]["dropped_duplicate"] == 2
    assert counts["test"]["dropped_duplicate"] == 2


def test_clean_and_split_max_records_with_source_splits():
    source = {"train": [f"t{i}" for i in range(10)], "validation": [f"v{i}" for i in range(10)],
              "test": [f"x{i}" for i in range(10)]}
    splits, _ = clean_and_split(DataSpec(path="x", max_records=4), source)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "validation": 4, "test": 4}


def test_clean_and_split_without_splits_uses_seeded_ratio_split():
    texts = [f"line {i}" for i in range(50)] + ["line 3", "", "  line 4 "]
    data = DataSpec(path="x", seed=7)
    splits, counts = clean_and_split(data, {"train": texts})
    expected = split_records([f"line {i}" for i in range(50)], RATIOS, 7)
    assert splits == expected
    assert counts["all"]["dropped_duplicate"] == 2 and counts["all"]["dropped_empty"] == 1
    assert counts["source"] == "seeded split 0.8/0.1/0.1"
    other, _ = clean_and_split(DataSpec(path="x", seed=8), {"train": texts})
    assert other != splits


def test_clean_and_split_partial_source_splits_are_pooled():
    """A source with train and test but no validation is pooled and split by the ratios."""
    source = {"train": [f"a{i}" for i in range(30)], "test": [f"b{i}" for i in range(10)]}
    splits, counts = clean_and_split(DataSpec(path="x"), source)
    assert counts["source"].startswith("seeded split")
    assert sorted(t for s in SPLITS for t in splits[s]) == sorted(source["train"] + source["test"])
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (32, 4, 4)


def test_clean_and_split_max_records_before_seeded_split():
    splits, _ = clean_and_split(DataSpec(path="x", max_records=10), {"train": [f"r{i}" for i in range(100)]})
    assert sorted(t for s in SPLITS for t in splits[s]) == sorted(f"r{i}" for i in range(10))


def test_clean_and_split_nothing_left_names_the_source_and_the_counts():
    texts = ["<p></p>", "   ", "<br/>", "hello", "hello"]
    with pytest.raises(UserError, match=re.escape("data.path: only 1 record(s) of 'notes.jsonl' left after "
                                                  "cleaning (5 in, 3 empty, 1 duplicate)")):
        clean_and_split(DataSpec(path="notes.jsonl"), {"train": texts})


def test_clean_and_split_an_own_split_left_empty_is_named():
    source = {"train": ["a", "b"], "validation": ["v"], "test": ["a", " ", "<b></b>"]}
    with pytest.raises(UserError, match=re.escape("data.dataset: no records left after cleaning in the "
                                                  "split(s) test (3 in, 2 empty, 1 duplicate) of 'org/set'")):
        clean_and_split(DataSpec(dataset="org/set"), source)


# ---------------------------------------------------------------------------------------------
# check_prepared.


def prepared(blocks: dict[str, int], tokens: dict[str, int] | None = None, block_size: int = 64) -> Prepared:
    return Prepared(path="unused", tokenizer_path="unused", fingerprint="0" * 16, block_size=block_size,
                    blocks=blocks, tokens=tokens or {k: v * block_size for k, v in blocks.items()},
                    records=dict.fromkeys(SPLITS, 10))


def data_spec(**data):
    return validate({"name": "d", "model": {"name_or_path": "builtin:tiny-gpt2"},
                     "data": {"path": "x.jsonl", **data}, "search": {"num_samples": 1}})


def test_check_prepared_zero_blocks_names_block_size():
    spec = data_spec(block_size=64)
    with pytest.raises(UserError, match=r"data\.block_size: got 64, but the validation split has only 40 tokens"):
        check_prepared(spec, prepared({"train": 10, "validation": 0, "test": 1},
                                      {"train": 640, "validation": 40, "test": 50}))


def test_check_prepared_reports_every_empty_split():
    with pytest.raises(UserError) as info:
        check_prepared(data_spec(), prepared({"train": 0, "validation": 0, "test": 0}))
    message = str(info.value)
    assert all(f"the {s} split has only 0 tokens" in message for s in SPLITS)
    assert "fewer than the largest effective batch" not in message  # zero blocks is said once


def test_check_prepared_train_smaller_than_batch():
    with pytest.raises(UserError, match="the train split has 3 blocks, fewer than the largest effective batch"):
        check_prepared(data_spec(), prepared({"train": 3, "validation": 1, "test": 1}))  # batch 8


def test_check_prepared_names_the_fields_behind_the_largest_batch():
    spec = validate({"name": "d", "model": {"name_or_path": "builtin:tiny-gpt2"}, "data": {"path": "x.jsonl"},
                     "train": {"gradient_accumulation_steps": 2},
                     "search": {"space": {"per_device_train_batch_size": {"type": "categorical",
                                                                          "choices": [8, 16]}}}})
    with pytest.raises(UserError, match=re.escape(
            "search.space.per_device_train_batch_size × train.gradient_accumulation_steps: the train split "
            "has 20 blocks, fewer than the largest effective batch (16 × 2 = 32 blocks)")):
        check_prepared(spec, prepared({"train": 20, "validation": 1, "test": 1}))


def test_check_prepared_passes():
    check_prepared(data_spec(), prepared({"train": 8, "validation": 1, "test": 1}))  # one batch of 8


# ---------------------------------------------------------------------------------------------
# fingerprint.


def test_data_fingerprint(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n')
    spec = data_spec(path=str(path))
    first = fingerprint(spec)
    assert fingerprint(data_spec(path=str(path))) == first
    assert fingerprint(data_spec(path=str(path), block_size=64)) != first
    assert fingerprint(data_spec(path=str(path), seed=1)) != first
    # training settings do not decide the data
    same = validate({**spec.to_dict(), "origin": None, "train": {"learning_rate": 1e-3}})
    assert fingerprint(same) == first
    path.write_text('{"text": "a"}\n{"text": "b"}\n')  # the source changed
    assert fingerprint(spec) != first


# ---------------------------------------------------------------------------------------------
# prepare, end to end on a local file and the built-in tiny GPT-2.

BLOCK = 32


def corpus_lines(count: int = 300) -> list[str]:
    """Distinct English-like lines: whole short paragraphs of CPython's reference docs."""
    from pydoc_data.topics import topics

    lines, seen = [], set()
    for topic in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[topic]):
            line = " ".join(paragraph.split())
            if 30 <= len(line) <= 160 and line[0].isalpha() and line not in seen:
                seen.add(line)
                lines.append(line)
    assert len(lines) >= count
    return lines[:count]


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    lines = corpus_lines()
    # duplicates (exact, and equal after cleaning) and an empty record: cleaning must drop them
    records = lines + lines[:20] + [f"<p>{line}</p>" for line in lines[20:30]] + [""]
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    spec = validate({"name": "prep", "model": {"name_or_path": "builtin:tiny-gpt2"},
                     "data": {"path": str(path), "block_size": BLOCK, "seed": 1},
                     "search": {"num_samples": 1}})
    sweep_dir = root / "sweep"
    result = prepare(spec, sweep_dir)
    return spec, sweep_dir, result, lines


@pytest.fixture(scope="module")
def independent(prepared_run):
    """Token counts per split computed here, from the same cleaning/splitting and tokenizer."""
    from tuner import model as model_lib
    from tuner.data import load_source

    spec, _, _, _ = prepared_run
    tokenizer = model_lib.load_tokenizer(spec.model.name_or_path)
    splits, counts = clean_and_split(spec.data, load_source(spec.data))
    totals = {name: sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
              for name, texts in splits.items()}
    return splits, counts, totals, tokenizer.eos_token_id


def test_prepare_cleans_the_source(prepared_run, independent):
    _, _, result, lines = prepared_run
    splits, counts, _, _ = independent
    assert counts["all"]["dropped_duplicate"] == 30 and counts["all"]["dropped_empty"] == 1
    assert result.records == {name: len(splits[name]) for name in SPLITS}
    assert sum(result.records.values()) == len(lines)
    assert result.records == {"train": 240, "validation": 30, "test": 30}


def test_prepare_block_counts(prepared_run, independent):
    _, _, result, _ = prepared_run
    _, _, totals, _ = independent
    for name in ("train", "validation"):
        assert result.blocks[name] == totals[name] // BLOCK
        assert result.tokens[name] == result.blocks[name] * BLOCK
    rest = totals["test"] % BLOCK
    assert rest >= 2, "this corpus should leave a test remainder (pick another BLOCK)"
    assert result.blocks["test"] == totals["test"] // BLOCK + 1
    assert result.tokens["test"] == totals["test"]
    assert result.block_size == BLOCK and result.train_tokens() == result.blocks["train"] * BLOCK


def test_prepare_writes_arrow_that_loads(prepared_run, independent):
    from datasets import load_from_disk

    _, sweep_dir, result, _ = prepared_run
    _, _, totals, _ = independent
    assert result.path == str(sweep_dir / "data" / result.fingerprint / "arrow")
    loaded = load_from_disk(result.path)
    assert set(loaded) == set(SPLITS)
    for name in SPLITS:
        assert len(loaded[name]) == result.blocks[name]
    for name in ("train", "validation"):
        assert {len(row) for row in loaded[name]["input_ids"]} == {BLOCK}
    test_rows = loaded["test"]["input_ids"]
    assert all(len(row) == BLOCK for row in test_rows[:-1])
    assert len(test_rows[-1]) == totals["test"] % BLOCK


def test_prepare_no_text_in_two_splits(prepared_run, independent):
    """Every EOS-terminated document in the packed data belongs to exactly one split."""
    from datasets import load_from_disk

    _, _, result, _ = prepared_run
    splits, _, _, eos = independent
    loaded = load_from_disk(result.path)
    documents = {}
    for name in SPLITS:
        flat = [t for row in loaded[name]["input_ids"] for t in row]
        cuts = [i for i, t in enumerate(flat) if t == eos]
        starts = [0] + [i + 1 for i in cuts[:-1]]
        documents[name] = {tuple(flat[s:e]) for s, e in zip(starts, cuts)}
        assert len(documents[name]) == len(cuts)  # no duplicate document inside a split either
        assert len(documents[name]) >= 0.9 * len(splits[name])
    assert not documents["train"] & documents["validation"]
    assert not documents["train"] & documents["test"]
    assert not documents["validation"] & documents["test"]
    texts = {name: set(splits[name]) for name in SPLITS}
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"]
                or texts["validation"] & texts["test"])


def test_prepare_saves_tokenizer_and_metadata(prepared_run):
    from transformers import AutoTokenizer

    _, sweep_dir, result, _ = prepared_run
    meta = json.loads((sweep_dir / "data" / result.fingerprint / "prepared.json").read_text())
    assert (meta["path"], meta["tokenizer_path"]) == ("arrow", "tokenizer")  # relative: the sweep may move
    assert read_prepared(sweep_dir / "data" / result.fingerprint) == result
    tokenizer = AutoTokenizer.from_pretrained(result.tokenizer_path)
    assert tokenizer.pad_token == tokenizer.eos_token  # set by preparation: the tiny GPT-2 has none


def test_prepare_reuses_prepared_data(prepared_run):
    spec, sweep_dir, result, _ = prepared_run
    meta_path = sweep_dir / "data" / result.fingerprint / "prepared.json"
    before = meta_path.stat().st_mtime_ns
    again = prepare(spec, sweep_dir)
    assert again.fingerprint == result.fingerprint == fingerprint(spec)
    assert again == result
    assert meta_path.stat().st_mtime_ns == before
    assert [p.name for p in (sweep_dir / "data").iterdir()] == [result.fingerprint]


# ---------------------------------------------------------------------------------------------
# Regression: this was a bug once.


def test_regression_split_can_leave_train_empty():
    splits = split_records(["a", "b", "c", "d"], {"train": 0.2, "validation": 0.4, "test": 0.4}, seed=0)
    assert all(splits[name] for name in SPLITS), {k: len(v) for k, v in splits.items()}


# ---------------------------------------------------------------------------------------------
# Instruction data: prompt and completion columns, the loss masked on the prompt.


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory):
    """Question/answer records made from the docs: the first half of a line asks, the rest answers."""
    root = tmp_path_factory.mktemp("instruct")
    rows = []
    for line in corpus_lines(300):
        words = line.split()
        half = len(words) // 2
        rows.append({"question": "Q: " + " ".join(words[:half]) + "\nA:", "answer": " " + " ".join(words[half:])})
    rows.append({"question": "an unanswered question", "answer": "   "})  # an empty completion: dropped
    path = root / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = validate({"name": "instruct", "model": {"name_or_path": "builtin:tiny-gpt2"},
                     "data": {"path": str(path), "prompt_column": "question", "completion_column": "answer",
                              "block_size": BLOCK},
                     "search": {"num_samples": 1}})
    return spec, prepare(spec, root / "sweep"), rows


def test_instruction_records_mask_their_prompts(instruction_run):
    from tuner import model as model_lib
    from tuner.data import IGNORE, tokenize

    spec, _, rows = instruction_run
    tokenizer = model_lib.load_tokenizer(spec.model.name_or_path)
    ids, labels = tokenize([(rows[0]["question"], rows[0]["answer"])], tokenizer, spec.data)
    prompt = tokenizer(rows[0]["question"], add_special_tokens=False)["input_ids"]
    completion = tokenizer(rows[0]["answer"], add_special_tokens=False)["input_ids"]
    assert ids[0] == prompt + completion
    assert labels[0] == [IGNORE] * len(prompt) + completion


def test_prepared_instruction_data_has_labels_and_test_pairs(instruction_run):
    from tuner.data import IGNORE, load_prepared, read_pairs

    spec, prepared, rows = instruction_run
    assert prepared.records["train"] + prepared.records["validation"] + prepared.records["test"] == len(rows) - 1
    for split in SPLITS:
        data = load_prepared(prepared)[split]
        assert data.column_names == ["input_ids", "labels"]
        for ids, labels in zip(data["input_ids"], data["labels"]):
            assert len(ids) == len(labels)
            assert any(label != IGNORE for label in labels[1:])  # every block has something to predict
            assert all(label in (token, IGNORE) for token, label in zip(ids, labels))
        masked = sum(label == IGNORE for labels in data["labels"] for label in labels)
        assert 0 < masked < sum(len(labels) for labels in data["labels"])
    pairs = read_pairs(prepared)
    assert len(pairs) == prepared.records["test"] and all(p and c for p, c in pairs)


def test_instruction_data_needs_both_columns():
    with pytest.raises(Exception, match="data.completion_column: missing while data.prompt_column is 'q'"):
        validate({"name": "x", "model": {"name_or_path": "builtin:tiny-gpt2"},
                  "data": {"path": "x.jsonl", "prompt_column": "q"}})


def test_a_chat_template_the_tokenizer_lacks_is_refused(instruction_run):
    from tuner import model as model_lib
    from tuner.data import format_prompt

    tokenizer = model_lib.load_tokenizer(instruction_run[0].model.name_or_path)
    with pytest.raises(UserError, match="data.chat_template: got true, but the model's tokenizer has no chat template"):
        format_prompt("hello", tokenizer, chat_template=True)
    tokenizer.chat_template = "{% for m in messages %}<user>{{ m.content }}</user>{% endfor %}<bot>"
    assert format_prompt("hello", tokenizer, chat_template=True) == "<user>hello</user><bot>"
