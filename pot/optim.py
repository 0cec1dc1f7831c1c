"""Per-slot Adam over stacked adapter factors: each slot has its own moments, step count and gradient clip.

torch.optim.Adam keeps one step count per tensor; here slot s of every (S, ...) factor is an independent parameter
set (requests join at different times). Update (Kingma & Ba 2015, no weight decay):
    g ← g · min(1, c / ||g_s||),  m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,
    θ ← θ − lr · (m / (1−β1^t_s)) / (sqrt(v / (1−β2^t_s)) + eps),
with ||g_s|| the norm over all of slot s's factors and t_s the slot's own step count.
"""

from __future__ import annotations

import torch


class SlotAdam:
    def __init__(self, params: list[torch.nn.Parameter], num_slots: int, *, lr: float = 3e-4,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, max_grad_norm: float = 1.0) -> None:
        self.params, self.lr, self.betas, self.eps, self.max_grad_norm = params, lr, betas, eps, max_grad_norm
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = torch.zeros(num_slots, dtype=torch.long)

    @torch.no_grad()
    def reset(self, slots: torch.Tensor) -> None:
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[slots] = 0
            v[slots] = 0
        self.steps[slots] = 0

    @torch.no_grad()
    def grad_norms(self, slots: torch.Tensor) -> torch.Tensor:
        total = sum(p.grad[slots].float().flatten(1).pow(2).sum(1) for p in self.params)
        return total.sqrt().cpu()

    @torch.no_grad()
    def step(self, slots: torch.Tensor) -> torch.Tensor:
        """Update ``slots`` whose gradient norm is finite; return every requested slot's pre-clip gradient norm."""
        norms = self.grad_norms(slots)
        ok = torch.isfinite(norms)
        slots, norms_ok = slots[ok], norms[ok]
        if len(slots):
            self.steps[slots] += 1
            beta1, beta2 = self.betas
            t = self.steps[slots].double()
            device = self.params[0].device
            clip = (self.max_grad_norm / (norms_ok + 1e-6)).clamp(max=1.0).to(device)
            bc1 = (1 - beta1**t).to(device)
            bc2 = (1 - beta2**t).to(device)
            for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
                shape = (-1,) + (1,) * (p.dim() - 1)
                g = p.grad[slots] * clip.view(shape).to(p.dtype)
                m[slots] = beta1 * m[slots] + (1 - beta1) * g
                v[slots] = beta2 * v[slots] + (1 - beta2) * g * g
                denom = (v[slots] / bc2.view(shape).to(p.dtype)).sqrt() + self.eps
                p[slots] = p[slots] - self.lr * (m[slots] / bc1.view(shape).to(p.dtype)) / denom
        return norms
