"""pot: policy-of-thoughts generation with transient per-request LoRA slots."""

from pot.adapters import SlotAdapterBank, find_attention_projections
from pot.config import PoTConfig
from pot.gate import DifficultyGate, GateRecord
from pot.generator import PoTGenerator, PoTResult
from pot.rewards import MajorityReward, RandomReward, SegmentBatch, SelfReward, VerifierReward
from pot.trace import PoTTrace, UpdateTrace

__all__ = [
    "DifficultyGate", "GateRecord", "MajorityReward", "PoTConfig", "PoTGenerator", "PoTResult", "PoTTrace",
    "RandomReward", "SegmentBatch", "SelfReward", "SlotAdapterBank", "UpdateTrace", "VerifierReward",
    "find_attention_projections",
]
