"""Where a sweep keeps what every node must reach: a shared path, or an `s3://` / `gs://` bucket.

The driver always keeps its own files (records, logs, leaderboard, `best/`) in a local sweep
directory; with a bucket, that directory is `runs/<name>` on the driver and is uploaded when the
sweep ends, while Ray Tune and Ray Train write checkpoints straight to the bucket. Two things never
live on shared storage while in use:

- the Optuna study: SQLite is unsafe on S3 and NFS, so it lives on the driver's disk and a
  consistent copy goes to storage at every experiment checkpoint;
- the prepared data a trial reads: written to storage once, then copied by each node to a local
  cache and memory-mapped from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from tuner import builtin

SCHEMES = ("s3", "gs", "file")  # file:// is a URI on a local or mounted filesystem (handy in tests)
STUDY_DB = "optuna.db"


def is_uri(location: str | None) -> bool:
    return bool(location) and "://" in location


def scheme(location: str) -> str:
    return location.split("://", 1)[0] if is_uri(location) else ""


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts]) if is_uri(location) else str(Path(location, *parts))


def _fs(location: str):
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(location: str, text: str) -> None:
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(location: str) -> str:
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def upload(local: Path, location: str) -> None:
    """Copy a local file or directory to `location` (a URI or another path)."""
    import pyarrow.fs

    fs, path = _fs(location)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)


def download(location: str, local: Path) -> None:
    import pyarrow.fs

    fs, path = _fs(location)
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())


def node_copy(location: str, key: str) -> Path:
    """A node-local copy of the directory at `location`, made once per node (`key` names it)."""
    target = builtin.cache_root() / "data" / key
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        download(location, scratch)
        (scratch / ".complete").touch()
        try:
            os.replace(scratch, target)
        except OSError:  # another trial on this node finished the same copy first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# The Optuna study: on the driver's disk, copied to storage.


def local_study(sweep_dir: Path) -> Path:
    """The study's SQLite file on the driver's own disk, named after the sweep directory."""
    digest = hashlib.sha256(str(sweep_dir.resolve()).encode()).hexdigest()[:16]
    path = builtin.cache_root() / "studies" / f"{sweep_dir.name}-{digest}" / STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def copy_study(source: Path, destination: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API, not a file copy)."""
    if not source.exists():
        return
    tmp = destination.with_name(destination.name + ".tmp")
    with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
        src.backup(dst)
    os.replace(tmp, destination)


# ---------------------------------------------------------------------------------------------
# Keeping disk in check: checkpoints that can no longer matter are removed.


def remove(location: str) -> None:
    """Delete the directory at `location`, wherever it lives; gone already is fine."""
    fs, path = _fs(location)
    try:
        fs.delete_dir(path)
    except (FileNotFoundError, OSError):
        pass


def subdirs(location: str, prefix: str) -> list[str]:
    """The subdirectories of `location` whose names start with `prefix`, as locations."""
    import pyarrow.fs

    fs, path = _fs(location)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [join(location, info.base_name) for info in infos
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix)]


def size_bytes(location: str) -> int:
    """Bytes under `location` (a file or a directory tree)."""
    import pyarrow.fs

    fs, path = _fs(location)
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.File:
        return info.size or 0
    if info.type != pyarrow.fs.FileType.Directory:
        return 0
    return sum(i.size or 0 for i in fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
               if i.type == pyarrow.fs.FileType.File)
