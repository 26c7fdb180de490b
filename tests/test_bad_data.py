"""Bad data files through the real CLI, one test per data row of docs/bad-input.md's table, each
through `validate` (which reads every local file through: `datacheck.check`) and `sweep` (which meets
the file while it prepares the data: `sources.load`, before any trial).

Both must exit 2 with one message naming the file and the place in it (line, byte, row), and no
traceback. As in tests/test_bad_input.py, Ray and W&B are replaced by a failure, so a bad file that
slips through fails the test instead of starting a search; the model is a tiny local GPT-2 made
below, so `sweep` gets to the data in seconds. tests/test_sources.py has the same files, and more
cases, at the level of tuner/sources.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from tests.conftest import TINY, write_tiny_model
from tuner import sweep, tracking

TEXTS = [f"record number {i} is a short line of text for the tiny model" for i in range(12)]
LATIN = b'{"text": "fine"}\n{"text": "caf'  # then 0xe9, é in latin-1: byte len(LATIN) is not UTF-8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (config and tokenizer), and one folder of bad data files."""
    root = tmp_path_factory.mktemp("bad-data")
    write_tiny_model(root / "model", TEXTS)

    def write(name: str, content: str | bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    def jsonl(name: str, rows: list) -> None:
        write(name, "".join(json.dumps(row) + "\n" for row in rows))

    lines = [json.dumps({"text": t}) for t in TEXTS[:5]]
    lines[2] = '{"text": "a"'
    write("broken.jsonl", "\n".join(lines) + "\n")
    write("empty.jsonl", "")
    write("blank/a.jsonl", "")
    write("blank/b.jsonl", " \n\n\t\n")
    write("latin.jsonl", LATIN + b'\xe9"}\n')
    write("ragged.csv", "text,id\nfirst,1\nshort\nthird,3\nfourth,4,extra\n")
    write("table.parquet", "text,id\nthis is a CSV file,1\n")
    jsonl("posts.jsonl", [{"body": t, "id": i} for i, t in enumerate(TEXTS)])
    jsonl("kinds.jsonl", [{"text": v} for v in ["fine", 42, None, ["a", "list"], "fine again"]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2, 3, 4]}), root / "numbers.parquet")
    jsonl("mixed/a.jsonl", [{"text": t} for t in TEXTS])
    write("mixed/b.csv", "text\n" + "\n".join(TEXTS) + "\n")
    return root


# id (the docs/bad-input.md row), data.path, substrings of the message: the file, the place, the fix.
ROWS = [
    pytest.param("broken.jsonl", ["{inputs}/broken.jsonl:3: not valid JSON (Expecting ',' delimiter",
                                  "fix or remove that line (JSON lines: one object per line)"],
                 id="malformed-json-line"),
    pytest.param("empty.jsonl", ["{inputs}/empty.jsonl: empty (no records)",
                                 "give data.path a file with text, or remove the empty file(s)"], id="empty-file"),
    pytest.param("blank/*.jsonl", ["{inputs}/blank/a.jsonl, {inputs}/blank/b.jsonl: empty (no records)"],
                 id="glob-of-empty-files"),
    pytest.param("latin.jsonl", [(f"{{inputs}}/latin.jsonl: byte {len(LATIN)} is not utf-8 (invalid continuation "
                                  "byte, byte 0xe9)"), "convert the file to UTF-8, or set data.encoding"],
                 id="not-utf8"),
    pytest.param("ragged.csv", ["{inputs}/ragged.csv:3: 1 cells where the header has 2 (2 ragged row(s) in all)",
                                "quote cells that hold commas, or fix those rows"], id="ragged-csv"),
    pytest.param("table.parquet", ["{inputs}/table.parquet: not a Parquet file (no Parquet footer)",
                                   "give it the suffix of its real format"], id="not-parquet"),
    pytest.param("posts.jsonl", ["{inputs}/posts.jsonl: no column 'text' (data.text_column)",
                                 "the columns found are ['body', 'id']: set data.text_column to one of them"],
                 id="missing-column"),
    pytest.param("kinds.jsonl", [("{inputs}/kinds.jsonl: column 'text' (data.text_column) holds lists and nulls "
                                  "and numbers in 3 line(s), the first at line 2"),
                                 "set data.text_column to a text column"],
                 id="not-text-jsonl"),
    pytest.param("numbers.parquet", [("{inputs}/numbers.parquet: column 'text' (data.text_column) holds numbers "
                                      "in 4 row(s), the first at row 1"), "set data.text_column to a text column"],
                 id="not-text-parquet"),
    pytest.param("mixed/*", ["data.path: '{inputs}/mixed/*' matches files of type .csv, .jsonl",
                             "use files of one type among"], id="mixed-types"),
    pytest.param("nothing/*.jsonl", ["data.path: no data file matches '{inputs}/nothing/*.jsonl'",
                                     "give an existing file, glob or directory"], id="nothing-matches"),
]


def _must_not_run(*args, **kwargs):
    raise AssertionError("the search was about to start: the bad data got past the checks")


@pytest.mark.parametrize("command", ["validate", "sweep"])
@pytest.mark.parametrize("path, needles", ROWS)
def test_bad_data_exits_2_naming_file_and_place(command, path, needles, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "init_ray", _must_not_run)
    monkeypatch.setattr(tracking, "Tracker", _must_not_run)
    sweep_dir = tmp_path / "sweep"
    code = launch.main([command, str(TINY), "--set", f"storage={sweep_dir}",
                        "--set", f"model.name_or_path={inputs}/model", "--set", f"data.path={inputs}/{path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("tuner: error:") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle.replace("{inputs}", str(inputs)) in err, err
    assert not (sweep_dir / "trials").exists()
    if command == "validate":
        assert not sweep_dir.exists()  # validate builds nothing


def test_latin1_data_passes_validate_with_its_encoding(inputs, tmp_path, capsys, monkeypatch):
    """The fix the not-UTF-8 message gives works."""
    monkeypatch.setattr(sweep, "init_ray", _must_not_run)
    code = launch.main(["validate", str(TINY), "--set", f"storage={tmp_path / 'sweep'}",
                        "--set", f"model.name_or_path={inputs}/model", "--set", f"data.path={inputs}/latin.jsonl",
                        "--set", "data.encoding=latin-1"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
