"""What a task is: problems (id, prompt, gold answer) and a verifier returning correctness and an answer key."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from recipes.tasks.answers import answer_key, answers_equivalent, cluster_keys, extract_answer

ANSWER_MODES = ("flexible", "strict")


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    solution: str | None = None  # a worked solution ending in the answer, where the dataset has one


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
    """

    name: str
    problems: list[Problem]
    system_prompt: str | None = None
    answer_template: str = "{answer}"  # how a bare gold answer is written as an SFT target, e.g. "\\boxed{{answer}}"
    answer_alone: bool = False

    def messages(self, problem: Problem) -> list[dict]:
        """Chat messages for ``problem`` (render with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``)."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*turns, {"role": "user", "content": problem.prompt}]

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
