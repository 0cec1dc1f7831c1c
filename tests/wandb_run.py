"""Read back an offline W&B run: the records of its ``run-<id>.wandb`` file and the media files beside it.

wandb 0.31 ships no Python reader for its run files (its Go core writes them) and ``wandb.Api`` needs the network,
so this walks the file's framing — the LevelDB log format: a 7-byte ``:W&B`` header, then 32 KiB blocks of records,
each with a 7-byte header (CRC32, length, type FULL/FIRST/MIDDLE/LAST) — and decodes every record with wandb's own
protobuf message, ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_dirs(output_dir: str | Path) -> list[Path]:
    return sorted(Path(output_dir).glob("wandb/offline-run-*"))


def records(run_dir: str | Path) -> list:
    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # the rest of a block too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        position += HEADER
        if kind == 0 and length == 0:
            break
        pending += data[position : position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def run_record(run_dir):
    """The run's own record: project, group, job type, config."""
    return next(r.run for r in records(run_dir) if r.WhichOneof("record_type") == "run")


def summary(run_dir) -> dict:
    """The final summary: every summary update applied in order (nested keys joined by ``/``)."""
    values = {}
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                values[_key(item)] = json.loads(item.value_json)
    return values


def history(run_dir) -> list[dict]:
    """Every logged row (nested keys joined by ``/``)."""
    return [{_key(item): json.loads(item.value_json) for item in r.history.item}
            for r in records(run_dir) if r.WhichOneof("record_type") == "history"]


def metrics(run_dir) -> dict[str, str]:
    """``define_metric`` declarations: metric name (or glob) → its step metric ('' for none)."""
    out = {}
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "metric":
            out[r.metric.name or r.metric.glob_name] = r.metric.step_metric
    return out


def table_files(run_dir, name: str) -> list[Path]:
    """The files of the tables logged under ``name`` (``files/media/table/<name>_<step>_<hash>.table.json``)."""
    return sorted((Path(run_dir) / "files" / "media" / "table").glob(f"{name}_*.table.json"))
