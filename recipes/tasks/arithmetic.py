"""Procedural arithmetic: the embedded default task, seeded, with a difficulty knob and disjoint splits.

Every expression belongs to exactly one split by a stable hash of its text (1 in ``test_one_in``, default 5, to
``test``), so the train and test problem sets are disjoint by construction for every seed and size.

Problems are drawn one after another from a generator seeded by the split and ``seed``: ``size`` problems are the
first ``size`` of that stream (a larger size only appends problems). Few-shot examples are the first ``fewshot``
problems of the train stream with their answers; a train-split task starts after them.
"""

from __future__ import annotations

import hashlib
import operator
import random

from recipes.tasks.base import Example, Problem, Task

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
SPLITS = ("train", "test")
PLACEHOLDER = "{expression}"
DEFAULT_TEMPLATE = "What is {expression}? Answer with just the number."
DEFAULT_SIZE = 200
DEFAULTS = {"digits": 1, "terms": 2, "operators": "+", "test_one_in": 5}
OPTIONS = ("digits", "terms", "operators", "max_operand", "max_operands", "test_one_in")
# Bounds that keep a problem a line of text a small model can read and the answer an exact Python int.
MAX_DIGITS, MAX_TERMS = 18, 16


def split_of(expression: str, test_one_in: int = DEFAULTS["test_one_in"]) -> str:
    digest = hashlib.sha1(expression.encode()).digest()
    return "test" if digest[0] % test_one_in == 0 else "train"


def _evaluate(operands: list[int], ops: list[str]) -> int:
    # left to right with × binding tighter, as a reader would: delegate to Python's precedence on ints
    expression = " ".join(str(x) for pair in zip(operands, ops + [""]) for x in pair if x != "")
    return int(eval(expression, {"__builtins__": {}}))  # noqa: S307  (digits and + - * only, built here)


def load_arithmetic(
    *,
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    prompt_template: str | None = None,
    digits: int = DEFAULTS["digits"],
    terms: int = DEFAULTS["terms"],
    operators: str = DEFAULTS["operators"],
    max_operand: int | None = None,
    max_operands: list[int] | None = None,
    test_one_in: int = DEFAULTS["test_one_in"],
    fewshot: int = 0,
) -> Task:
    """``size`` problems (default 200) with ``terms`` operands in [0, max_operand] joined by ``operators``.

    ``max_operand`` defaults to the largest ``digits``-digit number; setting it gives difficulties between whole
    digit counts (and problem sets large enough for a held-out split of hundreds of problems). ``test_one_in`` sets
    the held-out share: 2 puts half of all expressions in ``test`` (the same value must be used for both splits).
    ``max_operands`` bounds each operand position on its own (one entry per term, e.g. ``[9, 99]`` for one-digit
    times two-digit products) and replaces ``max_operand``.
    """
    if split not in SPLITS:
        raise ValueError(f"task.split must be one of {SPLITS} for arithmetic, got {split!r}")
    for name, value, bound in (("digits", digits, MAX_DIGITS), ("terms", terms, MAX_TERMS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise ValueError(f"task.{name} must be an int in [1, {bound}], got {value!r}")
    if max_operand is not None and (isinstance(max_operand, bool) or not isinstance(max_operand, int)
                                    or not 1 <= max_operand < 10**MAX_DIGITS):
        raise ValueError(f"task.max_operand must be an int in [1, 10**{MAX_DIGITS}), got {max_operand!r}")
    if isinstance(test_one_in, bool) or not isinstance(test_one_in, int) or test_one_in < 2:
        raise ValueError(f"task.test_one_in must be an int >= 2, got {test_one_in!r}")
    largest = 10**digits - 1 if max_operand is None else max_operand
    if terms < 2:
        raise ValueError(f"task.terms must be >= 2, got {terms!r}")
    if not operators or set(operators) - set(OPERATORS):
        raise ValueError(f"task.operators must be a non-empty string of {''.join(OPERATORS)}, got {operators!r}")
    bounds = _operand_bounds(max_operands, max_operand, terms) if max_operands is not None else [largest] * terms
    size = DEFAULT_SIZE if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"task.size must be a positive int, got {size!r}")
    if prompt_template is not None and PLACEHOLDER not in prompt_template:
        raise ValueError(f"task.prompt_template for arithmetic must contain {PLACEHOLDER}, got {prompt_template!r}")
    template = prompt_template or DEFAULT_TEMPLATE

    def stream(of_split: str, count: int) -> list[Problem]:
        problems = _draw(of_split, count, seed, template, bounds, sorted(set(operators)), test_one_in)
        if len(problems) < count:
            asked = (f"task.fewshot={fewshot}" if of_split != split else f"task.size={size}"
                     + (f" plus task.fewshot={fewshot}" if fewshot else ""))
            raise ValueError(
                f"{asked} exceeds the {len(problems)} distinct {of_split} problems at digits={digits}, terms={terms}, "
                f"max_operand{'s' if max_operands is not None else ''}={bounds if max_operands is not None else largest}, "
                f"test_one_in={test_one_in}; raise task.digits, task.max_operand or task.terms"
            )
        return problems

    if split == "train":
        drawn = stream("train", fewshot + size)
        shots, problems = drawn[:fewshot], drawn[fewshot:]
    else:
        shots, problems = (stream("train", fewshot) if fewshot else []), stream(split, size)
    return Task("arithmetic", problems, answer_alone=True,  # the prompt asks for just the number
                fewshot=[Example(p.prompt, p.answer) for p in shots])


def _draw(split: str, count: int, seed: int, template: str, bounds: list[int], ops_alphabet: list[str],
          test_one_in: int) -> list[Problem]:
    """Up to ``count`` distinct problems of ``split``, in the order the seeded generator yields them."""
    rng = random.Random(f"arithmetic/{split}/{seed}")
    seen: set[str] = set()
    problems = []
    for _attempt in range(100 * count + 10_000):
        if len(problems) == count:
            break
        operands = [rng.randrange(bound + 1) for bound in bounds]
        ops = [rng.choice(ops_alphabet) for _ in range(len(bounds) - 1)]
        expression = " ".join(f"{x} {o}" for x, o in zip(operands, ops)) + f" {operands[-1]}"
        if expression in seen or split_of(expression, test_one_in) != split:
            continue
        seen.add(expression)
        problems.append(
            Problem(
                id=f"arith-{split}-{seed}-{len(problems):05d}",
                prompt=template.replace(PLACEHOLDER, expression),
                answer=str(_evaluate(operands, ops)),
            )
        )
    return problems


def _operand_bounds(max_operands, max_operand, terms) -> list[int]:
    if max_operand is not None:
        raise ValueError(f"task.max_operands replaces task.max_operand; set one of them, got both "
                         f"(max_operand={max_operand!r}, max_operands={max_operands!r})")
    if (not isinstance(max_operands, list) or len(max_operands) != terms
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in max_operands)):
        raise ValueError(f"task.max_operands must be a list of {terms} positive ints (one per term, task.terms="
                         f"{terms}), got {max_operands!r}")
    return list(max_operands)
