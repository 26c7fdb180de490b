"""Read an offline W&B run back from its `run-<id>.wandb` file, for tests.

W&B 0.31 keeps an offline run's config, history and summary only in that binary file: a LevelDB-style
log (a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte header: CRC, length,
type; a record longer than a block is split FIRST/MIDDLE/LAST) of `wandb_internal_pb2.Record`
protobufs. Checked against wandb >= 0.31, < 0.32 (the range pyproject.toml pins).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
RECORD = struct.Struct("<IHB")  # checksum, length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run_id: str
    name: str = ""
    group: str = ""
    job_type: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    path: Path | None = None


def records(path: Path) -> list[bytes]:
    """The payloads of every record in a `.wandb` file, reassembled across blocks."""
    raw = path.read_bytes()
    ident, magic, version = HEADER.unpack_from(raw, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B 0.31 run file (header {ident!r} {magic:#x} v{version})")
    out, pending, offset = [], b"", HEADER.size
    while offset + RECORD.size <= len(raw):
        left = BLOCK - offset % BLOCK
        if left < RECORD.size:  # the block's tail is padding
            offset += left
            continue
        _, length, kind = RECORD.unpack_from(raw, offset)
        offset += RECORD.size
        if kind == 0 and length == 0:
            offset += left - RECORD.size  # zero padding to the next block
            continue
        chunk = raw[offset:offset + length]
        offset += length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def _value(item) -> Any:
    value = json.loads(item.value_json)
    return value


def _key(item) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun(run_id=path.stem.removeprefix("run-"), path=path)
    for payload in records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.project, run.tags = r.project, list(r.tags)
            for item in r.config.update:
                run.config[_key(item)] = _value(item)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = _value(item)
            for item in record.config.remove:
                run.config.pop(_key(item), None)
        elif kind == "history":
            row = {_key(item): _value(item) for item in record.history.item}
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = _value(item)
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
    run.config = {k: v.get("value", v) if isinstance(v, dict) and "value" in v else v
                  for k, v in run.config.items() if k != "_wandb"}
    return run


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under a `wandb` directory, oldest first."""
    return [read_run(path) for path in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))]
