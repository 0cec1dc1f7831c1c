"""CAT trainers on TRL: GRPO with test-time-strategy weights, and SFT with the −log f(p) objectives.

The trainers load TRL on first use, so ``trainers.cat_args`` (the CAT fields alone) imports without it.
"""

import importlib

_EXPORTS = {"CATGRPOConfig": "trainers.grpo_config", "CATGRPOTrainer": "trainers.grpo",
            "CATSFTConfig": "trainers.sft_config", "CATSFTTrainer": "trainers.sft"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
