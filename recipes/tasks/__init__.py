"""Tasks: problems with gold answers and a verifier (correctness + answer key for majority vote)."""

from __future__ import annotations

from pathlib import Path

from recipes.tasks.answers import answer_key, answers_equivalent, extract_answer
from recipes.tasks.arithmetic import OPTIONS as ARITHMETIC_OPTIONS
from recipes.tasks.arithmetic import load_arithmetic
from recipes.tasks.base import FEWSHOT_FORMATS, SUBSETS, Example, Problem, Task, Verdict
from recipes.tasks.math_datasets import SOURCES, load_math_dataset

TASKS = ("arithmetic", *SOURCES)

__all__ = ["TASKS", "Example", "Problem", "Task", "Verdict", "answer_key", "answers_equivalent", "extract_answer",
           "load_task"]


def load_task(
    name: str,
    *,
    split: str = "train",
    size: int | None = None,
    subset: str = "first",
    seed: int = 0,
    data_dir: str | Path | None = None,
    levels: list[int] | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    chat_template: bool = True,
    fewshot: int = 0,
    fewshot_format: str | None = None,
    **options,
) -> Task:
    """Load a task by name: ``arithmetic`` (procedural; options digits/terms/operators) or gsm8k/math/math500.

    Which problems: ``size`` of them, the first ones or (``subset="random"``, datasets only: arithmetic problems
    are a seeded random draw already) a random sample seeded by ``seed``. How they are shown (``Task.render``):
    ``prompt_template`` with the placeholder ``{expression}`` (arithmetic) or ``{problem}`` (datasets),
    ``system_prompt``, ``fewshot`` worked examples from the train split, as chat turns or plain text
    (``fewshot_format``: ``turns``, the default with a chat template, or ``text``), and ``chat_template=False`` for
    a plain-text prompt.
    """
    if subset not in SUBSETS:
        raise ValueError(f"task.subset must be one of {SUBSETS}, got {subset!r}")
    if isinstance(fewshot, bool) or not isinstance(fewshot, int) or fewshot < 0:
        raise ValueError(f"task.fewshot must be an int >= 0, got {fewshot!r}")
    if not isinstance(chat_template, bool):
        raise ValueError(f"task.chat_template must be true or false, got {chat_template!r}")
    if fewshot_format is not None and fewshot_format not in FEWSHOT_FORMATS:
        raise ValueError(f"task.fewshot_format must be one of {FEWSHOT_FORMATS}, got {fewshot_format!r}")
    if fewshot_format == "turns" and not chat_template:
        raise ValueError("task.fewshot_format 'turns' needs a chat template; without one (task.chat_template false) "
                         "examples are plain text")
    if system_prompt is not None and not (isinstance(system_prompt, str) and system_prompt.strip()):
        raise ValueError(f"task.system_prompt must be a non-empty string or null, got {system_prompt!r}")
    if name == "arithmetic":
        if levels is not None or data_dir is not None:
            raise ValueError("task.levels and task.data_dir do not apply to arithmetic")
        if subset != "first":
            raise ValueError(f"task.subset {subset!r} does not apply to arithmetic: its problems are a seeded random "
                             "draw already (change the seed for others)")
        unknown = sorted(set(options) - set(ARITHMETIC_OPTIONS))
        if unknown:
            raise ValueError(f"task.options.{unknown[0]}: not an option of task 'arithmetic'; "
                             f"valid options: {', '.join(ARITHMETIC_OPTIONS)}")
        task = load_arithmetic(split=split, size=size, seed=seed, prompt_template=prompt_template, fewshot=fewshot,
                               **options)
    elif name in SOURCES:
        if options:
            raise ValueError(f"unknown option(s) for task {name!r}: {sorted(options)} (it takes no options)")
        task = load_math_dataset(name, split=split, size=size, subset=subset, seed=seed, data_dir=data_dir,
                                 levels=levels, prompt_template=prompt_template, fewshot=fewshot)
    else:
        raise ValueError(f"task.name must be one of {TASKS}, got {name!r}")
    task.system_prompt, task.chat_template = system_prompt, chat_template
    task.fewshot_format = fewshot_format or ("turns" if chat_template else "text")
    return task
