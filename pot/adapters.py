"""A bank of per-request low-rank adapters applied with batched matmuls (stacked LoRA slots).

For a target projection W (d_in → d_out) and the slot s(b) of batch row b, the output becomes
    y_b = W x_b + (alpha / r) · x_b A_{s(b)} B_{s(b)},   A ∈ R^{S×d_in×r}, B ∈ R^{S×r×d_out}
(LoRA, Hu et al. 2021, with one (A, B) pair per slot, the transient per-problem adapter of Policy of Thoughts,
arXiv 2601.20379). B starts at zero so every slot is a no-op until its first update. The base module is never
modified: the delta is added by a forward hook.

Precision: the adapted projection is computed in float32 and rounded to the model's dtype once,
y = round(W x + delta) with W x, delta and the sum in float32. Adding delta to the bf16 output round(W x) would lose
every delta below half an ulp of it (|delta| / |W x| ≲ 2e-3 in bf16, where a first update usually is), whereas a
single rounding keeps it on average. A plain ``nn.Linear`` in a low-precision dtype is recomputed in float32 for
this (its own output is discarded while a slot is active); other projections (4-bit, peft-wrapped) add the float32
delta to their output (y = round(output.float() + delta)).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.models import disable_cpu_4bit_repack

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


def _plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` itself (not a quantised or wrapped subclass) with a floating-point weight W (d_out × d_in)."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and weight is not None and weight.dtype.is_floating_point
            and tuple(weight.shape) == (module.out_features, module.in_features))


@torch.no_grad()
def projection_norm(module: nn.Module, chunk: int = 1024) -> float:
    """||W||_F of a linear projection x ↦ W x + b as the module computes it.

    A plain floating-point ``nn.Linear`` reads its weight; any other (4-bit, peft-wrapped with unmerged LoRA) is
    probed with the identity: module(I) − module(0) = Wᵀ exactly, in chunks of ``chunk`` rows.
    """
    if _plain_linear(module):
        return float(module.weight.detach().double().norm())
    param = next(module.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    dtype = getattr(module, "compute_dtype", None) or dtype
    zero = module(torch.zeros(1, module.in_features, device=param.device, dtype=dtype)).double()
    total = 0.0
    for start in range(0, module.in_features, chunk):
        rows = torch.arange(start, min(start + chunk, module.in_features), device=param.device)
        eye = torch.zeros(len(rows), module.in_features, device=param.device, dtype=dtype)
        eye[torch.arange(len(rows)), rows] = 1
        total += float((module(eye).double() - zero).square().sum())
    return total**0.5


@dataclass
class AdapterTarget:
    """One adapted projection: its module path, the stacked factors, and the hook handle."""

    name: str
    module: nn.Module
    A: nn.Parameter
    B: nn.Parameter
    weight_norm: float  # ||W||_F of the projection as it computes (dequantised, peft adapters included)


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
        # before any forward, the norm probes included: a repacked 4-bit weight computes in bf16 and gets no gradient
        disable_cpu_4bit_repack(model)
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
                self.adapted.append(AdapterTarget(f"{name}.{kind}", proj, A, B, projection_norm(proj)))
        self.active_slots: torch.Tensor | None = None
        self._handles = [t.module.register_forward_hook(self._hook_for(t)) for t in self.adapted]
        self.reset(torch.arange(num_slots))

    def _hook_for(self, target: AdapterTarget):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            slots = self.active_slots
            if slots is None:
                return None
            x = inputs[0].float()
            delta = torch.bmm(torch.bmm(x, target.A[slots].float()), target.B[slots].float()) * self.scaling
            if output.dtype != torch.float32 and _plain_linear(module):
                bias = None if module.bias is None else module.bias.float()
                return (F.linear(x, module.weight.float(), bias) + delta).to(output.dtype)
            return (output.float() + delta).to(output.dtype)

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
    def cap_relative_norm(self, slots: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per adapted projection t and slot s, rescale B so that ||(alpha/r) A_s B_s||_F ≤ rho·||W_t||_F (ΔW is
        linear in B); return every slot's adapter norm after the cap and how many of its projections were clipped."""
        total = torch.zeros(len(slots), device=self.factors[0].device, dtype=torch.float32)
        clipped = torch.zeros(len(slots), dtype=torch.long, device=total.device)
        for t in self.adapted:
            A, B = t.A[slots].float(), t.B[slots].float()
            norms = ((A.transpose(1, 2) @ A) * (B @ B.transpose(1, 2))).sum(dim=(1, 2)).clamp_min(0).sqrt()
            norms = norms * self.scaling
            limit = rho * t.weight_norm
            over = norms > limit
            factor = torch.where(over, limit / norms.clamp_min(1e-30), torch.ones_like(norms))
            t.B[slots] = (B * factor.view(-1, 1, 1)).to(t.B)
            total += torch.minimum(norms, torch.full_like(norms, limit)).square()
            clipped += over.long()
        return total.sqrt(), clipped

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
