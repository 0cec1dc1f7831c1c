"""Compute-aligned objectives: success probabilities under a test-time strategy, their SFT/RL weights and losses.

Source: Ousherovitch & Tewari, *Compute Aligned Training* (arXiv:2604.24957), Table 1 and App. A/B; names and
signatures follow the paper's reference implementation (``adamoosya/compute-aligned-training``, ``cat.objectives``)
so code written against it runs unchanged.

A test-time strategy maps the single-sample success probability p to f(p). Then

* SFT on a target y*:  loss −log f(p), p = π(y*|x);  ∂(−log f)/∂(−log p) = w_SFT(p) = p·f′(p)/f(p)
* RL with a 0/1 reward: ∇f(p) = f′(p)·∇p, so the reward is re-weighted by w_RL(p) = f′(p)

=============  ==========================  ===========================================  ==============================
strategy       f(p)                        w_SFT(p)                                     w_RL(p)
=============  ==========================  ===========================================  ==============================
pass@n         1 − (1−p)^n                 n·p(1−p)^(n−1) / (1 − (1−p)^n)               n(1−p)^(n−1)
majority (k)   P[Bin(n,p) ≥ k]             k·C(n,k)p^k(1−p)^(n−k) / P[Bin(n,p) ≥ k]     n·C(n−1,k−1)p^(k−1)(1−p)^(n−k)
best-of-n      E[max of n rewards]         pass@n SFT on the best target                n·q^(n−1), q = reward quantile
=============  ==========================  ===========================================  ==============================

Numerics: everything is evaluated in float64 in log space (log1mexp, lgamma binomials, logsumexp tails with the
complementary tail above the pivot k/(n+1)); values and gradients stay finite for n ≤ 1024 and log p ≥ −1e4. The
losses are differentiated through their closed form: their backward pass returns exactly −w_SFT, the weight
functions below, so the gradient cannot drift from the weight. The success probabilities f(p) are differentiated
the same way (backward = w_RL = f′(p)), which keeps their gradients finite and exact at p = 0 and p = 1. The weight
functions themselves are constants (their input is detached): a loss never differentiates through its weight. The
exception is the best-of-n rank weight n·q^(n−1), which is differentiable in q, as in the reference implementation.
Integer coefficients such as k·C(n,k) multiply the exponential instead of entering it as a log, so the k = n majority
SFT weight is exactly n (not exp(log n)).

Dtypes: everything is computed in float64 and returned in the input's floating dtype (float32 in, float32 out),
half precision promoted to float32; numbers, lists and integer tensors give float64. Gradients flow back to the
input in its own dtype.
"""

from __future__ import annotations

import math

import torch

from cat._logspace import log1mexp, log_relative_upper_tail_remainder, log_upper_tail, xlogy
from cat._validation import (
    check_k,
    check_log_probability,
    check_positive_int,
    check_probability,
    check_reduction,
    check_same_shape,
    output_dtype,
    reduce,
)

_EXACT_INT = 2**53  # integers up to here are exact in float64

__all__ = [
    "passn_probability",
    "passn_log_probability",
    "passn_rl_weight",
    "passn_sft_weight",
    "passn_sft_weight_from_logp",
    "passn_sft_loss",
    "majority_probability",
    "majority_log_probability",
    "majority_rl_weight",
    "majority_sft_weight",
    "majority_sft_weight_from_logp",
    "majority_sft_loss",
    "best_of_n_rl_weight",
    "normalize_prompt_weights",
    "normalize_sample_weights",
    "weighted_policy_loss",
]

_LOG_EPS = math.log(torch.finfo(torch.float64).eps)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p)  # log 0 = −inf is a valid input to every *_from_logp function


def _times_exp(coefficient: int, log_rest: torch.Tensor) -> torch.Tensor:
    """coefficient · exp(log_rest) for an integer coefficient: exact where exp(log_rest) is (e.g. 1 at log_rest = 0),
    through the log only when the integer is too large for float64 (it may then exceed the float range alone)."""
    if coefficient <= _EXACT_INT:
        return coefficient * torch.exp(log_rest)
    return torch.exp(math.log(coefficient) + log_rest)


