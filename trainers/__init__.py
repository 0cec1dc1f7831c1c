"""CAT trainers on TRL: GRPO with test-time-strategy weights, and SFT with the −log f(p) objectives."""

from trainers.grpo import CATGRPOTrainer
from trainers.grpo_config import CATGRPOConfig
from trainers.sft import CATSFTTrainer
from trainers.sft_config import CATSFTConfig

__all__ = ["CATGRPOConfig", "CATGRPOTrainer", "CATSFTConfig", "CATSFTTrainer"]
