"""One object per test-time strategy, bundling what it means for training.

A strategy T maps the single-sample success probability p to f(p) (CAT, arXiv:2604.24957, §2 "operator view").
Each operator gives f (``success_probability``), the SFT weight p·f′/f, the raw RL weight f′ (``rl_weight``), the
log-form RL weight d log f / d log p = p·f′/f (``log_rl_weight``; the same function as the SFT weight, used to
scale RL advantages) and the SFT loss −log f. Evaluation metrics for the same strategies are in ``cat.estimators``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cat import objectives
from cat._validation import check_k, check_positive_int


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

    def rl_weight(self, p) -> torch.Tensor:
        """f′(p) = N(1−p)^(N−1)."""
        return objectives.passn_rl_weight(p, self.n)

    def log_rl_weight(self, p) -> torch.Tensor:
        """d log f / d log p = p·f′(p)/f(p)."""
        return objectives.passn_sft_weight(p, self.n)

    def sft_loss(self, log_p, reduction: str = "mean") -> torch.Tensor:
        return objectives.passn_sft_loss(log_p, self.n, reduction)


@dataclass(frozen=True)
class MajorityVote:
    """Majority vote over N samples with the fixed-threshold surrogate f(p) = P[Binomial(N, p) ≥ k].

    ``k`` is the surrogate's threshold; ``None`` is ⌊N/2⌋+1 (``threshold``). Every method also takes a ``k`` for
    that call alone, which is how RL training passes each prompt's dynamic threshold
    (``cat.estimators.dynamic_majority_k``). The threshold shapes training only: the test-time plurality vote has
    none (``cat.estimators.majority_at_k``).
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

    def rl_weight(self, p, k: int | None = None) -> torch.Tensor:
        """f′(p) = N·C(N−1, k−1) p^(k−1) (1−p)^(N−k)."""
        return objectives.majority_rl_weight(p, self.n, self._k(k))

    def log_rl_weight(self, p, k: int | None = None) -> torch.Tensor:
        """d log f / d log p = p·f′(p)/f(p)."""
        return objectives.majority_sft_weight(p, self.n, self._k(k))

    def sft_loss(self, log_p, reduction: str = "mean", k: int | None = None) -> torch.Tensor:
        return objectives.majority_sft_loss(log_p, self.n, self._k(k), reduction)


@dataclass(frozen=True)
class BestOfN(PassAtN):
    """Best-of-N with a scorer: RL weight N·q^(N−1) on the reward quantile q; SFT = pass@N SFT on the best target.

    Success probability, SFT weight and SFT loss are pass@N's: with a 0/1 verifier as the scorer, best-of-N succeeds
    exactly when pass@N does.
    """

    def rl_weight(self, q) -> torch.Tensor:
        """N·q^(N−1) on the reward quantile q."""
        return objectives.best_of_n_rl_weight(q, self.n)

    def log_rl_weight(self, q) -> torch.Tensor:
        raise ValueError("the log form is undefined for best-of-N: its RL weight is the rank weight N·q^(N−1)")
