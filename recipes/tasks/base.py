"""What a task is: problems (id, prompt, gold answer), how they are shown to a model, and a verifier returning
correctness and an answer key.

Prompt rendering (``Task.render``; the string sampled from, hashed into the records identity and stored per record):

- with a chat template (``chat_template=True``, the default): the tokenizer's chat template over
  ``Task.messages``: the system prompt (if any), the few-shot examples as user/assistant turns
  (``fewshot_format="turns"``) or as plain text inside the user message (``"text"``), then the problem;
- without one (``chat_template=False``, for base models and zero-RL): plain text, laid out as
  lm-evaluation-harness does: the system prompt, each example as ``prompt + TARGET_DELIMITER + completion``, then
  the problem's prompt, joined by ``FEWSHOT_DELIMITER``. A model's completion follows the prompt directly, so a
  plain-text SFT target is ``TARGET_DELIMITER + target``, as in the examples.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from recipes.tasks.answers import answer_key, answers_equivalent, cluster_keys, extract_answer

SUBSETS = ("first", "random")
FEWSHOT_FORMATS = ("turns", "text")
FEWSHOT_DELIMITER = "\n\n"  # between examples (lm-evaluation-harness's default fewshot_delimiter)
TARGET_DELIMITER = " "  # between an example's prompt and its completion (lm-evaluation-harness's target_delimiter)


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    solution: str | None = None  # a worked solution ending in the answer, where the dataset has one


@dataclass(frozen=True)
class Example:
    """A worked few-shot example: a problem's prompt and the completion shown for it."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer_key: Hashable | None  # None: nothing could be parsed (one shared wrong cluster for majority vote)
    answer: str | None = None  # the extracted final answer as written in the completion


@dataclass
class Task:
    """A list of problems plus the checker used for rewards, majority vote and evaluation.

    Answers are read in one of two modes (``recipes.tasks.answers``): flexible (``strict=False``, the default: the
    last boxed expression, else the last number) or strict (boxed or an explicit final-answer statement only, and
    a completion that did not finish, ``finished=False``, has no answer and is wrong). ``answer_alone``: the prompts
    ask for just the answer, so strict mode also accepts a completion that is nothing but a number.
    ``fewshot``, ``fewshot_format``, ``system_prompt`` and ``chat_template`` say how a problem is shown (see the
    module docstring); ``data_sha256`` names the data behind the problems and examples by content.
    """

    name: str
    problems: list[Problem]
    system_prompt: str | None = None
    answer_template: str = "{answer}"  # how a bare gold answer is written as an SFT target, e.g. "\\boxed{{answer}}"
    answer_alone: bool = False
    fewshot: list[Example] = field(default_factory=list)
    fewshot_format: str = "turns"
    chat_template: bool = True
    data_sha256: dict[str, str] = field(default_factory=dict)

    def messages(self, problem: Problem) -> list[dict]:
        """Chat messages for ``problem`` (render with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``)."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if self.fewshot_format == "turns":
            for example in self.fewshot:
                turns += [{"role": "user", "content": example.prompt},
                          {"role": "assistant", "content": example.completion}]
            return [*turns, {"role": "user", "content": problem.prompt}]
        return [*turns, {"role": "user", "content": FEWSHOT_DELIMITER.join([*self._examples_text(), problem.prompt])}]

    def prompt_text(self, problem: Problem) -> str:
        """The plain-text prompt of ``problem`` (no chat template): system prompt, examples, problem."""
        parts = [self.system_prompt] if self.system_prompt else []
        return FEWSHOT_DELIMITER.join([*parts, *self._examples_text(), problem.prompt])

    def _examples_text(self) -> list[str]:
        return [example.prompt + TARGET_DELIMITER + example.completion for example in self.fewshot]

    def prompt(self, problem: Problem) -> list[dict] | str:
        """What a TRL trainer receives as the prompt: chat messages, or the plain text without a chat template."""
        return self.messages(problem) if self.chat_template else self.prompt_text(problem)

    def completion(self, target: str) -> list[dict] | str:
        """A TRL completion for ``target``: an assistant turn, or, as plain text, the target after the delimiter."""
        return [{"role": "assistant", "content": target}] if self.chat_template else TARGET_DELIMITER + target

    def render(self, problem: Problem, tokenizer) -> str:
        """The exact string a model continues for ``problem`` (chat-templated with a generation prompt, or plain)."""
        if not self.chat_template:
            return self.prompt_text(problem)
        return tokenizer.apply_chat_template(self.messages(problem), tokenize=False, add_generation_prompt=True)

    def extract(self, completion: str, *, strict: bool = False, finished: bool = True) -> str | None:
        """The final answer of ``completion`` as written, or None (nothing parses; strict: or it did not finish)."""
        if strict and not finished:
            return None
        return extract_answer(completion, strict=strict, answer_alone=self.answer_alone)

    def verify(self, completion: str, problem: Problem, *, strict: bool = False, finished: bool = True) -> Verdict:
        """Correctness of ``completion`` against the gold answer, its own answer key and the extracted answer."""
        extracted = self.extract(completion, strict=strict, finished=finished)
        return Verdict(answers_equivalent(extracted, problem.answer), answer_key(extracted), extracted)

    def answer_key(self, completion: str, *, strict: bool = False, finished: bool = True):
        """The canonical key of one completion's final answer (None when nothing parses)."""
        return answer_key(self.extract(completion, strict=strict, finished=finished))

    def answer_keys(self, completions: Sequence[str], *, strict: bool = False,
                    finished: Sequence[bool] | None = None) -> list[Hashable | None]:
        """Majority-vote clusters of one pool (a problem's samples or a GRPO group): equivalent answers share a key.

        Extraction as ``extract`` (``finished`` holds one flag per completion; None: all finished), then
        ``recipes.tasks.answers.cluster_keys``, which merges answers that the correctness check judges equal.
        """
        flags = [True] * len(completions) if finished is None else list(finished)
        if len(flags) != len(completions):
            raise ValueError(f"finished must hold one flag per completion, got {len(flags)} for {len(completions)}")
        return cluster_keys([self.extract(c, strict=strict, finished=f) for c, f in zip(completions, flags)])

    def sft_target(self, problem: Problem, target: str) -> str:
        """The SFT completion: ``"answer"`` (the gold answer as the prompt asks for it) or ``"solution"``."""
        if target == "answer":
            return self.answer_template.replace("{answer}", problem.answer)
        if target == "solution":
            if problem.solution is None:
                raise ValueError(f"train.sft_target='solution': task {self.name!r} has no solutions (problem {problem.id})")
            return problem.solution
        raise ValueError(f"train.sft_target must be 'answer' or 'solution', got {target!r}")

    def __len__(self) -> int:
        return len(self.problems)


def select_subset(problems: list[Problem], size: int | None, subset: str, seed: int) -> list[Problem]:
    """``size`` problems: the first ones (``subset="first"``) or a seeded random sample (``"random"``); all if None."""
    if subset not in SUBSETS:
        raise ValueError(f"task.subset must be one of {SUBSETS}, got {subset!r}")
    if size is None:
        return problems
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"task.size must be a positive int, got {size!r}")
    if subset == "first":
        return problems[:size]
    return random.Random(seed).sample(problems, min(size, len(problems)))
