"""A bank of per-request low-rank adapters applied with batched matmuls (stacked LoRA slots).

For a target projection W (d_in → d_out) and the slot s(b) of batch row b, the output becomes
    y_b = W x_b + (alpha / r) · x_b A_{s(b)} B_{s(b)},   A ∈ R^{S×d_in×r}, B ∈ R^{S×r×d_out}
(LoRA, Hu et al. 2021, with one (A, B) pair per slot: pot_anchors.md §3.2). B starts at zero so every slot is a
no-op until its first update. The base module is never modified: the delta is added by a forward hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

QUERY_NAMES = ("q_proj", "query", "wq")
VALUE_NAMES = ("v_proj", "value", "wv")


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module) and hasattr(child, "in_features") and hasattr(child, "out_features"):
            return child
    return None


def find_attention_projections(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """Every attention block's ``(name, query_proj, value_proj)`` in module order (Llama/Mistral/Qwen/Gemma style)."""
    found = []
    for name, module in model.named_modules():
        q, v = _child(module, QUERY_NAMES), _child(module, VALUE_NAMES)
        if q is not None and v is not None:
            found.append((name, q, v))
    if not found:
        raise ValueError(f"model {type(model).__name__!r} has no attention module with q/v projection linears")
    return found


@dataclass
class AdapterTarget:
    """One adapted projection: its module path, the stacked factors, and the hook handle."""

    name: str
    module: nn.Module
    A: nn.Parameter
    B: nn.Parameter


class SlotAdapterBank(nn.Module):
    """S independent LoRA slots on the q (and v) projections of every ``layer_stride``-th attention layer.

    Set ``active_slots`` (a LongTensor with one slot index per batch row) around a forward; while it is ``None`` the
    hooks add nothing and the model is exactly the base model.
    """

    def __init__(
        self,
        model: nn.Module,
        num_slots: int,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        layer_stride: int = 4,
        targets: str = "qv",
        init_std: float = 0.01,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots!r}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank!r}")
        if layer_stride < 1:
            raise ValueError(f"layer_stride must be >= 1, got {layer_stride!r}")
        if targets not in ("q", "qv"):
            raise ValueError(f"targets must be 'q' or 'qv', got {targets!r}")
        self.num_slots, self.rank, self.scaling, self.init_std = num_slots, rank, alpha / rank, init_std
        self.targets = targets
        self.generator = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        self.adapted: list[AdapterTarget] = []
        self.factors = nn.ParameterList()
        for layer_idx, (name, q, v) in enumerate(find_attention_projections(model)):
            if layer_idx % layer_stride:
                continue
            for kind, proj in (("q", q), ("v", v))[: len(targets)]:
                A = nn.Parameter(torch.zeros(num_slots, proj.in_features, rank, device=device, dtype=dtype))
                B = nn.Parameter(torch.zeros(num_slots, rank, proj.out_features, device=device, dtype=dtype))
                self.factors.extend([A, B])
                self.adapted.append(AdapterTarget(f"{name}.{kind}", proj, A, B))
        self.active_slots: torch.Tensor | None = None
        self._handles = [t.module.register_forward_hook(self._hook_for(t)) for t in self.adapted]
        self.reset(torch.arange(num_slots))

    def _hook_for(self, target: AdapterTarget):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            slots = self.active_slots
            if slots is None:
                return None
            x = inputs[0].to(target.A.dtype)
            delta = torch.bmm(torch.bmm(x, target.A[slots]), target.B[slots]) * self.scaling
            return output + delta.to(output.dtype)

        return hook

    def parameters_list(self) -> list[nn.Parameter]:
        return list(self.factors)

    @torch.no_grad()
    def reset(self, slots: torch.Tensor, seeds: list[int] | None = None) -> None:
        """Fresh slots: A ~ N(0, init_std²), B = 0 (the adapter is a no-op).

        With ``seeds`` (one per slot) each slot's A depends only on its seed, so a request gets the same adapter
        whatever slot or batch it lands in; without, the bank's own generator is used.
        """
        gens = [torch.Generator().manual_seed(s) for s in seeds] if seeds is not None else None
        for t in self.adapted:
            for j, slot in enumerate(slots.tolist()):
                noise = torch.randn(t.A.shape[1:], generator=gens[j] if gens else self.generator)
                t.A[slot] = (noise * self.init_std).to(t.A)
            t.B[slots] = 0

    @torch.no_grad()
    def adapter_norm(self, slots: torch.Tensor) -> torch.Tensor:
        """Per slot sqrt(Σ_targets ||(alpha/r) A_s B_s||_F²), via ||AB||_F² = Σ (AᵀA) ⊙ (BBᵀ) (r×r, cheap)."""
        total = torch.zeros(len(slots), device=self.factors[0].device, dtype=torch.float32)
        for t in self.adapted:
            A, B = t.A[slots].float(), t.B[slots].float()
            gram = (A.transpose(1, 2) @ A) * (B @ B.transpose(1, 2))
            total += gram.sum(dim=(1, 2)).clamp_min(0) * self.scaling**2
        return total.sqrt()

    @torch.no_grad()
    def cap_norm(self, slots: torch.Tensor, max_norm: float) -> torch.Tensor:
        """Rescale B of every slot whose adapter norm exceeds ``max_norm`` (ΔW is linear in B); return the norms."""
        norms = self.adapter_norm(slots)
        factor = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        for t in self.adapted:
            t.B[slots] = t.B[slots] * factor.view(-1, 1, 1).to(t.B)
        return torch.minimum(norms, torch.full_like(norms, max_norm))

    @contextmanager
    def use(self, slots: torch.Tensor | None) -> Iterator[None]:
        previous, self.active_slots = self.active_slots, slots
        try:
            yield
        finally:
            self.active_slots = previous

    def remove(self) -> None:
        """Detach the hooks: the model is the untouched base model again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
