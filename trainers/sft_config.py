"""``CATSFTConfig``: TRL's ``SFTConfig`` plus the CAT fields, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from trainers.cat_args import CATSFTArgs


@dataclass
class CATSFTConfig(SFTConfig, CATSFTArgs):
    """TRL's ``SFTConfig`` with the CAT fields of ``CATSFTArgs``: the loss is −log f(p) (CAT §5)."""

    def __post_init__(self):
        super().__post_init__()
        self.validate_cat_fields()
        # Packed / padding-free batches concatenate sequences, so a per-sequence p would mix examples.
        if self.packing:
            raise ValueError(f"packing must be False for CAT SFT (p is per sequence), got {self.packing!r}")
        if self.padding_free:
            raise ValueError(f"padding_free must be False for CAT SFT (p is per sequence), got {self.padding_free!r}")
        if self.completion_only_loss is False:
            raise ValueError("completion_only_loss must not be False: p is the probability of the completion alone")
