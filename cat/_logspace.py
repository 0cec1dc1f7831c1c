"""Log-space primitives for the closed forms: log(1 − eᵛ), log-binomials and binomial tails.

All functions take and return float64 tensors and never produce NaN for inputs in their domain, including the
end points (p = 0 or 1, i.e. log p = −inf or 0), where products like 0·log 0 are taken as 0.
"""

from __future__ import annotations

import math

import torch

LOG_2 = math.log(2.0)


def log1mexp(v: torch.Tensor) -> torch.Tensor:
    """log(1 − eᵛ) for v ≤ 0, accurate over the whole range (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").

    Uses log(−expm1(v)) for v > −log 2 and log1p(−eᵛ) otherwise; log1mexp(0) = −inf and log1mexp(−inf) = 0.
    """
    near_zero = v > -LOG_2
    # each branch sees a safe argument, so the unused one cannot leak inf/NaN into gradients
    v_near = torch.where(near_zero, v, torch.full_like(v, -1.0))
    v_far = torch.where(near_zero, torch.full_like(v, -1.0), v)
    return torch.where(near_zero, torch.log(-torch.expm1(v_near)), torch.log1p(-torch.exp(v_far)))


def log_binom(n: int | torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """log C(n, k) = lgamma(n+1) − lgamma(k+1) − lgamma(n−k+1), in float64."""
    n = torch.as_tensor(n, dtype=torch.float64)
    k = torch.as_tensor(k, dtype=torch.float64)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def xlogy(coef: torch.Tensor, log_value: torch.Tensor) -> torch.Tensor:
    """coef · log_value with 0 · (−inf) := 0 (the binomial term p⁰ or (1−p)⁰ is exactly 1)."""
    return torch.where(coef == 0, torch.zeros_like(log_value), coef * log_value)


def binomial_log_terms(log_p: torch.Tensor, log_q: torch.Tensor, n: int, i: torch.Tensor, shift: int = 0):
    """log[C(n,i) p^(i−shift) q^(n−i)] for each i along a new last axis (p^shift factored out of every term)."""
    i = i.to(torch.float64)
    return log_binom(n, i) + xlogy(i - shift, log_p.unsqueeze(-1)) + xlogy(n - i, log_q.unsqueeze(-1))


def log_upper_tail_remainder(log_p: torch.Tensor, log_q: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """log S with P[Bin(n,p) ≥ k] = p^k · S, S = Σ_{i=k}^{n} C(n,i) p^(i−k) q^(n−i); finite at p = 0 (S = C(n,k))."""
    i = torch.arange(k, n + 1, dtype=torch.float64)
    return torch.logsumexp(binomial_log_terms(log_p, log_q, n, i, shift=k), dim=-1)


def log_relative_upper_tail_remainder(log_p: torch.Tensor, log_q: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """log(S / C(n,k)) = log Σ_{i=k}^{n} [C(n,i)/C(n,k)]·p^(i−k)·q^(n−i), S as in ``log_upper_tail_remainder``.

    The i = k term is exactly q^(n−k) (its coefficient ratio is 1, not lgamma differences that fail to cancel), so
    at p = 0 the result is exactly (n−k)·log q and at k = n exactly 0.
    """
    i = torch.arange(k, n + 1, dtype=torch.float64)
    log_ratio = log_binom(n, i) - log_binom(n, k)
    terms = log_ratio + xlogy(i - k, log_p.unsqueeze(-1)) + xlogy(n - i, log_q.unsqueeze(-1))
    return torch.logsumexp(terms, dim=-1)


def log_lower_tail(log_p: torch.Tensor, log_q: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """log P[Bin(n,p) < k] = log Σ_{i=0}^{k−1} C(n,i) p^i q^(n−i) (−inf when k = 0)."""
    i = torch.arange(0, k, dtype=torch.float64)
    return torch.logsumexp(binomial_log_terms(log_p, log_q, n, i), dim=-1)


def log_upper_tail(log_p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """log P[Bin(n,p) ≥ k] from log p, summing the upper tail below the pivot p = k/(n+1) and taking the
    complement log(1 − P[Bin < k]) above it, where the upper tail is close to 1 and its log loses precision."""
    log_q = log1mexp(log_p)
    upper = k * log_p + log_upper_tail_remainder(log_p, log_q, n, k) if k > 0 else torch.zeros_like(log_p)
    above_pivot = log_p > math.log(k / (n + 1))
    complement = log1mexp(torch.clamp(log_lower_tail(log_p, log_q, n, k), max=0.0))
    # k·log p at log p = −inf is −inf (tail 0) unless k = 0; xlogy handles the k = 0 case above
    return torch.where(above_pivot, complement, upper)
