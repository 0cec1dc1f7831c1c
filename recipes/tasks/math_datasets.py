"""GSM8K, MATH (train, level filter) and MATH-500: from the Hugging Face Hub by name, or local JSONL (``data_dir``).

Local layout (as in the project's offline copies): ``gsm8k/{train,test}.jsonl`` with ``question`` and ``final``;
``math/train.jsonl`` and ``math500/test.jsonl`` with ``problem``, ``answer``, ``level`` and ``unique_id``.

Problems keep the rows' order; ``size`` takes the first ``size`` of them (``subset="first"``, the default, as
lm-evaluation-harness's ``--limit``) or a random sample seeded by ``seed`` (``subset="random"``). Few-shot examples
are the first ``fewshot`` problems of the train split (MATH's for MATH-500) with their worked solutions, never from
the evaluated split; when the task's own split is train they are left out of its problems.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.files import file_sha256
from recipes.tasks.base import Example, Problem, Task, select_subset

BOXED_INSTRUCTION = "\n\nPut your final answer within \\boxed{}."
SOURCES = {
    # name: (local file for a split, Hub dataset id, Hub config, available splits)
    "gsm8k": ("gsm8k/{split}.jsonl", "openai/gsm8k", "main", ("train", "test")),
    "math": ("math/{split}.jsonl", "nlile/hendrycks-MATH-benchmark", None, ("train",)),
    "math500": ("math500/{split}.jsonl", "HuggingFaceH4/MATH-500", None, ("test",)),
}
FEWSHOT_SOURCE = {"gsm8k": "gsm8k", "math": "math", "math500": "math"}  # whose train split holds the examples
PLACEHOLDER = "{problem}"


def _read_rows(name: str, split: str, data_dir: str | Path | None) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """``(where, row)`` pairs and the data's identity; ``where`` names the file and line (or the Hub row) for error
    messages. The identity maps the file (or Hub dataset) to its sha256 (or the ``datasets`` fingerprint)."""
    pattern, hub_id, hub_config, splits = SOURCES[name]
    if split not in splits:
        raise ValueError(f"task.split for {name} must be one of {splits}, got {split!r}")
    if data_dir is None:
        from datasets import load_dataset

        dataset = load_dataset(hub_id, hub_config, split=split)
        return ([(f"{hub_id} {split} row {i}", row) for i, row in enumerate(dataset)],
                {f"{hub_id}:{split}": f"datasets-fingerprint:{dataset._fingerprint}"})
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
    return rows, {pattern.format(split=split): file_sha256(path)}


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


def dataset_problems(name: str, split: str, data_dir: str | Path | None, levels: list[int] | None,
                     template: str) -> tuple[list[Problem], dict[str, str]]:
    """Every usable row of a split as a problem, in file order, and the data's identity (see ``_read_rows``)."""
    rows, identity = _read_rows(name, split, data_dir)
    for where, row in rows:
        _check_fields(name, where, row)
    if levels is not None:
        if name == "gsm8k":
            raise ValueError("task.levels applies to math and math500 only, not gsm8k")
        rows = [(where, r) for where, r in rows if _level(r) in set(levels)]
    text_field = "question" if name == "gsm8k" else "problem"
    problems = []
    for i, (_, row) in enumerate(rows):
        gold = _gold(name, row)
        if not gold.strip():  # two MATH rows have an empty \boxed{}: nothing to check against
            continue
        problem_id = row.get("unique_id") or f"{name}-{split}-{i:05d}"
        prompt = template.replace(PLACEHOLDER, row[text_field])
        problems.append(Problem(problem_id, prompt, gold, _solution(name, row)))
    return problems, identity


def load_math_dataset(
    name: str,
    *,
    split: str,
    size: int | None = None,
    subset: str = "first",
    seed: int = 0,
    data_dir: str | Path | None = None,
    levels: list[int] | None = None,
    prompt_template: str | None = None,
    fewshot: int = 0,
) -> Task:
    """Rows as problems; ``levels`` filters MATH/MATH-500 by difficulty; ``size``/``subset``/``seed`` pick which
    (module docstring); ``fewshot`` worked examples from the train split go with every prompt."""
    if prompt_template is not None and PLACEHOLDER not in prompt_template:
        raise ValueError(f"task.prompt_template for {name} must contain {PLACEHOLDER}, got {prompt_template!r}")
    template = prompt_template or (PLACEHOLDER + BOXED_INSTRUCTION)
    problems, identity = dataset_problems(name, split, data_dir, levels, template)
    examples: list[Example] = []
    if fewshot:
        source = FEWSHOT_SOURCE[name]
        pool, pool_identity = (problems, identity) if (source, "train") == (name, split) else dataset_problems(
            source, "train", data_dir, levels, template)
        shots = pool[:fewshot]
        if len(shots) < fewshot:
            raise ValueError(f"task.fewshot={fewshot} exceeds the {len(pool)} problems of {source}'s train split")
        examples = [Example(p.prompt, p.solution or f"\\boxed{{{p.answer}}}") for p in shots]
        shot_ids = {p.id for p in shots}
        problems = [p for p in problems if p.id not in shot_ids]  # an example is never its own question
        identity = {**identity, **pool_identity}
    if not problems:
        raise ValueError(f"task {name!r} (split {split!r}, levels {levels}) has no problems")
    problems = select_subset(problems, size, subset, seed)
    return Task(name, problems, answer_template="\\boxed{{answer}}", fewshot=examples, data_sha256=identity)
