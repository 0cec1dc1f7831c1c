"""Per-update diagnostics and per-request compute totals of a PoT generation.

Compute convention (dense estimate, Kaplan et al. 2020, with P the number of base-model parameters; the adapters and
attention's context-length term are ignored, both small next to P for the sizes used here):
- forward: 2·P per token position a forward computes for the request: its prompt prefill, one per decoded token,
  the gradient window (the segment's positions; the context's too with ``window="context"``) and the rewards' own
  forwards;
- re-prefill: 2·P per position of every forward over the whole context (prompt and generated tokens) that rebuilds
  the KV cache under an updated adapter, counted apart from the forward tokens as in episode mode (``pot.episode``);
- backward: 2·P per position of the gradient window. The base weights are frozen and only adapter gradients are
  taken, so the backward computes activation gradients (≈ one forward) and no weight-gradient GEMMs, next to which
  the rank-r adapters' weight gradients are negligible; PoT measured a LoRA backward at ≈ 1.46× a forward
  (arXiv 2601.20379, Table 7), so this is a lower estimate.
Only positions the request needs are charged: left padding, and rows carried along in a batch after they finished
(a separate run would not compute them), are not, so a request's totals do not depend on its batch.
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
    capped_targets: int  # adapted projections whose ΔW the relative norm cap rescaled at this update
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
    reprefill_tokens: int = 0
    wall_s: float = 0.0
    peak_memory_bytes: int = 0
    gated_off: bool = False
    failure: str | None = None
    num_parameters: int = 0

    @property
    def capped_updates(self) -> int:
        """Updates at which the relative adapter-norm cap bound (rescaled at least one projection)."""
        return sum(u.capped_targets > 0 for u in self.updates)

    @property
    def estimated_flops(self) -> float:
        return 2.0 * self.num_parameters * (self.forward_tokens + self.reprefill_tokens + self.backward_tokens)
