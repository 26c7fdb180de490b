"""Bad data files, named with the file, the place and the fix before any trial starts.

`check` reads every local file through (for `validate`); `sources.load` costs good data nothing
extra and calls `diagnose` only when `datasets` fails or a column turns out wrong, to say where.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any

from tuner.datafiles import Files, codec, csv_header, fields, locate
from tuner.errors import UserError, first_line
from tuner.spec import DataSpec

log = logging.getLogger("tuner")


def check(data: DataSpec) -> None:
    """Every local data file read through once, for `validate`: the problems `load` would meet."""
    if data.path is None:
        return
    files = locate(data)
    refuse(quick_problems(files) or diagnose(files, data))


def quick_problems(files: Files) -> list[str]:
    """What costs a few bytes a file to find: empty files, and .parquet files that are not Parquet."""
    problems, empty = [], []
    for path in files.all():
        if _is_blank(path):
            empty.append(path)
        elif files.kind == "parquet" and not _is_parquet(path):
            problems.append(f"{path}: not a Parquet file (no Parquet footer); convert it, or give it the "
                            "suffix of its real format (.jsonl, .csv, .txt)")
    pools = files.splits.values()
    if any(all(f in empty for f in split) for split in pools):
        only = [f for f in empty if any(f in s and all(g in empty for g in s) for s in pools)]
        problems.insert(0, f"{', '.join(only[:3])}{' ...' if len(only) > 3 else ''}: empty (no records); "
                           "give data.path a file with text, or remove the empty file(s)")
    elif empty:
        log.warning("data: skipping %d empty file(s): %s", len(empty), ", ".join(empty[:3]))
        for split in files.splits.values():
            split[:] = [f for f in split if f not in empty]
    return problems


def _is_blank(path: str) -> bool:
    """True for a file of whitespace alone; reads only as far as the first other byte."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _is_parquet(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, os.path.getsize(path) - 4))
        return head == b"PAR1" and f.read(4) == b"PAR1"


def diagnose(files: Files, data: DataSpec) -> list[str]:
    """Each file's first problem, found by reading it through: where `datasets` failed, and why."""
    scan = {"text": _scan_text, "json": _scan_json, "csv": _scan_csv, "parquet": _scan_parquet}[files.kind]
    problems = []
    for path in files.all():
        problem = _scan_encoding(path, data.encoding) if files.kind != "parquet" else None
        problem = problem or scan(path, data)
        if problem:
            problems.append(problem)
    if files.kind == "csv" and not problems:
        problems = _header_problems(files.all(), data.encoding)
    return problems


def _header_problems(paths: list[str], encoding: str) -> list[str]:
    """CSV files are read with the first file's columns (`_load_files`): each file, fine on its
    own, must have the same ones."""
    first = csv_header(paths[0], encoding)
    return [f"{path}:1: columns {header}, where {paths[0]} has {first}; give every CSV file the same columns"
            for path in paths[1:] if set(header := csv_header(path, encoding)) != set(first)]


def _scan_encoding(path: str, encoding: str) -> str | None:
    """The byte offset of the first byte `encoding` cannot decode. A character may straddle two
    chunks (the decoder holds its first bytes back), or be cut off by the end of the file."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0  # of the chunk in the file
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            held = decoder.getstate()[0]  # the start of a character from the chunk before
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:  # exc.object: the held bytes, then the chunk
                return (f"{path}: byte {offset - len(held) + exc.start} is not {encoding} ({exc.reason}, "
                        f"byte 0x{exc.object[exc.start]:02x}); convert the file to UTF-8, or set "
                        "data.encoding to its encoding (e.g. latin-1, cp1252)")
            if not chunk:
                return None
            offset += len(chunk)


def _scan_text(path: str, data: DataSpec) -> str | None:
    return None  # plain text has no structure to break: its encoding is all


def _scan_json(path: str, data: DataSpec) -> str | None:
    """A .json array, or JSON lines: each record an object whose text fields hold text."""
    encoding = codec(data.encoding)
    with open(path, encoding=encoding) as f:
        first = f.read(1 << 10).lstrip()[:1]
    if first == "[":
        try:
            with open(path, encoding=encoding) as f:
                rows = json.load(f)
        except json.JSONDecodeError as exc:
            return f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix the file"
        return _field_problems(path, ((i + 1, row) for i, row in enumerate(rows)), data, "record")

    def lines():
        with open(path, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise _BadLine(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}); "
                                       "fix or remove that line (JSON lines: one object per line)") from None
    try:
        return _field_problems(path, lines(), data, "line")
    except _BadLine as exc:
        return str(exc)


class _BadLine(Exception):
    pass


def _field_problems(path: str, rows, data: DataSpec, place: str) -> str | None:
    """Missing columns, and values that are not text, over (row number, record) pairs."""
    wanted = fields(data)
    seen_columns: dict[str, None] = {}
    bad: dict[str, list] = {}  # column -> [count, first row, kinds]
    for number, row in rows:
        if not isinstance(row, dict):
            return (f"{path}:{number}: a JSON {type(row).__name__} where a record (an object with "
                    f"{', '.join(repr(c) for c in wanted.values())}) is expected; one object per {place}")
        seen_columns.update(dict.fromkeys(row))
        for column in wanted.values():
            kind = _wrong_kind(row.get(column), column == data.messages_column)
            if kind:
                entry = bad.setdefault(column, [0, number, set()])
                entry[0] += 1
                entry[2].add(kind)
    return _column_message(path, wanted, list(seen_columns), bad, place)


def _wrong_kind(value: Any, messages: bool) -> str | None:
    if value is None:
        return "nulls"
    if messages:
        ok = isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                             and isinstance(m.get("role"), str) for m in value)
        return None if ok else "values that are not lists of {role, content}"
    if isinstance(value, str):
        return None
    return {bool: "booleans", int: "numbers", float: "numbers", list: "lists", dict: "objects"}.get(
        type(value), type(value).__name__)


def _column_message(path: str, wanted: dict[str, str], found: list[str], bad: dict[str, list],
                    place: str) -> str | None:
    for key, column in wanted.items():
        if column not in found:
            return (f"{path}: no column {column!r} ({key}); the columns found are {found}: set {key} "
                    "to one of them")
    for key, column in wanted.items():
        if column in bad:
            count, first, kinds = bad[column]
            return (f"{path}: column {column!r} ({key}) holds {' and '.join(sorted(kinds))} in {count} "
                    f"{place}(s), the first at {place} {first}, where {_expected(key)} is expected; fix "
                    f"those {place}s, or set {key} to {_wanted_column(key)}")
    return None


def _expected(key: str) -> str:
    """What a record's column must hold: chat messages for data.messages_column, else text."""
    return "a list of {role, content} messages" if key == "data.messages_column" else "text"


