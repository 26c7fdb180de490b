"""tuner/datacheck.py on small files: each bad file refused with its path, the place in it (line,
byte, row) and the fix (`check`, `diagnose`, `column_problems`).

No Ray, no model: every test writes its files into `tmp_path`. The same files through the real CLI
(`validate` and `sweep`) are in tests/test_bad_data.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tuner import datacheck, datafiles
from tuner.errors import UserError
from tuner.spec import DataSpec

TEXTS = [f"record number {i} has some text" for i in range(5)]


def write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def jsonl(path: Path, rows: list) -> str:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def parquet(path: Path, columns: dict) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def refused(data: DataSpec) -> str:
    """`check`'s message for bad data; `diagnose` and `_quick_problems` say the same thing."""
    with pytest.raises(UserError) as caught:
        datacheck.check(data)
    message = str(caught.value)
    assert "Traceback" not in message
    return message


def good(tmp_path: Path, name: str = "good.jsonl") -> str:
    return jsonl(tmp_path / name, [{"text": t} for t in TEXTS])


# ---------------------------------------------------------------------------------------------
# JSON lines.


def test_a_malformed_json_line_is_named_by_file_and_line(tmp_path):
    lines = [json.dumps({"text": t}) for t in TEXTS]
    lines[2] = '{"text": "a"'
    path = write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}:3: not valid JSON (")
    assert "Expecting ',' delimiter" in message
    assert "fix or remove that line (JSON lines: one object per line)" in message
    files = datafiles.locate(DataSpec(path=path))
    assert datacheck.diagnose(files, DataSpec(path=path)) == [message]


def test_a_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "list.jsonl", '{"text": "a"}\n["b"]\n')
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}:2: a JSON list where a record")
    assert "one object per line" in message


def test_a_json_array_names_the_record(tmp_path):
    path = write(tmp_path / "records.json", json.dumps([{"text": "a"}, {"text": 7}, {"text": "c"}]))
    message = refused(DataSpec(path=path))
    assert f"{path}: column 'text' (data.text_column) holds numbers in 1 record(s), the first at record 2" in message
    assert "set data.text_column to a text column" in message
    broken = write(tmp_path / "broken.json", '[{"text": "a"},\n {"text": "b"\n]')
    message = refused(DataSpec(path=broken))
    assert message.startswith(f"{broken}:3: not valid JSON (") and "fix the file" in message


# ---------------------------------------------------------------------------------------------
# Empty files.


@pytest.mark.parametrize("content", ["", " \n\n\t \n"], ids=["empty", "whitespace"])
def test_an_empty_file_is_refused(tmp_path, content):
    path = write(tmp_path / "empty.jsonl", content)
    message = refused(DataSpec(path=path))
    assert message == (f"{path}: empty (no records); give data.path a file with text, or remove the "
                       "empty file(s)")


def test_a_glob_of_only_empty_files_is_refused(tmp_path):
    first = write(tmp_path / "parts" / "a.jsonl", "")
    second = write(tmp_path / "parts" / "b.jsonl", "\n \n")
    message = refused(DataSpec(path=str(tmp_path / "parts" / "*.jsonl")))
    assert message.startswith(f"{first}, {second}: empty (no records)")
    assert "remove the empty file(s)" in message


def test_a_glob_with_some_empty_files_skips_them_with_a_warning(tmp_path, caplog):
    empty = write(tmp_path / "parts" / "a.jsonl", "")
    kept = good(tmp_path / "parts", "b.jsonl")
    data = DataSpec(path=str(tmp_path / "parts" / "*.jsonl"))
    with caplog.at_level(logging.WARNING, logger="tuner"):
        assert datacheck.check(data) is None
    assert f"data: skipping 1 empty file(s): {empty}" in caplog.text
    files = datafiles.locate(data)
    assert files.all() == [empty, kept]
    with caplog.at_level(logging.WARNING, logger="tuner"):
        assert datacheck.quick_problems(files) == []
    assert files.splits == {"train": [kept]}


