"""Where local data files are found: one file, a glob, a directory's own split files or one pool."""

from __future__ import annotations

import pytest

from tests.test_datacheck import good, refused, write
from tuner import datacheck, datafiles
from tuner.spec import DataSpec, validate


def test_a_glob_of_mixed_file_types_is_refused(tmp_path):
    good(tmp_path / "mixed", "a.jsonl")
    write(tmp_path / "mixed" / "b.csv", "text\nb\n")
    for pattern in [str(tmp_path / "mixed" / "*"), str(tmp_path / "mixed")]:
        message = refused(DataSpec(path=pattern))
        assert message == (f"data.path: {pattern!r} matches files of type .csv, .jsonl; use files of one type "
                           "among .csv, .json, .jsonl, .parquet, .text, .txt (a narrower glob, or one folder each)")


@pytest.mark.parametrize("pattern", ["nothing/*.jsonl", "missing.jsonl", "empty-dir", "only-notes"])
def test_a_path_that_matches_no_data_file_is_refused(tmp_path, pattern):
    (tmp_path / "empty-dir").mkdir()
    write(tmp_path / "only-notes" / "README.md", "not data\n")
    write(tmp_path / "only-notes" / ".hidden.jsonl", '{"text": "a"}\n')
    path = str(tmp_path / pattern)
    message = refused(DataSpec(path=path))
    assert message == (f"data.path: no data file matches {path!r}; give an existing file, glob or directory "
                       "(formats: .csv, .json, .jsonl, .parquet, .text, .txt) or builtin:pydoc-topics")


def test_a_directory_with_split_files_is_its_own_splits(tmp_path):
    folder = tmp_path / "data"
    train, valid, test = (good(folder, name) for name in ["train.jsonl", "valid.jsonl", "test.jsonl"])
    good(folder, "notes.jsonl")  # neither split: not read
    files = datafiles.locate(DataSpec(path=str(folder)))
    assert files.own and files.kind == "json"
    assert list(files.splits) == ["train", "validation", "test"]
    assert files.splits == {"train": [train], "validation": [valid], "test": [test]}
    assert datacheck.check(DataSpec(path=str(folder))) is None


def test_split_files_by_their_other_names(tmp_path):
    folder = tmp_path / "data"
    for name in ["Train.csv", "dev.csv", "test.csv"]:
        write(folder / name, "text\na\n")
    files = datafiles.locate(DataSpec(path=str(folder)))
    assert files.own and files.kind == "csv"
    assert files.splits["validation"] == [str(folder / "dev.csv")]


def test_data_splits_name_files_inside_the_directory(tmp_path):
    folder = tmp_path / "data"
    parts = [good(folder, f"part-{i}.jsonl") for i in range(2)]
    held = good(folder, "held.jsonl")
    final = good(folder, "final.jsonl")
    splits = {"train": "part-*.jsonl", "validation": "held.jsonl", "test": "final.jsonl"}
    data = validate({"name": "splits", "model": {"name_or_path": "builtin:tiny-gpt2"}, "search": {"num_samples": 1},
                     "data": {"path": str(folder), "splits": splits}}).data
    files = datafiles.locate(data)
    assert files.own and files.splits == {"train": parts, "validation": [held], "test": [final]}
    data.splits = {**splits, "test": "missing.jsonl"}
    message = refused(data)
    assert message == (f"data.splits.test: no file matches 'missing.jsonl' in {folder}; name a file or glob "
                       "inside data.path")


def test_data_splits_with_a_path_that_is_not_a_directory(tmp_path):
    path = good(tmp_path)
    data = DataSpec(path=path, splits={"train": "a.jsonl", "validation": "b.jsonl", "test": "c.jsonl"})
    message = refused(data)
    assert message == (f"data.splits: names split files, but data.path {path!r} is not a directory; point "
                       "data.path at the directory that holds them")


def test_a_directory_without_split_files_is_one_pool(tmp_path):
    folder = tmp_path / "data"
    top = good(folder, "a.jsonl")
    nested = good(folder / "more", "b.jsonl")
    good(folder, "train.jsonl")  # a train file alone is not a set of splits
    write(folder / ".hidden.jsonl", "not json\n")
    write(folder / ".cache" / "c.jsonl", "not json\n")
    write(folder / "README.md", "about the data\n")
    files = datafiles.locate(DataSpec(path=str(folder)))
    assert not files.own and files.kind == "json"
    assert files.splits == {"train": sorted([top, nested, str(folder / "train.jsonl")])}
    assert datacheck.check(DataSpec(path=str(folder))) is None


def test_a_directory_with_some_split_files_is_pooled_with_a_warning(tmp_path, caplog):
    good(tmp_path / "parts", "train.jsonl")
    good(tmp_path / "parts", "valid.jsonl")
    with caplog.at_level("WARNING", logger="tuner"):
        files = datafiles.locate(DataSpec(path=str(tmp_path / "parts")))
    assert not files.own and len(files.all()) == 2
    assert "has train and validation file(s) but no test: all its data files are pooled" in caplog.text


def test_a_folder_too_large_to_be_data_is_refused_not_walked(tmp_path, monkeypatch):
    from tuner import datafiles
    from tuner.errors import UserError
    from tuner.spec import DataSpec

    for i in range(30):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "a.txt").write_text("text\n")
    monkeypatch.setattr(datafiles, "SCAN_LIMIT", 40)
    for pattern in (str(tmp_path), str(tmp_path / "**" / "*.txt")):
        with pytest.raises(UserError, match=r"reaches more than 40 files and folders; point it at the folder"):
            datafiles.locate(DataSpec(path=pattern))
    monkeypatch.setattr(datafiles, "SCAN_LIMIT", 100)
    assert len(datafiles.locate(DataSpec(path=str(tmp_path))).all()) == 30
