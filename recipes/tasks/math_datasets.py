"""GSM8K, MATH (train, level filter) and MATH-500: from the Hugging Face Hub by name, or local JSONL (``data_dir``).

Local layout (as in the project's offline copies): ``gsm8k/{train,test}.jsonl`` with ``question`` and ``final``;
``math/train.jsonl`` and ``math500/test.jsonl`` with ``problem``, ``answer``, ``level`` and ``unique_id``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from recipes.tasks.base import Problem, Task

BOXED_INSTRUCTION = "\n\nPut your final answer within \\boxed{}."
SOURCES = {
    # name: (local file for a split, Hub dataset id, Hub config, available splits)
    "gsm8k": ("gsm8k/{split}.jsonl", "openai/gsm8k", "main", ("train", "test")),
    "math": ("math/{split}.jsonl", "nlile/hendrycks-MATH-benchmark", None, ("train",)),
    "math500": ("math500/{split}.jsonl", "HuggingFaceH4/MATH-500", None, ("test",)),
}


def _read_rows(name: str, split: str, data_dir: str | Path | None) -> list[tuple[str, dict]]:
    """``(where, row)`` pairs; ``where`` names the file and line (or the Hub row) for error messages."""
    pattern, hub_id, hub_config, splits = SOURCES[name]
    if split not in splits:
        raise ValueError(f"task.split for {name} must be one of {splits}, got {split!r}")
    if data_dir is None:
        from datasets import load_dataset

        return [(f"{hub_id} {split} row {i}", row)
                for i, row in enumerate(load_dataset(hub_id, hub_config, split=split))]
    path = Path(data_dir).expanduser() / pattern.format(split=split)
    if not path.is_file():
        raise FileNotFoundError(f"task.data_dir: {path} not found (expected {pattern.format(split=split)})")
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows.append((where, row))
    return rows


def _check_fields(name: str, where: str, row: dict) -> None:
    """Name the file, line and field of a row that lacks what a problem needs (or holds it as a non-string)."""
    required = [["question"], ["final", "answer"]] if name == "gsm8k" else [["problem"], ["answer"]]
    for choices in required:
        present = [field for field in choices if row.get(field) is not None]
        if not present:
            raise ValueError(f"{where}: missing field {' or '.join(repr(c) for c in choices)}")
        for field in present:
            if not isinstance(row[field], str):
                raise ValueError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")


def _level(row: dict) -> int | None:
    level = row.get("level")
    if isinstance(level, int):
        return level
    digits = "".join(ch for ch in str(level) if ch.isdigit())
    return int(digits) if digits else None  # "Level ?" rows carry no level


def _gold(name: str, row: dict) -> str:
    if name == "gsm8k":
        return row.get("final") or row["answer"].split("####")[-1].strip().replace(",", "")
    return row["answer"]


def _solution(name: str, row: dict) -> str | None:
    if name == "gsm8k":  # "...<<48/2=24>>24 ... #### 72": drop calculator annotations, box the final answer
        if not isinstance(row.get("answer"), str):
            return None
        work, _, final = row["answer"].rpartition("####")
        return re.sub(r"<<[^>]*>>", "", work).strip() + f"\nThe answer is \\boxed{{{final.strip()}}}."
    return row.get("solution")


def load_math_dataset(
    name: str,
    *,
    split: str,
    size: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    levels: list[int] | None = None,
    prompt_template: str | None = None,
) -> Task:
    """Rows as problems; ``levels`` filters MATH/MATH-500 by difficulty; ``size`` takes a seeded random subset."""
    rows = _read_rows(name, split, data_dir)
    for where, row in rows:
        _check_fields(name, where, row)
    if levels is not None:
        if name == "gsm8k":
            raise ValueError("task.levels applies to math and math500 only, not gsm8k")
        rows = [(where, r) for where, r in rows if _level(r) in set(levels)]
    text_field = "question" if name == "gsm8k" else "problem"
    template = prompt_template or ("{problem}" + BOXED_INSTRUCTION)
    problems = []
    for i, (_, row) in enumerate(rows):
        gold = _gold(name, row)
        if not gold.strip():  # two MATH rows have an empty \boxed{}: nothing to check against
            continue
        problem_id = row.get("unique_id") or f"{name}-{split}-{i:05d}"
        prompt = template.replace("{problem}", row[text_field])
        problems.append(Problem(problem_id, prompt, gold, _solution(name, row)))
    if not problems:
        raise ValueError(f"task {name!r} (split {split!r}, levels {levels}) has no problems")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"task.size must be a positive int, got {size!r}")
        problems = random.Random(seed).sample(problems, min(size, len(problems)))
    return Task(name, problems, answer_template="\\boxed{{answer}}")
