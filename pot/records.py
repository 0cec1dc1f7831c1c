"""Per-problem JSONL records, written as evaluation goes, so that a killed run resumes where it stopped.

Line 1: ``{"config": {...}}`` — the configuration that determines the samples (model, adapter, task, n, seed, ...).
Then one line per finished problem: ``{"id", "prompt_tokens", "wall_time", "samples": [{"text", "num_tokens",
"answer" (the extracted final answer as written; None = unparsed, counted as wrong), "answer_key" (its majority-vote
cluster within the problem's samples: equivalent answers share the key of the cluster's first answer), "correct",
"finished" (ended before the token limit), "scores": {scorer: float}}]}``.
Each line is flushed and fsync'ed; a torn last line from a kill is dropped on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RecordsFile:
    """Append-only records for one configuration; ``done`` maps problem id → record."""

    def __init__(self, path: str | Path, config: dict):
        self.path, self.config = Path(path), json.loads(json.dumps(config))
        self.done: dict[str, dict] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"config": self.config})

    def _load(self) -> None:
        lines = self.path.read_text().split("\n")
        header = json.loads(lines[0])
        if header.get("config") != self.config:
            diff = sorted(k for k in set(header.get("config", {})) | set(self.config)
                          if header.get("config", {}).get(k) != self.config.get(k))
            raise ValueError(f"records file {self.path} is from another configuration (differs in {diff}); "
                             "use another --out or delete it")
        kept = [lines[0]]
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # torn write from a kill: everything after it is discarded
            self.done[record["id"]] = record
            kept.append(line)
        self.path.write_text("\n".join(kept) + "\n")

    def _append(self, obj: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: dict) -> None:
        self._append(record)
        self.done[record["id"]] = record


def read_records(path: str | Path) -> tuple[dict, list[dict]]:
    """(config, records) of a finished or partial records file."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"records file {path} is empty")
    return json.loads(lines[0])["config"], [json.loads(line) for line in lines[1:]]
