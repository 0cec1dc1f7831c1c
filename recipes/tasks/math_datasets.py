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


def _read_rows(name: str, split: str, data_dir: str | Path | None) -> list[dict]:
    pattern, hub_id, hub_config, splits = SOURCES[name]
    if split not in splits:
        raise ValueError(f"task.split for {name} must be one of {splits}, got {split!r}")
    if data_dir is not None:
        path = Path(data_dir).expanduser() / pattern.format(split=split)
        if not path.is_file():
            raise FileNotFoundError(f"task.data_dir: {path} not found (expected {pattern.format(split=split)})")
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    from datasets import load_dataset

    return list(load_dataset(hub_id, hub_config, split=split))


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
    if levels is not None:
        if name == "gsm8k":
            raise ValueError("task.levels applies to math and math500 only, not gsm8k")
        rows = [r for r in rows if _level(r) in set(levels)]
    text_field = "question" if name == "gsm8k" else "problem"
    template = prompt_template or ("{problem}" + BOXED_INSTRUCTION)
    problems = []
    for i, row in enumerate(rows):
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
