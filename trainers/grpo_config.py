"""``CATGRPOConfig``: TRL's ``GRPOConfig`` plus the CAT fields, validated at construction (never mid-training)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig

from cat.estimators import PER_PROMPT_ESTIMATORS

from trainers.cat_args import CATGRPOArgs


@dataclass
class CATGRPOConfig(GRPOConfig, CATGRPOArgs):
    """TRL's ``GRPOConfig`` with the CAT fields of ``CATGRPOArgs`` (CAT, arXiv:2604.24957 §5)."""

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
        self.validate_cat_fields()
        self._validate_batch_sizes()

    def _validate_batch_sizes(self) -> None:
        """Group sizes the strategy needs, in training and in evaluation. cat_n = 1 is never refused here: its
        weights are ≡ 1 whatever the batch."""
        if self.cat_n == 1:
            return
        prompts_per_batch = self.generation_batch_size // self.num_generations
        per_prompt_weights = self.cat_strategy in ("pass", "maj") and self.cat_p_estimator in PER_PROMPT_ESTIMATORS
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

