"""What a task is: problems (id, prompt, gold answer) and a verifier returning correctness and an answer key."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from recipes.tasks.answers import answer_key, answers_equivalent, extract_answer


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer_key: Hashable | None  # None: nothing could be parsed (one shared wrong cluster for majority vote)


@dataclass
class Task:
    """A list of problems plus the checker used for rewards, majority vote and evaluation."""

    name: str
    problems: list[Problem]
    system_prompt: str | None = None

    def messages(self, problem: Problem) -> list[dict]:
        """Chat messages for ``problem`` (render with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``)."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*turns, {"role": "user", "content": problem.prompt}]

    def verify(self, completion: str, problem: Problem) -> Verdict:
        extracted = extract_answer(completion)
        return Verdict(answers_equivalent(extracted, problem.answer), answer_key(extracted))

    def __len__(self) -> int:
        return len(self.problems)
