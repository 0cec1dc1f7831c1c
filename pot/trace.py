"""Per-update diagnostics and per-request compute totals of a PoT generation.

FLOPs are the standard dense estimate (Kaplan et al. 2020): 2·P per token forwarded and 4·P per token
backpropagated (a backward costs about twice a forward), with P the number of base-model parameters; the adapters
and attention's context-length term are ignored (both are small next to P for the sizes used here).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UpdateTrace:
    """One adapter update of one request: reward, components and advantage of the kept continuation, and the
    rewards of all G continuations the update used (one with the EMA baseline and no majority reward)."""

    update: int
    reward: float
    components: dict[str, float]
    advantage: float
    group_rewards: list[float]
    adapter_norm: float
    grad_norm: float
    entropy: float
    forward_tokens: int
    backward_tokens: int
    wall_s: float


@dataclass
class PoTTrace:
    """Everything a request cost and every update it went through.

    ``generated_tokens`` counts every sampled token, sibling continuations of a group included (compute);
    the output itself is ``PoTResult.token_ids``.
    """

    updates: list[UpdateTrace] = field(default_factory=list)
    generated_tokens: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    wall_s: float = 0.0
    peak_memory_bytes: int = 0
    gated_off: bool = False
    failure: str | None = None
    num_parameters: int = 0

    @property
    def estimated_flops(self) -> float:
        return 2.0 * self.num_parameters * self.forward_tokens + 4.0 * self.num_parameters * self.backward_tokens
