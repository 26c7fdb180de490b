"""Loading local files through `datasets`: good data as it is, a bad file named by its place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_datacheck import TEXTS, refused, write
from tuner import datacheck, sources
from tuner.errors import UserError
from tuner.spec import DataSpec


def test_load_names_the_bad_line(tmp_path):
    lines = [json.dumps({"text": t}) for t in TEXTS]
    lines[2] = '{"text": "a"'
    path = write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    for streaming in (False, True):
        with pytest.raises(UserError) as caught:
            sources.load(DataSpec(path=path, streaming=streaming), None, tmp_path / f"cache-{streaming}")
        assert str(caught.value).startswith(f"{path}:3: not valid JSON ("), streaming


def test_load_reads_a_csv_with_a_byte_order_mark(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufefftext,id\n" + "".join(f"{t},{i}\n" for i, t in enumerate(TEXTS)))
    loaded = sources.load(DataSpec(path=path), None, tmp_path / "cache")
    assert loaded["train"].column_names == ["text", "id"]
    assert loaded["train"]["text"] == TEXTS


def test_json_that_is_not_utf8_is_refused_once_its_records_are_read(tmp_path):
    """Arrow's JSON reader takes the bytes on trust: the bad one is met when cleaning first reads the
    record (no extra pass over good data), and named there, not left to a traceback."""
    from tuner.data import clean_and_split

    before = b'{"text": "fine"}\n{"text": "caf'
    path = write(tmp_path / "latin.jsonl", before + b'\xe9"}\n')
    for streaming in (False, True):
        data = DataSpec(path=path, streaming=streaming)
        with pytest.raises(UserError) as caught:
            clean_and_split(data, sources.load(data, None, tmp_path / f"cache-{streaming}"))
        assert str(caught.value).startswith(f"{path}: byte {len(before)} is not utf-8"), streaming
    loaded = sources.load(DataSpec(path=path, encoding="latin-1"), None, tmp_path / "cache-latin")
    assert loaded["train"]["text"] == ["fine", "café"]


def test_csv_files_with_other_columns_than_the_first(tmp_path):
    """Each file is fine alone, but all are read with the first file's columns; the order may differ."""
    first = write(tmp_path / "parts" / "a.csv", "text,id\na,1\n")
    write(tmp_path / "parts" / "b.csv", "id,text\n2,b\n")
    other = write(tmp_path / "parts" / "c.csv", "text,source\nc,web\n")
    pattern = str(tmp_path / "parts" / "*.csv")
    message = refused(DataSpec(path=pattern))
    assert message == (f"{other}:1: columns ['text', 'source'], where {first} has ['text', 'id']; give every "
                       "CSV file the same columns")
    with pytest.raises(UserError) as caught:
        sources.load(DataSpec(path=pattern), None, tmp_path / "cache")
    assert str(caught.value) == message
    Path(other).unlink()
    assert datacheck.check(DataSpec(path=pattern)) is None
    assert sorted(sources.load(DataSpec(path=pattern), None, tmp_path / "cache2")["train"]["text"]) == ["a", "b"]