class _ClosedForm(torch.autograd.Function):
    """y = value_fn(x) whose backward is exactly derivative_fn(x), both evaluated in float64.

    Used for log f as a function of log p (derivative w_SFT) and for f as a function of p (derivative w_RL): the
    gradient cannot drift from the weight, and it stays finite at the end points where autograd through the
    log-space branches gives NaN (0·inf). Under ``create_graph=True`` the derivative is itself differentiated by
    autograd, so second derivatives are correct too (inside (0, 1); only first derivatives are exact at the ends).
    """

    @staticmethod
    def forward(ctx, x, value_fn, derivative_fn):
        ctx.save_for_backward(x)
        ctx.derivative_fn = derivative_fn
        return value_fn(x.detach().to(torch.float64))

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return (grad_out.to(torch.float64) * ctx.derivative_fn(x.to(torch.float64))).to(x.dtype), None, None


# ----------------------------------------------------------------------------------------------------------- pass@n


def _passn_tiny_p(log_p: torch.Tensor, n: int) -> torch.Tensor:
    """Where n·p is below machine epsilon, 1 − (1−p)^n = n·p to double precision (relative error (n−1)p/2)."""
    return log_p < _LOG_EPS - math.log(n)


def _passn_log_probability(log_p: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return log_p.clone()
    tiny = _passn_tiny_p(log_p, n)
    safe = torch.where(tiny, torch.full_like(log_p, -1.0), log_p)
    exact = log1mexp(n * log1mexp(safe))
    return torch.where(tiny, log_p + math.log(n), exact)


def _passn_sft_weight_from_logp(log_p: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.ones_like(log_p)
    tiny = _passn_tiny_p(log_p, n)
    safe = torch.where(tiny, torch.full_like(log_p, -1.0), log_p)
    log_rest = safe + (n - 1) * log1mexp(safe) - log1mexp(n * log1mexp(safe))
    # below the threshold the ratio n·p/(1−(1−p)^n) is 1 to double precision, leaving (1−p)^(n−1) = 1
    return torch.where(tiny, torch.ones_like(log_p), _times_exp(n, log_rest))


def _passn_probability(p: torch.Tensor, n: int) -> torch.Tensor:
    return -torch.expm1(xlogy(torch.tensor(float(n), dtype=torch.float64), torch.log1p(-p)))


def _passn_rl_weight(p: torch.Tensor, n: int) -> torch.Tensor:
    return n * torch.exp(xlogy(torch.tensor(float(n - 1), dtype=torch.float64), torch.log1p(-p)))


def passn_probability(p, n: int) -> torch.Tensor:
    """pass@n success probability 1 − (1−p)^n, computed as −expm1(n·log1p(−p)); its gradient is passn_rl_weight."""
    n = check_positive_int(n, "n")
    dtype = output_dtype(p)
    p = check_probability(p)
    return _ClosedForm.apply(p, lambda x: _passn_probability(x, n), lambda x: _passn_rl_weight(x, n)).to(dtype)


def passn_log_probability(log_p, n: int) -> torch.Tensor:
    """log(1 − (1−p)^n) from log p = log1mexp(n·log1mexp(log p)); → log p + log n as p → 0."""
    n = check_positive_int(n, "n")
    log_p = check_log_probability(log_p)
    return _passn_log_success(log_p, n).to(output_dtype(log_p))


def passn_rl_weight(p, n: int) -> torch.Tensor:
    """pass@n RL weight f′(p) = n(1−p)^(n−1): N at p = 0, 0 at p = 1 (n > 1), ≡ 1 for n = 1."""
    n = check_positive_int(n, "n")
    dtype = output_dtype(p)
    p = check_probability(p).detach()  # weights are constants in every loss: never differentiated
    return _passn_rl_weight(p, n).to(dtype)


def passn_sft_weight(p, n: int) -> torch.Tensor:
    """pass@n SFT weight n·p(1−p)^(n−1)/(1−(1−p)^n) (DCO's F(N, p)); 1 at p = 0, 0 at p = 1 for n > 1."""
    n = check_positive_int(n, "n")
    dtype = output_dtype(p)
    p = check_probability(p).detach()  # weights are constants in every loss: never differentiated
    return _passn_sft_weight_from_logp(_log(p), n).to(dtype)


def passn_sft_weight_from_logp(log_p, n: int) -> torch.Tensor:
    """The pass@n SFT weight as a function of log p: exp(log n + log p + (n−1)·log(1−p) − log pass@n)."""
    n = check_positive_int(n, "n")
    log_p = check_log_probability(log_p)
    return _passn_sft_weight_from_logp(log_p.detach().to(torch.float64), n).to(output_dtype(log_p))


def _passn_log_success(log_p: torch.Tensor, n: int) -> torch.Tensor:
    return _ClosedForm.apply(
        log_p, lambda lp: _passn_log_probability(lp, n), lambda lp: _passn_sft_weight_from_logp(lp, n)
    )


def passn_sft_loss(log_p, n: int, reduction: str = "mean") -> torch.Tensor:
    """pass@n SFT loss −log(1 − (1−p)^n) (= DCO, Chen et al. 2025); gradient w.r.t. log p is −w_SFT exactly."""
    n = check_positive_int(n, "n")
    log_p = check_log_probability(log_p)
    reduction = check_reduction(reduction)
    return reduce((-_passn_log_success(log_p, n)).to(output_dtype(log_p)), reduction)


# --------------------------------------------------------------------------------------------------------- majority


def _majority_log_success(log_p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    return _ClosedForm.apply(
        log_p, lambda lp: log_upper_tail(lp, n, k), lambda lp: _majority_sft_weight_from_logp(lp, n, k)
    )


def _majority_sft_weight_from_logp(log_p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    # w = k·C(n,k)·p^k·q^(n−k) / (p^k·S): p^k cancels, and C(n,k) moves into S, leaving k·exp((n−k)·log q − log S′)
    # with S′ = S/C(n,k), whose leading term is exactly q^(n−k): w is exactly k at p = 0 and exactly n when k = n
    log_q = log1mexp(log_p)
    log_s = log_relative_upper_tail_remainder(log_p, log_q, n, k)
    n_minus_k = torch.tensor(float(n - k), dtype=torch.float64)
    return k * torch.exp(xlogy(n_minus_k, log_q) - log_s)


def _majority_rl_weight(p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    f64 = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    log_rest = xlogy(f64(k - 1), _log(p)) + xlogy(f64(n - k), torch.log1p(-p))
    return _times_exp(n * math.comb(n - 1, k - 1), log_rest)


def majority_probability(p, n: int, k: int) -> torch.Tensor:
    """Fixed-threshold majority surrogate P[Binomial(n, p) ≥ k]; k = 1 is pass@n; gradient majority_rl_weight."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    dtype = output_dtype(p)
    p = check_probability(p)
    return _ClosedForm.apply(
        p, lambda x: torch.exp(log_upper_tail(_log(x), n, k)), lambda x: _majority_rl_weight(x, n, k)
    ).to(dtype)


def majority_log_probability(log_p, n: int, k: int) -> torch.Tensor:
    """log P[Binomial(n, p) ≥ k] from log p; → k·log p + log C(n,k) as p → 0."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    log_p = check_log_probability(log_p)
    return _majority_log_success(log_p, n, k).to(output_dtype(log_p))


def majority_rl_weight(p, n: int, k: int) -> torch.Tensor:
    """Majority RL weight d/dp P[Bin(n,p) ≥ k] = n·C(n−1,k−1)·p^(k−1)(1−p)^(n−k) (peak at p* = (k−1)/(n−1))."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    dtype = output_dtype(p)
    p = check_probability(p).detach()  # weights are constants in every loss: never differentiated
    return _majority_rl_weight(p, n, k).to(dtype)


def majority_sft_weight(p, n: int, k: int) -> torch.Tensor:
    """Majority SFT weight k·C(n,k)p^k(1−p)^(n−k) / P[Bin(n,p) ≥ k]: k at p = 0; at p = 1, n if k = n else 0."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    dtype = output_dtype(p)
    p = check_probability(p).detach()  # weights are constants in every loss: never differentiated
    return _majority_sft_weight_from_logp(_log(p), n, k).to(dtype)


def majority_sft_weight_from_logp(log_p, n: int, k: int) -> torch.Tensor:
    """The majority SFT weight as a function of log p (p^k cancelled analytically)."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    log_p = check_log_probability(log_p)
    return _majority_sft_weight_from_logp(log_p.detach().to(torch.float64), n, k).to(output_dtype(log_p))


def majority_sft_loss(log_p, n: int, k: int, reduction: str = "mean") -> torch.Tensor:
    """Majority SFT loss −log P[Bin(n,p) ≥ k]; k = n gives −n·log p; gradient w.r.t. log p is −w_SFT exactly."""
    n = check_positive_int(n, "n")
    k = check_k(k, n)
    log_p = check_log_probability(log_p)
    reduction = check_reduction(reduction)
    return reduce((-_majority_log_success(log_p, n, k)).to(output_dtype(log_p)), reduction)


# ------------------------------------------------------------------------------------------------------- best-of-n


def best_of_n_rl_weight(q, n: int) -> torch.Tensor:
    """Best-of-n rank weight n·q^(n−1) for a lower-tail reward quantile q = P[R(Y′) < R(y)] (CAT App. B.2.3).

    Differentiable in q (d/dq = n(n−1)·q^(n−2)), exact at q = 0 and q = 1; the trainers pass detached quantiles.
    """
    n = check_positive_int(n, "n")
    dtype = output_dtype(q)
    q = check_probability(q, "q")
    return (n * q.pow(n - 1)).to(dtype)


# -------------------------------------------------------------------------------------- normalisation and RL loss


def _check_weights(w, name: str) -> torch.Tensor:
    w = w.detach().to(torch.float64) if isinstance(w, torch.Tensor) else torch.as_tensor(w, dtype=torch.float64)
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and >= 0, got {float(w[bad].flatten()[0])!r}")
    if w.numel() == 0 or not bool((w > 0).any()):
        raise ValueError(f"{name} are all-zero; there is nothing to normalise")
    return w


def _mean_one(w: torch.Tensor) -> torch.Tensor:
    # rescale by the max first: no overflow at 1e300, no loss to underflow at 1e−300, and no epsilon
    scaled = w / w.max()
    return scaled / scaled.mean()


def normalize_prompt_weights(w) -> torch.Tensor:
    """One weight per distinct prompt → mean 1 over prompts, ratios kept, detached (CAT App. B normalisation).

    Normalise before expanding to a prompt's rollouts, so a prompt's weight does not scale with its group size.
    A single prompt is refused: dividing by its own mean would erase the weight.
    """
    dtype = output_dtype(w)
    checked = _check_weights(w, "weights")
    if checked.dim() != 1:
        raise ValueError(f"weights must be 1-D (one per distinct prompt), got shape {tuple(checked.shape)}")
    if checked.numel() < 2:
        raise ValueError(f"need at least two distinct prompts to normalise, got {checked.numel()}")
    return _mean_one(checked).to(dtype)


def normalize_sample_weights(w) -> torch.Tensor:
    """Per-sample weights of any shape → mean 1, ratios kept, detached (best-of-n ranks, sequence-p weights)."""
    return _mean_one(_check_weights(w, "weights")).to(output_dtype(w))


def weighted_policy_loss(logp, advantages, weights, reduction: str = "mean") -> torch.Tensor:
    """REINFORCE surrogate −log π(y)·A·w with the advantage A and CAT weight w detached (CAT §5, RL update)."""
    reduction = check_reduction(reduction)
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"logp must be a tensor, got {type(logp).__name__}")
    logp = check_log_probability(logp, "logp")
    advantages = torch.as_tensor(advantages, dtype=logp.dtype)
    weights = torch.as_tensor(weights, dtype=logp.dtype)
    check_same_shape(logp=logp, advantages=advantages, weights=weights)
    for name, value in (("advantages", advantages), ("weights", weights)):
        bad = ~torch.isfinite(value.detach())
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} must be finite, got {float(value.detach()[index])!r} at index {index}")
    return reduce(-logp * advantages.detach() * weights.detach(), reduction)