def test_an_empty_split_file_is_refused(tmp_path):
    good(tmp_path / "data", "train.jsonl")
    good(tmp_path / "data", "test.jsonl")
    empty = write(tmp_path / "data" / "valid.jsonl", "")
    message = refused(DataSpec(path=str(tmp_path / "data")))
    assert message.startswith(f"{empty}: empty (no records)")


# ---------------------------------------------------------------------------------------------
# Encodings.


@pytest.mark.parametrize("suffix, before, after", [
    (".jsonl", b'{"text": "fine"}\n{"text": "caf', b'"}\n'),
    (".csv", b"text,id\nfine,1\ncaf", b",2\n"),
    (".txt", b"fine\n\ncaf", b" au lait\n"),
])
def test_a_byte_that_is_not_utf8_is_named_by_offset(tmp_path, suffix, before, after):
    path = write(tmp_path / f"latin{suffix}", before + b"\xff" + after)
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}: byte {len(before)} is not utf-8 (invalid start byte, byte 0xff)")
    assert "convert the file to UTF-8, or set data.encoding to its encoding (e.g. latin-1, cp1252)" in message
    assert datacheck.check(DataSpec(path=path, encoding="latin-1")) is None


def test_a_character_cut_off_by_the_end_of_the_file(tmp_path):
    """The first byte of a two-byte character, then nothing: the decoder only sees it at the end."""
    before = b'{"text": "a"}\n'
    path = write(tmp_path / "cut.jsonl", before + b"\xc3")
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}: byte {len(before)} is not utf-8 (unexpected end of data, byte 0xc3)")


def test_a_bad_character_across_the_scans_chunks_is_named_at_its_first_byte(tmp_path):
    """The scan reads 1 MiB at a time: a character begun at the chunk's last byte is decoded with the
    next chunk, and still named by its own offset and byte."""
    start = (1 << 20) - 1
    path = write(tmp_path / "long.txt", b"a" * start + b"\xc3A rest\n")
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}: byte {start} is not utf-8 (invalid continuation byte, byte 0xc3)")


def test_a_utf8_byte_order_mark_is_not_part_of_the_data(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: not a bad JSON line, nor part of a column name."""
    bom = "\ufeff"
    jsonl_path = write(tmp_path / "bom.jsonl", bom + "".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    csv_path = write(tmp_path / "bom.csv", bom + "text,id\n" + "".join(f"{t},{i}\n" for i, t in enumerate(TEXTS)))
    assert datacheck.check(DataSpec(path=jsonl_path)) is None
    assert datacheck.check(DataSpec(path=csv_path)) is None
    assert datafiles.csv_header(csv_path, "utf-8") == ["text", "id"]


# ---------------------------------------------------------------------------------------------
# CSV.


def test_a_row_with_too_many_cells(tmp_path):
    path = write(tmp_path / "wide.csv", "text,id\na,1\nb, with a comma,2\nc,3\n")
    message = refused(DataSpec(path=path))
    assert message == (f"{path}:3: 3 cells where the header has 2 (1 ragged row(s) in all); quote cells that "
                       "hold commas, or fix those rows")


def test_a_row_with_too_few_cells(tmp_path):
    path = write(tmp_path / "short.csv", "text,id\na,1\nb,2\nc\n")
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}:4: 1 cells where the header has 2 (1 ragged row(s) in all)")


def test_ragged_rows_name_the_first_and_count_all(tmp_path):
    """Line numbers are the file's: a quoted cell over two lines counts two."""
    path = write(tmp_path / "ragged.csv", 'text,id\n"two\nlines",1\nshort\nb,2\nc,3,extra\n')
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}:4: 1 cells where the header has 2 (2 ragged row(s) in all)")
    assert "quote cells that hold commas, or fix those rows" in message


# ---------------------------------------------------------------------------------------------
# Parquet.


