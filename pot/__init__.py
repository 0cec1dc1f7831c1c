"""pot: policy-of-thoughts generation with transient per-request LoRA slots.

The generators load torch and transformers on first use, so ``pot.config`` (the settings alone) imports without them.
"""

import importlib

_EXPORTS = {
    "SlotAdapterBank": "pot.adapters", "find_attention_projections": "pot.adapters", "PoTConfig": "pot.config",
    "PoTGenerator": "pot.generator", "PoTResult": "pot.generator", "EpisodeGenerator": "pot.episode",
    "EpisodeResult": "pot.episode", "MajorityReward": "pot.rewards", "RandomReward": "pot.rewards",
    "SegmentBatch": "pot.rewards", "SelfReward": "pot.rewards", "VerifierReward": "pot.rewards",
    "PoTTrace": "pot.trace", "UpdateTrace": "pot.trace",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pot' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