def _wanted_column(key: str) -> str:
    return "a column of such lists" if key == "data.messages_column" else "a text column"


def _scan_csv(path: str, data: DataSpec) -> str | None:
    """Rows with another number of cells than the header (csv module line numbers: a quoted cell
    may span lines)."""
    with open(path, encoding=codec(data.encoding), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        ragged, first = 0, (0, 0)  # ragged rows; the first one's line and cell count
        for row in reader:
            if row and len(row) != len(header):
                ragged += 1
                if ragged == 1:
                    first = (reader.line_num, len(row))
    if ragged:
        return (f"{path}:{first[0]}: {first[1]} cells where the header has {len(header)} ({ragged} "
                "ragged row(s) in all); quote cells that hold commas, or fix those rows")
    return _column_message(path, fields(data), header, {}, "row")


def _scan_parquet(path: str, data: DataSpec) -> str | None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"{path}: not a readable Parquet file ({first_line(exc)}); convert or replace it"
    found = table_file.schema_arrow.names
    wanted = fields(data)
    message = _column_message(path, wanted, found, {}, "row")
    if message:
        return message
    bad = {}
    for column in wanted.values():
        values = table_file.read(columns=[column]).column(0)
        kind = _arrow_kind(values.type, column == data.messages_column)
        if kind:
            bad[column] = [len(values), 1, {kind}]
        elif values.null_count:
            bad[column] = [values.null_count, pc.index(pc.is_null(values), True).as_py() + 1, {"nulls"}]
    return _column_message(path, wanted, found, bad, "row")


def _arrow_kind(kind, messages: bool) -> str | None:
    """What an Arrow column holds, where it is not what the record needs."""
    import pyarrow as pa

    if messages:
        return None if pa.types.is_list(kind) or pa.types.is_large_list(kind) else str(kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return None
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "numbers"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "lists"
    return str(kind)


def column_problems(split, name: str, data: DataSpec) -> list[str]:
    """Missing columns, and columns that are not text or hold nulls, in a loaded split (cheap: the
    schema and Arrow's null counts)."""
    import pyarrow.compute as pc

    problems = []
    for key, column in fields(data).items():
        if column not in split.column_names:
            problems.append(f"{key}: got {column!r}, but the {name} split has columns {split.column_names}; "
                            f"set {key} to one of them")
            continue
        values = split.data.column(column)
        kind = _arrow_kind(values.type, column == data.messages_column)
        if kind:
            problems.append(f"{key}: column {column!r} of the {name} split holds {kind} where "
                            f"{_expected(key)} is expected; set {key} to {_wanted_column(key)}")
        elif values.null_count:
            first = pc.index(pc.is_null(values), True).as_py() + 1
            problems.append(f"{key}: column {column!r} of the {name} split is empty (null) in "
                            f"{values.null_count} row(s), the first at row {first}; fill or drop those rows")
    return problems


def refuse(problems: list[str]) -> None:
    if problems:
        head = problems[0] if len(problems) == 1 else "the data cannot be read:\n" + "\n".join(
            f"  - {p}" for p in problems)
        raise UserError(head)