def test_a_parquet_suffix_on_a_file_that_is_not_parquet(tmp_path):
    path = write(tmp_path / "x.parquet", "text\nthis is a CSV file\n")
    files = datafiles.locate(DataSpec(path=path))
    quick = datacheck.quick_problems(files)
    assert quick == [(f"{path}: not a Parquet file (no Parquet footer); convert it, or give it the suffix of its "
                      "real format (.jsonl, .csv, .txt)")]
    assert refused(DataSpec(path=path)) == quick[0]


def test_a_parquet_file_that_cannot_be_read(tmp_path):
    path = write(tmp_path / "cut.parquet", b"PAR1" + b"\0" * 32 + b"PAR1")
    message = refused(DataSpec(path=path))
    assert message.startswith(f"{path}: not a readable Parquet file (") and "convert or replace it" in message


# ---------------------------------------------------------------------------------------------
# Columns.


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_missing_text_column_lists_the_columns_found(tmp_path, suffix):
    target = tmp_path / f"posts{suffix}"
    if suffix == ".jsonl":
        path = jsonl(target, [{"body": t, "id": i} for i, t in enumerate(TEXTS)])
    elif suffix == ".csv":
        path = write(target, "body,id\n" + "".join(f"{t},{i}\n" for i, t in enumerate(TEXTS)))
    else:
        path = parquet(target, {"body": TEXTS, "id": list(range(len(TEXTS)))})
    message = refused(DataSpec(path=path))
    assert message == (f"{path}: no column 'text' (data.text_column); the columns found are ['body', 'id']: "
                       "set data.text_column to one of them")


@pytest.mark.parametrize("values, held, count, first", [
    (["a", 3, "c", 4.5], "numbers", 2, 2),
    (["a", "b", None, "d"], "nulls", 1, 3),
    (["a", ["b"], "c"], "lists", 1, 2),
    ([True, "b"], "booleans", 1, 1),
    (["a", 1, None, ["x"]], "lists and nulls and numbers", 3, 2),
], ids=["numbers", "nulls", "lists", "booleans", "mixed"])
def test_a_json_column_that_is_not_text(tmp_path, values, held, count, first):
    path = jsonl(tmp_path / "kinds.jsonl", [{"text": v} for v in values])
    message = refused(DataSpec(path=path))
    assert message == (f"{path}: column 'text' (data.text_column) holds {held} in {count} line(s), the first at "
                       f"line {first}, where text is expected; fix those lines, or set data.text_column to a "
                       "text column")


def test_a_json_record_without_the_column_counts_as_null(tmp_path):
    path = jsonl(tmp_path / "holes.jsonl", [{"text": "a"}, {"body": "b"}, {"text": "c"}])
    assert refused(DataSpec(path=path)).startswith(
        f"{path}: column 'text' (data.text_column) holds nulls in 1 line(s), the first at line 2")


@pytest.mark.parametrize("values, held, count, first", [
    ([1, 2, 3], "numbers", 3, 1),
    (["a", None, "c", None], "nulls", 2, 2),
    ([["a"], ["b", "c"]], "lists", 2, 1),
], ids=["numbers", "nulls", "lists"])
def test_a_parquet_column_that_is_not_text(tmp_path, values, held, count, first):
    path = parquet(tmp_path / "kinds.parquet", {"text": values})
    message = refused(DataSpec(path=path))
    assert message == (f"{path}: column 'text' (data.text_column) holds {held} in {count} row(s), the first at "
                       f"row {first}, where text is expected; fix those rows, or set data.text_column to a "
                       "text column")


