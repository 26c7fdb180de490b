"""Loading the records: local files or a hub dataset, as Arrow by `datasets`, into the prepared
directory's cache. Bad files are refused with the file, the place and the fix (`datacheck`);
streaming reads a hub dataset record by record and writes at most `data.max_records` of it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from tuner import model as model_lib
from tuner.datacheck import column_problems, diagnose, quick_problems, refuse
from tuner.datafiles import Files, codec, csv_header, locate
from tuner.errors import UserError, first_line
from tuner.spec import DataSpec


def load(data: DataSpec, token_env: str | None, cache_dir: Path) -> dict[str, Any]:
    """The source as `datasets.Dataset`s (Arrow, cached in `cache_dir`) by its split names.

    Streaming (`data.streaming`) reads records one by one and writes at most `data.max_records`
    of each split to Arrow: a large hub dataset is never downloaded whole."""
    import datasets

    files = locate(data) if data.path is not None else None
    if files is not None:
        refuse(quick_problems(files))
        loaded = _load_files(files, data, cache_dir)
    else:
        try:
            loaded = datasets.load_dataset(data.dataset, data.config, cache_dir=str(cache_dir),
                                           streaming=data.streaming,
                                           **model_lib.hub_kwargs(data.revision, token_env))
        except Exception as exc:  # the hub raises many kinds; all mean "cannot load this"
            raise UserError(f"data.dataset: cannot load {data.dataset!r} (config {data.config!r}"
                            f"{f', revision {data.revision!r}' if data.revision else ''}): "
                            f"{first_line(exc)}") from None
    if data.streaming:
        loaded = _materialize_all(loaded, data, files, cache_dir)
    problems = [p for name, split in loaded.items() for p in column_problems(split, name, data)]
    if problems:
        refuse((diagnose(files, data) if files else []) or problems)
    return dict(loaded)


def _load_files(files: Files, data: DataSpec, cache_dir: Path):
    import datasets

    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir), "streaming": data.streaming}
    if files.kind == "json":  # Arrow's JSON reader skips a byte-order mark itself
        kwargs["encoding"] = data.encoding
    if files.kind in ("text", "csv"):
        kwargs["encoding"] = codec(data.encoding)
    if files.kind == "text":
        kwargs["sample_by"] = "paragraph"
    if files.kind == "csv":  # every cell is text: no guessing a column of numbers into int64
        header = csv_header(files.all()[0], data.encoding)
        kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        with _quiet_readers():
            return datasets.load_dataset(files.kind, data_files=files.splits, **kwargs)
    except Exception as exc:  # DatasetGenerationError, ArrowInvalid, UnicodeDecodeError, pandas' ...
        problems = diagnose(files, data)
        if not problems:
            problems = [f"data.path: cannot read {data.path!r} as {files.kind}: {first_line(exc)}"]
        refuse(problems)


@contextlib.contextmanager
def _quiet_readers():
    """`datasets`' file readers log an error of their own before they raise it: a second account of
    what `diagnose` then names, with another line number (pandas counts from 1 after the header,
    Arrow counts rows). The user gets ours alone."""
    readers = logging.getLogger("datasets.packaged_modules")
    level = readers.level
    readers.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        readers.setLevel(level)


def _materialize_all(loaded, data: DataSpec, files: Files | None, cache_dir: Path) -> dict[str, Any]:
    """Each streamed split as Arrow. A stream reads its files only now, so a bad local file fails
    here, not in `load_dataset`: it is named the same way."""
    try:
        with _quiet_readers():
            return {name: _materialize(split, data.max_records, cache_dir / f"stream-{name}.arrow")
                    for name, split in loaded.items()}
    except Exception as exc:  # the same kinds `_load_files` meets
        if files is None:
            raise
        refuse(diagnose(files, data) or [(f"data.path: cannot read {data.path!r} as {files.kind}: "
                                           f"{first_line(exc)}")])
        raise


def _materialize(split, limit: int | None, path: Path):
    """An iterable (streamed) split written to an Arrow file, `limit` records at most, a batch at a
    time: memory holds one batch."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    source = split.take(limit) if limit else split
    with ArrowWriter(path=str(path), features=split.features) as writer:
        for batch in source.iter(batch_size=1000):
            writer.write_batch(batch)
        writer.finalize()
    return Dataset.from_file(str(path))
