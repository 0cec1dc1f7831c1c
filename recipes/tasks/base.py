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
    solution: str | None = None  # a worked solution ending in the answer, where the dataset has one


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
    answer_template: str = "{answer}"  # how a bare gold answer is written as an SFT target, e.g. "\\boxed{{answer}}"

    def messages(self, problem: Problem) -> list[dict]:
        """Chat messages for ``problem`` (render with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``)."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*turns, {"role": "user", "content": problem.prompt}]

    def verify(self, completion: str, problem: Problem) -> Verdict:
        extracted = extract_answer(completion)
        return Verdict(answers_equivalent(extracted, problem.answer), answer_key(extracted))

    def answer_key(self, completion: str):
        """The majority-vote cluster of a completion's final answer (None when nothing parses)."""
        return answer_key(extract_answer(completion))

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
