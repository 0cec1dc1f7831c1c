"""One object per test-time strategy, bundling what it means for training and for evaluation.

A strategy T maps the single-sample success probability p to f(p) (CAT, arXiv:2604.24957, §2 "operator view").
Each operator gives f (``success_probability``), its SFT weight p·f′/f, its RL weight (``"raw"`` = f′, ``"log"`` =
the SFT-derived weight used inside RL), the SFT loss −log f, and the unbiased evaluation ``metric`` for the same
strategy, so trainers and evaluation share a single definition.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from cat import estimators, objectives
from cat._validation import check_k, check_positive_int

RL_FORMS = ("raw", "log")


def _check_form(form: str) -> str:
    if form not in RL_FORMS:
        raise ValueError(f"form must be one of {RL_FORMS}, got {form!r}")
    return form


@dataclass(frozen=True)
class PassAtN:
    """pass@N: success if any of N samples is correct; f(p) = 1 − (1−p)^N."""

    n: int

    def __post_init__(self):
        check_positive_int(self.n, "n")

    def success_probability(self, p) -> torch.Tensor:
        return objectives.passn_probability(p, self.n)

    def sft_weight(self, p) -> torch.Tensor:
        return objectives.passn_sft_weight(p, self.n)

    def rl_weight(self, p, form: str = "raw") -> torch.Tensor:
        if _check_form(form) == "raw":
            return objectives.passn_rl_weight(p, self.n)
        return objectives.passn_sft_weight(p, self.n)

    def sft_loss(self, log_p, reduction: str = "mean") -> torch.Tensor:
        return objectives.passn_sft_loss(log_p, self.n, reduction)

    def metric(self, num_samples, num_correct) -> torch.Tensor:
        """Unbiased pass@N from ``num_samples`` ≥ N samples with ``num_correct`` correct, per problem."""
        return estimators.pass_at_k(num_samples, num_correct, self.n)


@dataclass(frozen=True)
class MajorityVote:
    """Majority vote over N samples with the fixed-threshold surrogate f(p) = P[Binomial(N, p) ≥ k].

    ``k=None`` means ⌊N/2⌋+1 at test time (``threshold``) and the per-prompt dynamic threshold in RL training,
    where the trainer passes each prompt's ``k`` (``cat.estimators.dynamic_majority_k``). ``k`` shapes training
    only; ``metric`` evaluates the real plurality vote, which has no threshold.
    """

    n: int
    k: int | None = None

    def __post_init__(self):
        check_positive_int(self.n, "n")
        if self.k is not None:
            check_k(self.k, self.n)

    @property
    def threshold(self) -> int:
        return self.k if self.k is not None else self.n // 2 + 1

    def _k(self, k: int | None) -> int:
        return check_k(k, self.n) if k is not None else self.threshold

    def success_probability(self, p, k: int | None = None) -> torch.Tensor:
        return objectives.majority_probability(p, self.n, self._k(k))

    def sft_weight(self, p, k: int | None = None) -> torch.Tensor:
        return objectives.majority_sft_weight(p, self.n, self._k(k))

    def rl_weight(self, p, form: str = "raw", k: int | None = None) -> torch.Tensor:
        if _check_form(form) == "raw":
            return objectives.majority_rl_weight(p, self.n, self._k(k))
        return objectives.majority_sft_weight(p, self.n, self._k(k))

    def sft_loss(self, log_p, reduction: str = "mean", k: int | None = None) -> torch.Tensor:
        return objectives.majority_sft_loss(log_p, self.n, self._k(k), reduction)

    def metric(
        self, answer_keys: Sequence[Hashable | None], correct: Sequence[bool], samples: int | None = None, seed: int = 0
    ) -> estimators.MajorityEstimate:
        """maj@N of one problem: plurality-vote accuracy over size-N subsets of its pool (``majority_at_k``, k = N).

        The test-time strategy is a plurality vote, which has no threshold, so this metric deliberately ignores
        ``self.k``/``threshold``: they only set the training surrogate P[Bin(N, p) ≥ k]. The value is exact for any
        pool size (``samples`` and ``seed`` only matter to a weighted vote's Monte Carlo fallback).
        """
        return estimators.majority_at_k(answer_keys, correct, self.n, samples=samples, seed=seed)


@dataclass(frozen=True)
class BestOfN(PassAtN):
    """Best-of-N with a scorer: RL weight N·q^(N−1) on the reward quantile q; SFT = pass@N SFT on the best target.

    Success probability, SFT weight and SFT loss are pass@N's: with a 0/1 verifier as the scorer, best-of-N succeeds
    exactly when pass@N does.
    """

    def rl_weight(self, q, form: str = "raw") -> torch.Tensor:
        if _check_form(form) == "log":
            raise ValueError("form='log' is undefined for best-of-N: its RL weight is the rank weight N·q^(N−1)")
        return objectives.best_of_n_rl_weight(q, self.n)

    def metric(self, rewards) -> float:
        """Exact expected best reward of N samples drawn from the problem's pool of rewards."""
        return estimators.best_of_k_expected(rewards, self.n)