def test_column_problems_of_a_loaded_split():
    """After `datasets` loads a source (a hub dataset, where there is no file to scan)."""
    from datasets import Dataset

    data = DataSpec(dataset="org/name")
    assert datacheck.column_problems(Dataset.from_dict({"text": ["a", "b"]}), "train", data) == []
    assert datacheck.column_problems(Dataset.from_dict({"body": ["a"], "id": [1]}), "train", data) == [(
        "data.text_column: got 'text', but the train split has columns ['body', 'id']; set data.text_column "
        "to one of them")]
    assert datacheck.column_problems(Dataset.from_dict({"text": [1, 2]}), "validation", data) == [(
        "data.text_column: column 'text' of the validation split holds numbers where text is expected; set "
        "data.text_column to a text column")]
    assert datacheck.column_problems(Dataset.from_dict({"text": ["a", None, None]}), "test", data) == [(
        "data.text_column: column 'text' of the test split is empty (null) in 2 row(s), the first at row 2; "
        "fill or drop those rows")]
    chat = DataSpec(dataset="org/name", messages_column="messages")
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    assert datacheck.column_problems(Dataset.from_dict({"messages": messages}), "train", chat) == []
    assert datacheck.column_problems(Dataset.from_dict({"messages": ["hi"]}), "train", chat) == [(
        "data.messages_column: column 'messages' of the train split holds string where a list of {role, "
        "content} messages is expected; set data.messages_column to a column of such lists")]


# ---------------------------------------------------------------------------------------------
# Instruction and chat records.


def test_instruction_columns(tmp_path):
    path = jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(4)])
    assert datacheck.check(DataSpec(path=path, prompt_column="prompt", completion_column="answer")) is None
    message = refused(DataSpec(path=path, prompt_column="prompt", completion_column="completion"))
    assert message == (f"{path}: no column 'completion' (data.completion_column); the columns found are "
                       "['prompt', 'answer']: set data.completion_column to one of them")
    numbers = jsonl(tmp_path / "numbers.jsonl", [{"prompt": "q", "answer": "a"}, {"prompt": 2, "answer": "b"}])
    message = refused(DataSpec(path=numbers, prompt_column="prompt", completion_column="answer"))
    assert message.startswith(f"{numbers}: column 'prompt' (data.prompt_column) holds numbers in 1 line(s), "
                              "the first at line 2")


CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_a_messages_column(tmp_path):
    path = jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}] * 3)
    assert datacheck.check(DataSpec(path=path, messages_column="messages")) is None
    assert datacheck.check(DataSpec(path=parquet(tmp_path / "chat.parquet", {"messages": [CHAT] * 3}),
                                  messages_column="messages")) is None


@pytest.mark.parametrize("bad", [
    "hi",
    [{"role": "user"}],
    [{"role": "user", "content": 3}],
    [{"content": "hi"}],
    ["hi"],
], ids=["a-string", "no-content", "content-not-text", "no-role", "list-of-strings"])
def test_messages_of_the_wrong_shape_are_refused(tmp_path, bad):
    path = jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": CHAT}, {"messages": bad}])
    message = refused(DataSpec(path=path, messages_column="messages"))
    assert message == (f"{path}: column 'messages' (data.messages_column) holds values that are not lists of "
                       "{role, content} in 1 line(s), the first at line 3, where a list of {role, content} "
                       "messages is expected; fix those lines, or set data.messages_column to a column of such "
                       "lists")


def test_a_parquet_messages_column_of_strings_is_refused(tmp_path):
    path = parquet(tmp_path / "chat.parquet", {"messages": ["hi", "there"]})
    message = refused(DataSpec(path=path, messages_column="messages"))
    assert message.startswith(f"{path}: column 'messages' (data.messages_column) holds string in 2 row(s)")


# ---------------------------------------------------------------------------------------------
# Finding the files.


def test_good_data_of_each_format_passes(tmp_path):
    paths = [
        good(tmp_path),
        write(tmp_path / "records.json", json.dumps([{"text": t} for t in TEXTS], indent=2)),
        write(tmp_path / "rows.csv", 'text,id\n"with, a comma",1\n"two\nlines",2\n'),
        parquet(tmp_path / "rows.parquet", {"text": TEXTS, "id": list(range(len(TEXTS)))}),
        write(tmp_path / "notes.txt", "one paragraph\n\nanother one\n"),
    ]
    for path in paths:
        assert datacheck.check(DataSpec(path=path)) is None, path


def test_check_of_a_hub_dataset_reads_nothing():
    assert datacheck.check(DataSpec(dataset="org/name")) is None


# ---------------------------------------------------------------------------------------------
# Loading: `load` names the same file and place when `datasets` fails.


