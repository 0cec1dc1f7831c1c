"""cat: compute-aligned training objectives and estimators (pure torch; never imports transformers or trl)."""

from cat import alignment, estimators, objectives, operators
from cat.alignment import Alignment, alignment_coefficient
from cat.estimators import (
    MajorityEstimate,
    RewardHistory,
    best_of_k_expected,
    dynamic_majority_k,
    majority_at_k,
    pass_at_k,
    passk_training_advantage,
    pkpo_binary_credit,
    pkpo_sloo_minus_one,
    within_prompt_quantiles,
)
from cat.objectives import *  # noqa: F403  (the reference implementation's public names)
from cat.objectives import __all__ as _objective_names
from cat.operators import BestOfN, MajorityVote, PassAtN

__all__ = [
    *_objective_names,
    "Alignment",
    "BestOfN",
    "MajorityEstimate",
    "MajorityVote",
    "PassAtN",
    "RewardHistory",
    "alignment",
    "alignment_coefficient",
    "best_of_k_expected",
    "dynamic_majority_k",
    "estimators",
    "majority_at_k",
    "objectives",
    "operators",
    "pass_at_k",
    "passk_training_advantage",
    "pkpo_binary_credit",
    "pkpo_sloo_minus_one",
    "within_prompt_quantiles",
]
