"""Where a sweep's local data files are: one file, a glob, or a directory (with its own split files,
or one pool of data files), all of one format. Reads nothing but names, sizes and a CSV header."""

from __future__ import annotations

import csv
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tuner import builtin, limits
from tuner.errors import UserError
from tuner.spec import DataSpec

log = logging.getLogger("tuner")

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                 "test": ("test",)}
FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
           ".parquet": "parquet"}
POOL = "train"  # the one split name of a pool of files, split later by data.split


@dataclass
class Files:
    """Local files by the source's split names; `own` when they are the train/validation/test files."""

    splits: dict[str, list[str]]
    kind: str
    own: bool

    def all(self) -> list[str]:
        return [f for files in self.splits.values() for f in files]


def fields(data: DataSpec) -> dict[str, str]:
    """The spec keys naming the columns a record is read from, and the columns."""
    if data.messages_column:
        return {"data.messages_column": data.messages_column}
    if data.prompt_column:
        assert data.completion_column is not None  # the spec's data check pairs them
        return {"data.prompt_column": data.prompt_column, "data.completion_column": data.completion_column}
    return {"data.text_column": data.text_column}


def locate(data: DataSpec) -> Files:
    """The files `data.path` names, by split: a directory's own split files (by name, or as
    `data.splits` names them) are used as they are; anything else is one pool."""
    pattern = data.path
    assert pattern is not None  # every caller asks only of a local source: one with data.path set
    path = str(builtin.corpus_path()) if pattern == builtin.CORPUS else os.path.expanduser(pattern)
    if os.path.isdir(path):
        splits = _split_files(path, data.splits)
        if splits:
            return Files(splits, _kind(pattern, [f for fs in splits.values() for f in fs]), own=True)
        files = [f for f in _walk(path, pattern) if Path(f).suffix.lower() in FORMATS]
    elif data.splits:
        raise UserError(f"data.splits: names split files, but data.path {pattern!r} is not a directory; "
                        "point data.path at the directory that holds them")
    else:
        if "**" in path:  # recursive: first make sure the tree under it is a data folder's size
            for _ in _bounded_walk(_fixed_prefix(path), pattern):
                pass
        files = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise UserError(f"data.path: no data file matches {pattern!r}; give an existing file, glob or "
                        f"directory (formats: {', '.join(sorted(FORMATS))}) or {builtin.CORPUS}")
    return Files({POOL: files}, _kind(pattern, files), own=False)


SCAN_LIMIT = 1_000_000  # entries a directory or glob may reach before it is taken for not a data folder


def _walk(directory: str, pattern: str) -> list[str]:
    """The files under `directory`, not under dot-folders (.git, .cache) nor dot-files: not the
    user's data. Bounded: `data.path: /` must not walk the whole machine."""
    found: list[str] = []
    for root, dirs, files in _bounded_walk(directory, pattern):
        found += [os.path.join(root, f) for f in files if not f.startswith(".")]
    return sorted(f for f in found if os.path.isfile(f))


def _fixed_prefix(pattern: str) -> str:
    """The folder a glob starts from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = list(parts[:next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))])
    return str(Path(*fixed)) if fixed else "."


def _bounded_walk(directory: str, pattern: str):
    """os.walk past dot-folders (.git, .cache: not the user's data, nor what a `**` glob matches),
    refused at a system directory or once it has seen SCAN_LIMIT entries."""
    if str(Path(directory).resolve()) in limits.SYSTEM_DIRS:
        raise UserError(f"data.path: got {pattern!r}, which would read the system directory {directory}; point it "
                        "at the folder that holds the data, or a glob of the data files")
    seen = 0
    for step in os.walk(directory, followlinks=True):
        step[1][:] = sorted(d for d in step[1] if not d.startswith("."))
        seen += len(step[1]) + len(step[2])
        if seen > SCAN_LIMIT:
            raise UserError(f"data.path: got {pattern!r}, which reaches more than {SCAN_LIMIT:,} files and folders; "
                            "point it at the folder that holds the data, or a glob of the data files")
        yield step


def _split_files(directory: str, named: dict[str, str] | None) -> dict[str, list[str]] | None:
    """train/validation/test files of a directory: as `data.splits` names them (files or globs in
    the directory), else by their names (train.jsonl, valid.jsonl, dev.csv, test.txt ...)."""
    if named:
        out = {}
        for ours in SPLITS:
            pattern = os.path.join(directory, named[ours])
            found = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
            if not found:
                raise UserError(f"data.splits.{ours}: no file matches {named[ours]!r} in {directory}; "
                                "name a file or glob inside data.path")
            out[ours] = found
        return out
    by_stem: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(directory)):
        stem, suffix = Path(entry).stem.lower(), Path(entry).suffix.lower()
        if suffix in FORMATS and os.path.isfile(os.path.join(directory, entry)):
            by_stem.setdefault(stem, []).append(os.path.join(directory, entry))
    out = {}
    for ours, aliases in SPLIT_ALIASES.items():
        match = next((by_stem[a] for a in aliases if a in by_stem), None)
        if match is not None:
            out[ours] = match
    if out and len(out) < len(SPLITS):  # a user who named two splits meant them: say what happens
        log.warning("data.path: %s has %s file(s) but no %s: all its data files are pooled and split by "
                    "data.split; add the missing split's file, or name the files in data.splits", directory,
                    " and ".join(out), " or ".join(s for s in SPLITS if s not in out))
    return out if len(out) == len(SPLITS) else None


def _kind(pattern: str, files: list[str]) -> str:
    found = [FORMATS.get(Path(f).suffix.lower()) for f in files]
    kinds = {k for k in found if k is not None}
    if None in found or len(kinds) != 1:
        suffixes = sorted({Path(f).suffix or "(none)" for f in files})
        raise UserError(f"data.path: {pattern!r} matches files of type {', '.join(suffixes)}; use files "
                        f"of one type among {', '.join(sorted(FORMATS))} (a narrower glob, or one folder each)")
    return kinds.pop()


def codec(encoding: str) -> str:
    """The codec to read a file with: UTF-8 also past the byte-order mark that Windows tools (Excel's
    "CSV UTF-8") write first, else it would be part of the first column's name or the first record."""
    import codecs

    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def csv_header(path: str, encoding: str) -> list[str]:
    with open(path, encoding=codec(encoding), newline="") as f:
        return next(csv.reader(f), [])


BYTES_PER_TOKEN = 4  # English text through a GPT-2-like BPE: a rough mean, for estimates only


def estimate_train_tokens(data: DataSpec) -> int:
    """About how many tokens the train split will hold, from the files' size (validate builds no
    data): the train files of a directory with its own splits, else the train share of them all."""
    files = locate(data)
    size: float  # bytes; the train share of a pool is a fraction of them
    if files.own:
        size = sum(os.path.getsize(f) for f in files.splits["train"])
    else:
        size = sum(os.path.getsize(f) for f in files.all()) * data.split.train
    return int(size / BYTES_PER_TOKEN)
