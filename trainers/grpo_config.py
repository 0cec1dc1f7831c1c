"""``CATGRPOConfig``: TRL's ``GRPOConfig`` plus the CAT fields, validated at construction (never mid-training)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from cat.estimators import P_ESTIMATORS

GRPO_STRATEGIES = ("none", "passn", "majority", "best_of_n", "pkpo", "passk_advantage")
WEIGHT_FORMS = ("log", "raw")
QUANTILES = ("within_prompt", "history")
PER_PROMPT = ("empirical", "laplace")  # p̂ estimators that give one value per prompt


@dataclass
class CATGRPOConfig(GRPOConfig):
    """GRPO whose advantages are reweighted (or replaced) for a test-time strategy (CAT, arXiv:2604.24957 §5)."""

    cat_strategy: str = field(default="none", metadata={"help": f"One of {GRPO_STRATEGIES}."})
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

    def __post_init__(self):
        super().__post_init__()
        self._validate_cat()

    def _validate_cat(self) -> None:
        if self.num_generations_eval is not None and (
            isinstance(self.num_generations_eval, bool)
            or not isinstance(self.num_generations_eval, int)
            or self.num_generations_eval < 1
        ):
            raise ValueError(f"num_generations_eval must be None or an int >= 1, got {self.num_generations_eval!r}")
        if self.num_generations_eval is not None:
            # TRL checks this only when an eval strategy is set; evaluate() can be called without one.
            global_eval_batch = self.per_device_eval_batch_size * self.world_size
            if global_eval_batch % self.num_generations_eval:
                raise ValueError(
                    f"per_device_eval_batch_size={self.per_device_eval_batch_size} (x {self.world_size} processes) "
                    f"must be a multiple of num_generations_eval={self.num_generations_eval}: an evaluation batch "
                    "holds whole prompt groups"
                )
        if self.cat_strategy not in GRPO_STRATEGIES:
            raise ValueError(f"cat_strategy must be one of {GRPO_STRATEGIES}, got {self.cat_strategy!r}")
        if isinstance(self.cat_n, bool) or not isinstance(self.cat_n, int) or self.cat_n < 1:
            raise ValueError(f"cat_n must be an int >= 1, got {self.cat_n!r}")
        if self.cat_k == "dynamic":
            if self.cat_n < 2:
                raise ValueError(f"cat_k='dynamic' needs cat_n >= 2, got cat_n={self.cat_n!r}")
        elif self.cat_k is not None and (
            isinstance(self.cat_k, bool) or not isinstance(self.cat_k, int) or not 1 <= self.cat_k <= self.cat_n
        ):
            raise ValueError(f"cat_k must be None, 'dynamic' or an int in [1, cat_n={self.cat_n}], got {self.cat_k!r}")
        if self.cat_weight_form not in WEIGHT_FORMS:
            raise ValueError(f"cat_weight_form must be one of {WEIGHT_FORMS}, got {self.cat_weight_form!r}")
        if self.cat_strategy == "best_of_n" and self.cat_weight_form == "log":
            raise ValueError("cat_weight_form='log' is undefined for cat_strategy='best_of_n'; use 'raw'")
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
        if isinstance(self.cat_history_size, bool) or not isinstance(self.cat_history_size, int) or self.cat_history_size < 1:
            raise ValueError(f"cat_history_size must be an int >= 1, got {self.cat_history_size!r}")
        self._validate_batch_sizes()

    def _validate_batch_sizes(self) -> None:
        """Group sizes the strategy needs, in training and in evaluation. cat_n = 1 is never refused here: its
        weights are ≡ 1 whatever the batch."""
        if self.cat_n == 1:
            return
        prompts_per_batch = self.generation_batch_size // self.num_generations
        per_prompt_weights = self.cat_strategy in ("passn", "majority") and self.cat_p_estimator in PER_PROMPT
        # one weight per prompt, normalised to mean 1 over the prompts: a lone prompt would always get 1
        if self.cat_normalize and per_prompt_weights and prompts_per_batch < 2:
            raise ValueError(
                f"cat_normalize needs >= 2 prompts per generation batch, got {prompts_per_batch} "
                f"(generation_batch_size={self.generation_batch_size}, num_generations={self.num_generations})"
            )
        if self.cat_strategy not in ("pkpo", "passk_advantage"):
            return
        if self.cat_n > self.num_generations:
            raise ValueError(
                f"cat_n must be <= num_generations={self.num_generations} for {self.cat_strategy}, got {self.cat_n!r}"
            )
        eval_generations = self.num_generations_eval or self.num_generations
        if self.cat_n > eval_generations:
            raise ValueError(
                f"cat_n must be <= num_generations_eval={eval_generations} for {self.cat_strategy} (pass@k needs k "
                f"rollouts per evaluation prompt), got {self.cat_n!r}"
            )


def _is_finite_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
