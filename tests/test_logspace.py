"""cat._logspace against mpmath at 400 digits, exact integer binomials, and the branch/pivot switch points."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from cat._logspace import LOG_2, binomial_log_terms, log1mexp, log_binom, log_lower_tail, log_upper_tail, xlogy

# 1 − e^v and 1 − tail cancel catastrophically (v = −1e−300, tails within 1e−300 of 1): 400 digits cover both
DPS = 400


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def mp_log1mexp(v: float):
    with mpmath.workdps(DPS):
        return mpmath.log(-mpmath.expm1(mpmath.mpf(v)))


def mp_log_tails(log_p: float, n: int, k: int):
    """(log P[Bin ≥ k], log P[Bin < k]) by direct summation of both tails at DPS digits."""
    with mpmath.workdps(DPS):
        p = mpmath.exp(mpmath.mpf(log_p))
        terms = [mpmath.binomial(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
        upper, lower = mpmath.fsum(terms[k:]), mpmath.fsum(terms[:k])
        return mpmath.log(upper), (mpmath.log(lower) if lower > 0 else -mpmath.inf)


def rel_err(got: float, expected) -> float:
    expected = float(expected)
    if got == expected:
        return 0.0
    return abs(got - expected) / abs(expected) if expected != 0 else math.inf


@pytest.mark.parametrize(
    "v", [-1e-300, -1e-20, -1e-10, -1e-3, -0.5, -LOG_2 + 1e-12, -LOG_2, -LOG_2 - 1e-12, -0.7, -5.0, -50.0, -700.0]
)
def test_log1mexp_matches_arbitrary_precision_on_both_branches(v):
    assert rel_err(float(log1mexp(f64(v))), mp_log1mexp(v)) <= 4e-16


def test_log1mexp_end_points_and_gradient():
    assert log1mexp(f64([0.0, -math.inf])).tolist() == [-math.inf, 0.0]
    assert float(log1mexp(f64(-1e4))) == 0.0  # −e^(−1e4) underflows to −0.0
    v = f64([-1e-8, -0.3, -LOG_2 - 1e-9, -3.0, -40.0]).requires_grad_()
    log1mexp(v).sum().backward()
    # d/dv log(1 − eᵛ) = −eᵛ/(1 − eᵛ) = −1/expm1(−v)
    expected = [float(-1 / mpmath.expm1(-mpmath.mpf(x))) for x in v.detach().tolist()]
    assert v.grad.tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(log1mexp, (f64([-2.0, -0.1, -0.69, -0.7]).requires_grad_(),))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1024])
def test_log_binom_matches_exact_integer_binomials(n):
    k = torch.arange(0, n + 1)
    got = log_binom(n, k)
    assert got.dtype == torch.float64
    expected = [math.log(math.comb(n, int(i))) for i in k]
    assert got.tolist() == pytest.approx(expected, rel=1e-13, abs=1e-12)


def test_xlogy_takes_zero_times_minus_inf_as_zero():
    coef = f64([0.0, 0.0, 2.0, 3.0])
    log_value = f64([-math.inf, -1.5, -math.inf, -0.5])
    assert xlogy(coef, log_value).tolist() == [0.0, 0.0, -math.inf, -1.5]


def test_binomial_log_terms_sum_to_one():
    """Σᵢ C(n,i) pⁱ qⁿ⁻ⁱ = 1 for every p, including the end points p = 0 and p = 1."""
    log_p = f64([-math.inf, -9.0, -0.9, -1e-9, 0.0])
    for n in (1, 5, 64, 1024):
        terms = binomial_log_terms(log_p, log1mexp(log_p), n, torch.arange(0, n + 1))
        assert torch.logsumexp(terms, dim=-1).tolist() == pytest.approx([0.0] * 5, abs=1e-12)


@pytest.mark.parametrize(
    "n,k", [(1, 1), (8, 1), (8, 3), (8, 8), (64, 26), (256, 200), (1024, 2), (1024, 513), (1024, 1000)]
)
def test_tails_match_arbitrary_precision_on_both_sides_of_the_pivot(n, k):
    pivot = math.log(k / (n + 1))
    log_ps = [-1e4, -700.0, -27.6, -5.0, pivot - 1e-9, pivot, pivot + 1e-9, -0.1, -1e-3, -1e-6]
    log_ps = [lp for lp in log_ps if lp < 0]
    got_upper = log_upper_tail(f64(log_ps), n, k).tolist()
    got_lower = log_lower_tail(f64(log_ps), log1mexp(f64(log_ps)), n, k).tolist()
    for lp, up, lo in zip(log_ps, got_upper, got_lower):
        ref_up, ref_lo = mp_log_tails(lp, n, k)
        # the upper tail keeps relative accuracy even when it is within 1e−100 of 1 (log tail ≈ −1e−100)
        assert rel_err(up, ref_up) <= 1e-11, (lp, up, float(ref_up))
        if lp > pivot:  # the lower tail is only used above the pivot, where it is far from 1
            assert rel_err(lo, ref_lo) <= 1e-11, (lp, lo, float(ref_lo))


def test_upper_tail_end_points():
    log_p = f64([-math.inf, 0.0])
    assert log_upper_tail(log_p, 8, 3).tolist() == [-math.inf, 0.0]
    assert log_upper_tail(log_p, 8, 8).tolist() == [-math.inf, 0.0]
    assert log_upper_tail(log_p, 1, 1).tolist() == [-math.inf, 0.0]
