"""Per-problem JSONL records, written as evaluation goes, so that a killed run resumes where it stopped.

Line 1: ``{"config": {...}, "provenance": {...}}`` — the configuration that determines the samples (model, adapter,
task, n, seed, ...; a resume must match it) and what else produced them (git commit, package versions, data and chat
template hashes; recorded when the file is created, not compared).
Then one line per finished problem: ``{"id", "prompt" (the rendered prompt sampled from), "gold" (the gold answer),
"prompt_tokens", "wall_time", "samples": [{"text", "num_tokens", "answer" (the extracted final answer as written;
None = unparsed, counted as wrong), "answer_key" (its majority-vote cluster within the problem's samples: equivalent
answers share the key of the cluster's first answer), "correct", "finished" (ended before the token limit: EOS or a
stop string), "stop" (the stop string that ended it, else None), "scores": {scorer: float}}]}``.
Each line is flushed and fsync'ed. A kill can only tear the last line: on resume it is dropped and the file is
rewritten atomically (temp file + rename), so the finished records survive a second kill during that rewrite. Any
other unreadable line is an error naming the file and line, never a silent truncation.

A results directory keeps the records of its evaluations in one archive, ``records.tar.gz``
(``core.files.tar_gz_members``): each evaluation's records file, uncompressed, named after its summary
(``<arm>.records.jsonl`` next to ``<arm>.json``); ``read_archived_records`` reads one back.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from core.files import atomic_write_text, remove_stale_temporaries

RECORDS_ARCHIVE = "records.tar.gz"


class RecordsFile:
    """Append-only records for one configuration; ``done`` maps problem id → record."""

    def __init__(self, path: str | Path, config: dict, provenance: dict | None = None):
        """Open (resume) or create ``path``; the caller holds the directory's lock (``evaluate_model`` does), so a
        temporary file left by a killed rewrite is stale and removed."""
        self.path, self.config = Path(path), json.loads(json.dumps(config))
        self.done: dict[str, dict] = {}
        remove_stale_temporaries(self.path)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            header = {"config": self.config, **({"provenance": provenance} if provenance is not None else {})}
            atomic_write_text(self.path, json.dumps(header) + "\n")

    def _load(self) -> None:
        text = _read_text(self.path)
        header, records, kept = parse_records(self.path, text)
        if header != self.config:
            diff = sorted(k for k in set(header) | set(self.config) if header.get(k) != self.config.get(k))
            raise ValueError(f"records file {self.path} is from another configuration (differs in {diff}); "
                             "use another --out or delete it")
        self.done = {record["id"]: record for record in records}
        clean = "\n".join(kept) + "\n"
        if text != clean:  # a torn last line, or a last line without its newline: appending would corrupt it
            atomic_write_text(self.path, clean)

    def _append(self, obj: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: dict) -> None:
        self._append(record)
        self.done[record["id"]] = record


def parse_records(path: Path, text: str) -> tuple[dict, list[dict], list[str]]:
    """``(config, records, kept lines)`` of a records file's text; a last line torn by a kill is not kept."""
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"records file {path} is empty")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
        raise ValueError(f"records file {path} line 1: not a records header ({{\"config\": {{...}}}}); "
                         "use another --out or delete it")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # only the last line can be torn by a kill
                return header["config"], records, lines[:-1]
            raise ValueError(f"records file {path} line {number}: not valid JSON; the file is damaged") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise ValueError(f"records file {path} line {number}: a record needs a string 'id'; the file is damaged")
        records.append(record)
    return header["config"], records, lines


def read_records(path: str | Path) -> tuple[dict, list[dict]]:
    """(config, records) of a finished or partial records file."""
    config, records, _ = parse_records(Path(path), _read_text(Path(path)))
    return config, records


def read_archived_records(archive: str | Path, member: str) -> tuple[dict, list[dict]]:
    """(config, records) of the records file ``member`` inside a results directory's ``records.tar.gz``."""
    with tarfile.open(archive) as tar:
        try:
            data = tar.extractfile(member).read()
        except KeyError:
            raise ValueError(f"records archive {archive} has no {member!r}; it holds {tar.getnames()}") from None
    config, records, _ = parse_records(Path(archive) / member, _decode(Path(archive) / member, data))
    return config, records


def _read_text(path: Path) -> str:
    return _decode(path, path.read_bytes())


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"records file {path} is not UTF-8 text (byte {error.start}); the file is damaged") from None
