"""Rewards for episode-mode PoT: G complete attempts per request go in, one scalar per attempt comes out.

Every reward implements ``__call__(batch: EpisodeBatch) -> (reward (rows,), components {name: (rows,)})``; the G
attempts of a request are consecutive rows. A reward that runs the model adds the tokens its forwards cost to
``batch.forward_tokens`` (per row), under the request's current adapter (``batch.slots``), without gradient.

- ``EpisodeVerifierReward``: the task's checker (oracle, sees the gold answer: the positive control);
- ``EpisodeMajorityReward``: 1 if an attempt's answer is in the majority cluster of its G attempts, else 0
  (label-free; TTRL, arXiv 2504.16084, §3, per instance instead of per data set);
- ``EpisodeSelfReward``: ``pot.rewards.SelfReward`` on the whole attempt (confidence = tanh of the attempt's
  mean log-prob z-scored within its group, plus P(YES) − P(NO) of a verification prompt; coherence has no earlier
  text and is 0);
- ``EpisodeRandomReward``: uniform in [0, 1), seeded per request, update and attempt (the negative control).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from pot.rewards import SegmentBatch, SelfReward, agreement_scores, seeded_uniform


@dataclass
class EpisodeBatch:
    """What a reward sees at one update: ``group_size`` consecutive rows per request."""

    model: torch.nn.Module
    tokenizer: object
    bank: object
    slots: torch.Tensor  # adapter slot of every row
    request_keys: list  # the caller's key of every row's request (e.g. a problem index)
    request_seeds: list[int]
    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    finished: list[bool]
    logprob_mean: list[float]  # mean log-prob of the attempt under the raw (temperature 1) distribution
    group_size: int
    update: int
    max_updates: int
    forward_tokens: list[int]


class EpisodeVerifierReward:
    """ORACLE: ``check(request_key, text, finished) -> float`` (e.g. 1.0 if the task's verifier accepts the answer).

    It sees the ground truth: it bounds what PoT can do with a perfect reward and is never a label-free result.
    """

    def __init__(self, check: Callable[[object, str, bool], float]) -> None:
        if not callable(check):
            raise TypeError(f"check must be callable (key, text, finished) -> float, got {check!r}")
        self.check = check

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = torch.tensor([float(self.check(k, t, f))
                               for k, t, f in zip(batch.request_keys, batch.texts, batch.finished)])
        return scores, {"verifier": scores}


class EpisodeMajorityReward:
    """Label-free agreement: 1 for an attempt whose answer cluster is the most common one among its request's G
    attempts, 0 otherwise (also for unparsed answers, which cast no vote).

    ``keys(texts, finished) -> [hashable | None]`` clusters one request's G attempts, e.g.
    ``lambda t, f: task.answer_keys(t, strict=..., finished=f)`` (equivalent answers share a key). Ties go to the
    cluster seen first; a group without any parsed answer scores 0 everywhere (``pot.rewards.agreement_scores``).
    """

    def __init__(self, keys: Callable[[Sequence[str], Sequence[bool]], list[Hashable | None]]) -> None:
        if not callable(keys):
            raise TypeError(f"keys must be callable (texts, finished) -> list of keys, got {keys!r}")
        self.keys = keys

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch.group_size
        keys = [key for start in range(0, len(batch.texts), size)
                for key in self.keys(batch.texts[start:start + size], batch.finished[start:start + size])]
        scores = agreement_scores(keys, size)
        return scores, {"majority": scores}


class EpisodeSelfReward:
    """``pot.rewards.SelfReward`` on whole attempts: an attempt is a segment with no earlier text, and its
    confidence history is the other attempts of its group followed by itself, so the confidence term is the
    attempt's mean log-prob z-scored within the group (``pot.rewards.standardised_confidence``)."""

    def __init__(self, tokenizer, weights: tuple[float, float, float] = (0.2, 0.3, 0.5)) -> None:
        self.inner = SelfReward(tokenizer, weights)

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch.group_size
        history = []
        for row, value in enumerate(batch.logprob_mean):
            start = row - row % size
            others = [batch.logprob_mean[j] for j in range(start, start + size) if j != row]
            history.append(others + [value])
        segment = SegmentBatch(
            model=batch.model, tokenizer=batch.tokenizer, bank=batch.bank, slots=batch.slots,
            request_keys=list(range(len(batch.texts))), prompts=batch.prompts, earlier_texts=[""] * len(batch.texts),
            segment_texts=batch.texts, segment_ids=batch.token_ids, segment_logprob=torch.tensor(batch.logprob_mean),
            confidence_history=history, update=batch.update, max_updates=max(batch.max_updates, 1),
            forward_tokens=batch.forward_tokens, group_size=size)
        return self.inner(segment)


class EpisodeRandomReward:
    """Control: uniform in [0, 1), seeded by (seed, request seed, update, attempt index), so a batch equals separate
    runs and the attempts of a group differ. It carries no information about correctness."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = torch.tensor([seeded_uniform(f"{self.seed}:{request_seed}:{batch.update}:{row % batch.group_size}")
                               for row, request_seed in enumerate(batch.request_seeds)])
        return scores, {"random": scores}
