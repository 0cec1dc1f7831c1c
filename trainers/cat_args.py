"""The CAT fields of the trainer configs, declared once and importable without TRL.

``CATGRPOConfig``/``CATSFTConfig`` inherit them next to TRL's fields, and a recipe's ``train`` section is built from
them, so a field, its default, its help and its check exist in one place. ``validate_cat_fields`` checks what the
fields alone determine; checks that need TRL's batch sizes stay in the trainer configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cat.estimators import P_ESTIMATORS
from cat.strategies import BON, MAJ, PASS, canonical_strategy

GRPO_STRATEGIES = ("none", PASS, MAJ, BON, "pkpo", "passk_advantage")
SFT_STRATEGIES = ("none", PASS, MAJ, "pairwise_contrastive")
WEIGHT_FORMS = ("log", "raw")
QUANTILES = ("within_prompt", "history")
REDUCTIONS = ("sequence_mean", "token_mean")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_budget(n, k, strategies: tuple[str, ...], strategy: str, allow_dynamic: bool) -> None:
    if strategy not in strategies:
        raise ValueError(f"cat_strategy must be one of {strategies}, got {strategy!r}")
    if not _is_int(n) or n < 1:
        raise ValueError(f"cat_n must be an int >= 1, got {n!r}")
    if allow_dynamic and k == "dynamic":
        if n < 2:
            raise ValueError(f"cat_k='dynamic' needs cat_n >= 2, got cat_n={n!r}")
    elif k is not None and (not _is_int(k) or not 1 <= k <= n):
        allowed = "None, 'dynamic' or an int" if allow_dynamic else "None or an int"
        raise ValueError(f"cat_k must be {allowed} in [1, cat_n={n}], got {k!r}")


@dataclass
class CATGRPOArgs:
    """GRPO whose advantages are reweighted (or replaced) for a test-time strategy (CAT, arXiv:2604.24957 §5)."""

    cat_strategy: str = field(
        default="none",
        metadata={"help": f"One of {GRPO_STRATEGIES}; pass, maj and bon train for pass@N, maj@N and bon@N."},
    )
    cat_n: int = field(default=1, metadata={"help": "Test-time budget N >= 1 (k of pass@k for pkpo/passk_advantage)."})
    cat_k: int | str | None = field(
        default=None, metadata={"help": "Majority threshold: int in [1, N], 'dynamic', or None for ⌊N/2⌋+1."}
    )
    cat_weight_form: str = field(default="log", metadata={"help": "'log' = p·f′/f, 'raw' = f′."})
    cat_p_estimator: str = field(
        default="laplace",
        metadata={
            "help": f"One of {P_ESTIMATORS}: per prompt from the group's correct count, or per sample from the old "
            "policy's sequence log-probability (summed, or averaged over the completion's tokens)."
        },
    )
    cat_clip: float | None = field(default=None, metadata={"help": "Cap on raw weights before normalisation."})
    cat_normalize: bool = field(default=True, metadata={"help": "Mean 1 over the distinct prompts of the batch."})
    cat_all_wrong_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Subtracted from the advantage of every rollout of a prompt whose rollouts are all wrong, before "
            "the CAT weight multiplies it (CAT repo rl.py; 0.5 in the paper's majority presets, App. K)."
        },
    )
    cat_quantile: str = field(default="within_prompt", metadata={"help": f"Best-of-N quantiles: one of {QUANTILES}."})
    cat_history_size: int = field(default=4000, metadata={"help": "Reward history length for cat_quantile='history'."})
    cat_correct_threshold: float = field(
        default=0.5,
        metadata={
            "help": "A completion counts as correct when its weighted reward sum is >= this. The p̂ estimators, the "
            "pass@k credits and the all-wrong penalty need a 0/1 success flag, while the rewards may be a weighted "
            "sum of several functions (e.g. correctness plus a format bonus); 0.5 splits plain 0/1 rewards."
        },
    )

    def validate_cat_fields(self, prefix: str = "") -> None:
        """Check the fields; a former strategy name becomes the current one (its warning names ``prefix`` + field)."""
        self.cat_strategy = canonical_strategy(self.cat_strategy, f"{prefix}cat_strategy")
        _check_budget(self.cat_n, self.cat_k, GRPO_STRATEGIES, self.cat_strategy, allow_dynamic=True)
        if self.cat_weight_form not in WEIGHT_FORMS:
            raise ValueError(f"cat_weight_form must be one of {WEIGHT_FORMS}, got {self.cat_weight_form!r}")
        if self.cat_strategy == BON and self.cat_weight_form == "log":
            raise ValueError("cat_weight_form='log' is undefined for cat_strategy='bon'; use 'raw'")
        if self.cat_p_estimator not in P_ESTIMATORS:
            raise ValueError(f"cat_p_estimator must be one of {P_ESTIMATORS}, got {self.cat_p_estimator!r}")
        if self.cat_clip is not None and not (_is_finite_real(self.cat_clip) and self.cat_clip > 0):
            raise ValueError(f"cat_clip must be None or a finite number > 0, got {self.cat_clip!r}")
        if not isinstance(self.cat_normalize, bool):
            raise ValueError(f"cat_normalize must be a bool, got {self.cat_normalize!r}")
        if not _is_finite_real(self.cat_all_wrong_penalty) or self.cat_all_wrong_penalty < 0:
            raise ValueError(f"cat_all_wrong_penalty must be a finite number >= 0, got {self.cat_all_wrong_penalty!r}")
        if not _is_finite_real(self.cat_correct_threshold):
            raise ValueError(f"cat_correct_threshold must be a finite number, got {self.cat_correct_threshold!r}")
        if self.cat_quantile not in QUANTILES:
            raise ValueError(f"cat_quantile must be one of {QUANTILES}, got {self.cat_quantile!r}")
        if not _is_int(self.cat_history_size) or self.cat_history_size < 1:
            raise ValueError(f"cat_history_size must be an int >= 1, got {self.cat_history_size!r}")


@dataclass
class CATSFTArgs:
    """SFT whose loss is −log f(p) for a test-time strategy f, p = π(completion | prompt) (CAT, arXiv:2604.24957 §5)."""

    cat_strategy: str = field(
        default="none", metadata={"help": f"One of {SFT_STRATEGIES}; pass and maj train for pass@N and maj@N."}
    )
    cat_n: int = field(default=1, metadata={"help": "Test-time budget N >= 1."})
    cat_k: int | None = field(default=None, metadata={"help": "Majority threshold in [1, N]; None = ⌊N/2⌋+1."})
    cat_reduction: str = field(
        default="sequence_mean",
        metadata={
            "help": "'sequence_mean' (Σ ℓ / sequences) or 'token_mean' (Σ ℓ / target tokens), counted over the whole "
            "gradient-accumulation window and all processes."
        },
    )

    def validate_cat_fields(self, prefix: str = "") -> None:
        """Check the fields; a former strategy name becomes the current one (its warning names ``prefix`` + field)."""
        self.cat_strategy = canonical_strategy(self.cat_strategy, f"{prefix}cat_strategy")
        _check_budget(self.cat_n, self.cat_k, SFT_STRATEGIES, self.cat_strategy, allow_dynamic=False)
        if self.cat_reduction not in REDUCTIONS:
            raise ValueError(f"cat_reduction must be one of {REDUCTIONS}, got {self.cat_reduction!r}")
