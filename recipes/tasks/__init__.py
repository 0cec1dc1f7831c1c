"""Tasks: problems with gold answers and a verifier (correctness + answer key for majority vote)."""

from __future__ import annotations

from pathlib import Path

from recipes.tasks.answers import answer_key, answers_equivalent, extract_answer
from recipes.tasks.arithmetic import OPTIONS as ARITHMETIC_OPTIONS
from recipes.tasks.arithmetic import load_arithmetic
from recipes.tasks.base import Problem, Task, Verdict
from recipes.tasks.math_datasets import SOURCES, load_math_dataset

TASKS = ("arithmetic", *SOURCES)

__all__ = ["TASKS", "Problem", "Task", "Verdict", "answer_key", "answers_equivalent", "extract_answer", "load_task"]


def load_task(
    name: str,
    *,
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    levels: list[int] | None = None,
    prompt_template: str | None = None,
    **options,
) -> Task:
    """Load a task by name: ``arithmetic`` (procedural; options digits/terms/operators) or gsm8k/math/math500."""
    if name == "arithmetic":
        if levels is not None or data_dir is not None:
            raise ValueError("task.levels and task.data_dir do not apply to arithmetic")
        unknown = sorted(set(options) - set(ARITHMETIC_OPTIONS))
        if unknown:
            raise ValueError(f"task.options.{unknown[0]}: not an option of task 'arithmetic'; "
                             f"valid options: {', '.join(ARITHMETIC_OPTIONS)}")
        return load_arithmetic(split=split, size=size, seed=seed, prompt_template=prompt_template, **options)
    if name in SOURCES:
        if options:
            raise ValueError(f"unknown option(s) for task {name!r}: {sorted(options)} (it takes no options)")
        return load_math_dataset(
            name, split=split, size=size, seed=seed, data_dir=data_dir, levels=levels, prompt_template=prompt_template
        )
    raise ValueError(f"task.name must be one of {TASKS}, got {name!r}")
