"""``CATSFTConfig``: TRL's ``SFTConfig`` plus the CAT fields, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

SFT_STRATEGIES = ("none", "passn", "majority", "pairwise_contrastive")
REDUCTIONS = ("sequence_mean", "token_mean")


@dataclass
class CATSFTConfig(SFTConfig):
    """SFT whose loss is −log f(p) for a test-time strategy f, p = π(completion | prompt) (CAT §5)."""

    cat_strategy: str = field(default="none", metadata={"help": f"One of {SFT_STRATEGIES}."})
    cat_n: int = field(default=1, metadata={"help": "Test-time budget N >= 1."})
    cat_k: int | None = field(default=None, metadata={"help": "Majority threshold in [1, N]; None = ⌊N/2⌋+1."})
    cat_reduction: str = field(
        default="sequence_mean",
        metadata={
            "help": "'sequence_mean' (Σ ℓ / sequences) or 'token_mean' (Σ ℓ / target tokens), counted over the whole "
            "gradient-accumulation window and all processes."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.cat_strategy not in SFT_STRATEGIES:
            raise ValueError(f"cat_strategy must be one of {SFT_STRATEGIES}, got {self.cat_strategy!r}")
        if isinstance(self.cat_n, bool) or not isinstance(self.cat_n, int) or self.cat_n < 1:
            raise ValueError(f"cat_n must be an int >= 1, got {self.cat_n!r}")
        if self.cat_k is not None and (
            isinstance(self.cat_k, bool) or not isinstance(self.cat_k, int) or not 1 <= self.cat_k <= self.cat_n
        ):
            raise ValueError(f"cat_k must be None or an int in [1, cat_n={self.cat_n}], got {self.cat_k!r}")
        if self.cat_reduction not in REDUCTIONS:
            raise ValueError(f"cat_reduction must be one of {REDUCTIONS}, got {self.cat_reduction!r}")
        # Packed / padding-free batches concatenate sequences, so a per-sequence p would mix examples.
        if self.packing:
            raise ValueError(f"packing must be False for CAT SFT (p is per sequence), got {self.packing!r}")
        if self.padding_free:
            raise ValueError(f"padding_free must be False for CAT SFT (p is per sequence), got {self.padding_free!r}")
        if self.completion_only_loss is False:
            raise ValueError("completion_only_loss must not be False: p is the probability of the completion alone")
