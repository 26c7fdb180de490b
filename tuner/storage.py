"""Where a sweep keeps what every node must reach: a shared path, or an `s3://` / `gs://` bucket.

The driver always keeps its own files (records, logs, leaderboard, `best/`) in a local sweep
directory; with a bucket, that directory is `runs/<name>` on the driver and is mirrored to the
bucket as the sweep goes (see `mirror`), while Ray Tune and Ray Train write checkpoints straight to
the bucket. The prepared data a trial reads is written to storage once, then copied by each node to
a local cache and memory-mapped from there. The Optuna study lives on the driver's disk (see
`study`). A lock object in the bucket is written with conditional writes (`put_if`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tuner import builtin

SCHEMES = ("s3", "gs", "file")  # file:// is a URI on a local or mounted filesystem (handy in tests)


def is_uri(location: str | None) -> bool:
    return location is not None and "://" in location


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


def download_file(location: str, local: Path) -> None:
    """Copy one file from `location` to the local path `local` (replaced whole)."""
    fs, path = _fs(location)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, local)


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
# Keeping disk in check: checkpoints that can no longer matter are removed.


def remove(location: str) -> None:
    """Delete the directory or file at `location`, wherever it lives; gone already is fine."""
    import pyarrow.fs

    fs, path = _fs(location)
    try:
        if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
            fs.delete_file(path)
        else:
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


# ---------------------------------------------------------------------------------------------
# Conditional writes: a lock object only one driver can create or take over.


def put_if(location: str, text: str, etag: str | None) -> str | None:
    """Write `text` to `location` only if it does not exist (`etag` None) or still has `etag`.
    Returns the new etag, or None when the condition failed. S3 decides atomically (conditional
    writes); elsewhere the check and the write are two steps."""
    if scheme(location) == "s3":
        return _s3_put_if(location, text, etag)
    found = read_with_etag(location)
    if (found is None) != (etag is None) or (found is not None and found[1] != etag):
        return None
    write_text(location, text)
    return _digest(text)


def read_with_etag(location: str) -> tuple[str, str] | None:
    """The text at `location` and its etag, or None when there is nothing."""
    if scheme(location) == "s3":
        client, bucket, key = _s3(location)
        try:
            found = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        return found["Body"].read().decode(), found["ETag"]
    if not exists(location):
        return None
    text = read_text(location)
    return text, _digest(text)


def delete_if(location: str, etag: str) -> None:
    found = read_with_etag(location)
    if found is not None and found[1] == etag:
        fs, path = _fs(location)
        fs.delete_file(path)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _s3(location: str):
    import boto3

    bucket, _, key = location.split("://", 1)[1].partition("/")
    return boto3.client("s3"), bucket, key


def _s3_put_if(location: str, text: str, etag: str | None) -> str | None:
    from botocore.exceptions import ClientError

    client, bucket, key = _s3(location)
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=text.encode(), **condition)["ETag"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                          "NoSuchKey"):
            return None
        raise


def list_files(location: str, prefix: str = "") -> list[str]:
    """Names of the files directly under `location` that start with `prefix`."""
    import pyarrow.fs

    fs, path = _fs(location)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.File and i.base_name.startswith(prefix)]
