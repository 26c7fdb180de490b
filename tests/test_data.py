"""Data preparation: dedup, splitting, and real `prepare` runs (Arrow end to end) on a tiny GPT-2."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tuner.data import (
    SPLITS,
    Prepared,
    check_prepared,
    clean_and_split,
    fingerprint,
    prepare,
    read_prepared,
    split_indices,
)
from tuner.errors import UserError
from tuner.spec import DataSpec, validate

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


# ---------------------------------------------------------------------------------------------
# split_indices.


def test_split_is_seeded():
    first = split_indices(100, RATIOS, seed=3)
    assert all(np.array_equal(first[s], split_indices(100, RATIOS, seed=3)[s]) for s in SPLITS)
    assert not np.array_equal(first["train"], split_indices(100, RATIOS, seed=4)["train"])


def test_split_shuffles_then_reads_in_order():
    train = split_indices(100, RATIOS, seed=0)["train"]
    assert not np.array_equal(train, np.arange(80))  # not the first 80
    assert np.all(np.diff(train) > 0)  # each split's records in file order


@pytest.mark.parametrize("n, ratios, sizes", [
    (100, RATIOS, (80, 10, 10)),
    (1000, {"train": 0.7, "validation": 0.2, "test": 0.1}, (700, 200, 100)),
    (10, RATIOS, (8, 1, 1)),
    (3, RATIOS, (1, 1, 1)),  # every split gets at least one record
    (5, {"train": 0.98, "validation": 0.01, "test": 0.01}, (3, 1, 1)),
    (4, {"train": 0.2, "validation": 0.4, "test": 0.4}, (1, 1, 2)),  # once a bug: train left empty
])
def test_split_sizes_follow_ratios(n, ratios, sizes):
    splits = split_indices(n, ratios, seed=0)
    assert tuple(len(splits[s]) for s in SPLITS) == sizes
    assert sorted(np.concatenate([splits[s] for s in SPLITS]).tolist()) == list(range(n))  # each once


@pytest.mark.parametrize("n", [0, 1, 2])
def test_split_needs_three_records(n):
    with pytest.raises(UserError, match=f"only {n} records left after cleaning"):
        split_indices(n, RATIOS, seed=0)


# ---------------------------------------------------------------------------------------------
# clean_and_split: Arrow datasets in, `select`s of the cleaned records out.


def source(**splits: list) -> dict:
    from datasets import Dataset

    return {name: Dataset.from_dict({"text": texts}) for name, texts in splits.items()}


def texts_of(splits: dict) -> dict[str, list[str]]:
    return {name: list(split["text"]) for name, split in splits.items()}


@pytest.mark.parametrize("validation_name", ["validation", "valid", "dev"])
def test_clean_and_split_uses_source_splits(validation_name):
    given = {"train": [f"train {i}" for i in range(20)], validation_name: ["val 0", "val 1"],
             "test": ["test 0", "test 1", "test 2"]}
    splits, counts = clean_and_split(DataSpec(path="x"), source(**given))
    assert texts_of(splits) == {"train": given["train"], "validation": ["val 0", "val 1"],
                                "test": ["test 0", "test 1", "test 2"]}
    assert counts["source"].startswith("own splits")


def test_clean_and_split_no_leakage_from_source_splits():
    given = source(train=["shared", "t1", "t2"], validation=["shared", "v1", "v2", "v1"],
                   test=["shared", "v2", "x1", "  "])
    splits, counts = clean_and_split(DataSpec(path="x"), given)
    assert texts_of(splits) == {"train": ["shared", "t1", "t2"], "validation": ["v1", "v2"], "test": ["x1"]}
    assert counts["cleaning"]["dropped_duplicate"] == 4 and counts["cleaning"]["dropped_empty"] == 1


def test_clean_and_split_max_records_with_source_splits():
    given = source(**{name: [f"{name}{i}" for i in range(10)] for name in SPLITS})
    splits, _ = clean_and_split(DataSpec(path="x", max_records=4), given)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "validation": 4, "test": 4}


def test_clean_and_split_without_splits_uses_seeded_ratio_split():
    kept = [f"line {i}" for i in range(50)] + ["tail\nend"]
    texts = kept[:50] + ["line 3", "", "  ", "tail\r\nend"]
    splits, counts = clean_and_split(DataSpec(path="x", seed=7), source(train=texts))
    picked = split_indices(51, RATIOS, 7)
    assert texts_of(splits) == {name: [kept[i] for i in picked[name]] for name in SPLITS}
    assert counts["cleaning"] == {"records_in": 54, "changed_line_endings": 1, "changed_strip_html": 0,
                                  "changed_normalize_whitespace": 0, "dropped_empty": 2,
                                  "dropped_duplicate": 1, "records_out": 51}
    assert counts["source"] == "seeded split 0.8/0.1/0.1"
    other, _ = clean_and_split(DataSpec(path="x", seed=8), source(train=texts))
    assert texts_of(other) != texts_of(splits)


def test_clean_and_split_keeps_other_rules_off_by_default():
    text = "<p>  indented   text  </p>"
    splits, counts = clean_and_split(DataSpec(path="x"), source(train=[text, "b", "c"]))
    assert text in [t for texts in texts_of(splits).values() for t in texts]
    assert counts["cleaning"]["records_out"] == 3


def test_clean_and_split_partial_source_splits_are_pooled():
    """A source with train and test but no validation is pooled and split by the ratios."""
    given = {"train": [f"a{i}" for i in range(30)], "test": [f"b{i}" for i in range(10)]}
    splits, counts = clean_and_split(DataSpec(path="x"), source(**given))
    assert counts["source"].startswith("seeded split")
    assert sorted(t for texts in texts_of(splits).values() for t in texts) == sorted(given["train"] + given["test"])
    assert tuple(len(splits[s]) for s in SPLITS) == (32, 4, 4)


def test_clean_and_split_max_records_before_seeded_split():
    splits, _ = clean_and_split(DataSpec(path="x", max_records=10), source(train=[f"r{i}" for i in range(100)]))
    assert sorted(t for texts in texts_of(splits).values() for t in texts) == sorted(f"r{i}" for i in range(10))


def test_clean_and_split_nothing_left_names_the_source_and_the_counts():
    texts = ["", "   ", "\n", "hello", "hello"]
    with pytest.raises(UserError, match=re.escape("data.path: only 1 record(s) of 'notes.jsonl' left after "
                                                  "cleaning (5 in, 3 empty, 1 duplicate)")):
        clean_and_split(DataSpec(path="notes.jsonl"), source(train=texts))


def test_clean_and_split_an_own_split_left_empty_is_named():
    given = source(train=["a", "b"], validation=["v"], test=["a", " ", ""])
    with pytest.raises(UserError, match=re.escape("data.dataset: no records left after cleaning in the "
                                                  "split(s) test of 'org/set' (6 in, 2 empty, 1 duplicate)")):
        clean_and_split(DataSpec(dataset="org/set"), given)


def test_clean_and_split_maps_hub_split_names():
    given = source(tr=["a", "b"], dev=["c"], eval=["d"], extra=["e"])
    splits, _ = clean_and_split(DataSpec(dataset="org/set", splits={"train": "tr", "validation": "dev",
                                                                        "test": "eval"}), given)
    assert texts_of(splits) == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    with pytest.raises(UserError, match="data.splits: 'org/set' has no split 'nope'"):
        clean_and_split(DataSpec(dataset="org/set", splits={"train": "tr", "validation": "nope", "test": "eval"}),
                        given)


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
    # duplicates (exact, and equal once CRLF becomes LF) and an empty record: cleaning must drop them
    records = lines + lines[:20] + [line.replace(" ", "\r\n", 1) for line in lines[20:30]] + [""]
    records[20:30] = [line.replace(" ", "\n", 1) for line in records[20:30]]
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
    from tuner import sources

    spec, sweep_dir, _, _ = prepared_run
    tokenizer = model_lib.load_tokenizer(spec.model.name_or_path)
    loaded = sources.load(spec.data, None, sweep_dir.parent / "independent-cache")
    splits, counts = clean_and_split(spec.data, loaded)
    splits = {name: list(split["text"]) for name, split in splits.items()}
    totals = {name: sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
              for name, texts in splits.items()}
    return splits, counts, totals, tokenizer.eos_token_id


def test_prepare_cleans_the_source(prepared_run, independent):
    _, _, result, lines = prepared_run
    splits, counts, _, _ = independent
    assert counts["cleaning"]["dropped_duplicate"] == 30 and counts["cleaning"]["dropped_empty"] == 1
    assert counts["cleaning"]["changed_line_endings"] == 10
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
    assert sorted(p.name for p in (sweep_dir / "data").iterdir()) == [result.fingerprint, "summary.json"]


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


def test_prepared_instruction_data_has_labels_and_test_pairs(instruction_run):
    from tuner.data import load_prepared, read_pairs
    from tuner.packing import IGNORE

    _, prepared, rows = instruction_run
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


def test_a_chat_template_formats_each_prompt_as_a_user_turn(instruction_run):
    from tuner import model as model_lib
    from tuner.packing import format_prompt

    tokenizer = model_lib.load_tokenizer(instruction_run[0].model.name_or_path)
    assert format_prompt("hello", tokenizer, chat_template=False) == "hello"
    tokenizer.chat_template = "{% for m in messages %}<user>{{ m.content }}</user>{% endfor %}<bot>"
    assert format_prompt("hello", tokenizer, chat_template=True) == "<user>hello</user><bot>"


# ---------------------------------------------------------------------------------------------
# Arrow end to end: the same blocks whatever num_proc, own split files, streaming, chat records.


def arrow_rows(prepared) -> dict[str, list]:
    from tuner.data import load_prepared

    loaded = load_prepared(prepared)
    return {name: [list(row) for row in loaded[name]["input_ids"]] for name in SPLITS}


def spec_for(path, **data):
    return validate({"name": "e2e", "model": {"name_or_path": "builtin:tiny-gpt2"},
                     "data": {"path": str(path), "block_size": BLOCK, **data}, "search": {"num_samples": 1}})


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """2,500 distinct records, with duplicates and blanks spread through: enough batches of 1,000 for
    two processes to share the cleaning and tokenizing."""
    lines = corpus_lines(300)
    records = [f"{i}: {lines[i % 300]}" for i in range(2500)] + [lines[0]] * 30 + ["  "] * 10
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    return path


def test_the_same_spec_gives_the_same_blocks_whatever_num_proc(big_corpus, tmp_path):
    one = prepare(spec_for(big_corpus, num_proc=1), tmp_path / "one")
    two = prepare(spec_for(big_corpus, num_proc=2), tmp_path / "two")
    assert one.fingerprint == two.fingerprint  # num_proc decides how fast, not what
    assert one.blocks == two.blocks and one.records == two.records
    assert arrow_rows(one) == arrow_rows(two)
    summary = json.loads((tmp_path / "two" / "data" / "summary.json").read_text())
    assert summary["num_proc"] == 2
    assert summary["cleaning"]["dropped_duplicate"] == 29 and summary["cleaning"]["dropped_empty"] == 10


def test_the_summary_says_what_each_step_did(prepared_run, independent):
    _, sweep_dir, result, _ = prepared_run
    _, _, totals, _ = independent
    summary = json.loads((sweep_dir / "data" / "summary.json").read_text())
    assert summary["cleaning"]["records_in"] == 331 and summary["cleaning"]["records_out"] == 300
    assert summary["records"] == result.records and summary["blocks"] == result.blocks
    assert summary["tokens"] == totals  # every token, and an EOS per record
    for name in SPLITS:
        assert sum(summary["length_histogram"]["counts"][name]) == result.records[name]
        assert summary["packing_efficiency"][name] == pytest.approx(result.tokens[name] / totals[name], abs=1e-4)


def test_a_directory_with_its_own_split_files_is_used_as_is(tmp_path):
    lines = corpus_lines(120)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, rows in {"train": lines[:80], "valid": lines[80:100], "test": lines[100:]}.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (folder / "README.md").write_text("not data")
    result = prepare(spec_for(folder), tmp_path / "sweep")
    assert result.records == {"train": 80, "validation": 20, "test": 20}  # no re-split
    summary = json.loads((tmp_path / "sweep" / "data" / "summary.json").read_text())
    assert summary["split"] == "own splits: train = train, validation = validation, test = test"


def test_streaming_local_files_honours_max_records_and_gives_the_same_blocks(big_corpus, tmp_path):
    streamed = prepare(spec_for(big_corpus, streaming=True, max_records=400), tmp_path / "streamed")
    assert sum(streamed.records.values()) == 400
    loaded = prepare(spec_for(big_corpus, max_records=400), tmp_path / "loaded")
    assert arrow_rows(streamed) == arrow_rows(loaded)  # the first 400 records have nothing to drop


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    """The tiny GPT-2 with a chat template in its tokenizer."""
    import shutil

    from tuner import builtin
    from tuner import model as model_lib

    root = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(builtin.tiny_gpt2_path(), root)
    tokenizer = model_lib.load_tokenizer(str(root))
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tokenizer.save_pretrained(root)
    return str(root)


def test_chat_records_learn_the_assistant_turns(chat_model, tmp_path):
    from tuner.data import load_prepared, read_pairs
    from tuner.packing import IGNORE

    lines = corpus_lines(200)
    rows = [{"messages": [{"role": "user", "content": lines[i][:40]}, {"role": "assistant", "content": lines[i]}]}
            for i in range(200)]
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})  # nothing to learn: dropped
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = validate({"name": "chat", "model": {"name_or_path": chat_model},
                     "data": {"path": str(path), "messages_column": "messages", "block_size": BLOCK},
                     "search": {"num_samples": 1}})
    prepared = prepare(spec, tmp_path / "sweep")
    assert sum(prepared.records.values()) == 200
    train = load_prepared(prepared)["train"]
    masked = sum(label == IGNORE for labels in train["labels"] for label in labels)
    assert 0 < masked < sum(len(labels) for labels in train["labels"])
    pairs = read_pairs(prepared)
    assert len(pairs) == prepared.records["test"] and all(p and c for p, c in pairs)


def test_prepared_blocks_hold_the_built_in_paragraphs_with_brackets_and_code_verbatim(tmp_path):
    """By default no character of a kept record changes: the blocks decode back to every paragraph
    with `<` or `>` in it, and to an indented code block, exactly."""
    from tests.test_cleaning import CODE, builtin_paragraphs_with_brackets
    from tuner import model as model_lib
    from tuner.data import load_prepared

    records = list(dict.fromkeys(builtin_paragraphs_with_brackets())) + [CODE]
    path = tmp_path / "brackets.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    prepared = prepare(spec_for(path, block_size=2), tmp_path / "sweep")  # drops at most a final EOS
    assert sum(prepared.records.values()) == len(records)
    tokenizer = model_lib.load_tokenizer("builtin:tiny-gpt2")
    loaded = load_prepared(prepared)
    decoded = "".join(tokenizer.decode([t for row in loaded[name]["input_ids"] for t in row]) for name in SPLITS)
    assert [r for r in records if r not in decoded] == []


def test_a_hub_dataset_is_read_at_its_pinned_revision(monkeypatch, tmp_path):
    """No hub here: `load_dataset` is replaced by one that records what it was asked for."""
    import datasets

    from tuner import sources

    asked = {}

    def fake_load(name, config=None, **kwargs):
        asked.update(name=name, config=config, **kwargs)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b", "c"]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    loaded = sources.load(DataSpec(dataset="org/set", config="en", revision="0123abcd"), None, tmp_path)
    assert list(loaded) == ["train"]
    assert (asked["name"], asked["config"], asked["revision"]) == ("org/set", "en", "0123abcd")
    assert asked["cache_dir"] == str(tmp_path) and asked["streaming"] is False


def test_mapping_in_pieces_gives_the_same_blocks(big_corpus, tmp_path, monkeypatch):
    """Cleaning and tokenizing a piece at a time (each piece's workers end with it: their memory-mapped
    reads leave with them) changes nothing in the blocks."""
    from tuner import packing

    whole = prepare(spec_for(big_corpus, num_proc=2), tmp_path / "whole")
    monkeypatch.setattr(packing, "PIECE_BYTES", 1)  # the smallest pieces: a batch per process
    pieces = prepare(spec_for(big_corpus, num_proc=2, seed=0), tmp_path / "pieces")
    assert arrow_rows(pieces) == arrow_rows(whole)
    assert len(list((tmp_path / "pieces" / "data").glob("*/arrow/train/*.arrow"))) == 1
