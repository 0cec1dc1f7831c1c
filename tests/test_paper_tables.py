"""cat.objectives against every cell of the CAT paper's Table 1 weight values and its majority "spotlight" peaks,
with the references recomputed in mpmath (no numbers copied from the paper or from the code)."""

from __future__ import annotations

import mpmath
import pytest
import sympy
import torch

from cat import objectives as obj

TABLE_PS = ("0.001", "0.01", "0.05", "0.1", "0.2", "0.25", "0.3", "0.5", "0.7")


def ref_tail(p, n: int, k: int):
    return mpmath.fsum(mpmath.binomial(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def close(actual: float, expected, rel: float = 1e-12) -> bool:
    expected = float(expected)
    return abs(actual - expected) <= max(rel * abs(expected), 1e-300)


@pytest.mark.parametrize("s", TABLE_PS)
def test_value_table_cells_match_mpmath(s):
    with mpmath.workdps(50):
        p, mp = torch.tensor(float(s), dtype=torch.float64), mpmath.mpf(float(s))
        for n in (1, 4, 16, 64):
            passn = 1 - (1 - mp) ** n
            # w_SFT = d log f / d log p and w_RL = d f / d p, both by mpmath's numerical differentiation
            sft = mpmath.diff(lambda x: mpmath.log(1 - (1 - mpmath.exp(x)) ** n), mpmath.log(mp))
            rl = mpmath.diff(lambda x: 1 - (1 - x) ** n, mp)
            assert close(float(obj.passn_probability(p, n)), passn), (s, n)
            assert close(float(obj.passn_sft_weight(p, n)), sft, rel=1e-11), (s, n)
            assert close(float(obj.passn_rl_weight(p, n)), rl, rel=1e-11), (s, n)
        majority_sft = mpmath.diff(lambda x: mpmath.log(ref_tail(mpmath.exp(x), 8, 3)), mpmath.log(mp))
        majority_rl = mpmath.diff(lambda x: ref_tail(x, 8, 3), mp)
        assert close(float(obj.majority_sft_weight(p, 8, 3)), majority_sft, rel=1e-11), s
        assert close(float(obj.majority_rl_weight(p, 8, 3)), majority_rl, rel=1e-11), s


@pytest.mark.parametrize("n,k", [(8, 3), (16, 4), (64, 26)])
def test_majority_rl_spotlight_peaks_at_k_minus_1_over_n_minus_1(n, k):
    """The majority RL weight B′(p) is unimodal with its maximum where B″ changes sign, at p* = (k−1)/(n−1)
    (B differentiated symbolically by sympy and evaluated at exact rationals)."""
    x = sympy.symbols("x")
    tail = sum(sympy.binomial(n, i) * x**i * (1 - x) ** (n - i) for i in range(k, n + 1))
    first, second = sympy.diff(tail, x), sympy.diff(tail, x, 2)
    p_star, eps = sympy.Rational(k - 1, n - 1), sympy.Rational(1, 10**6)
    assert second.subs(x, p_star) == 0
    assert second.subs(x, p_star - eps) > 0 > second.subs(x, p_star + eps)
    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    weights = obj.majority_rl_weight(grid, n, k)
    peak = int(weights.argmax())
    assert float(grid[peak]) == pytest.approx((k - 1) / (n - 1), abs=1e-5)
    assert float(obj.majority_rl_weight(float(p_star), n, k)) == pytest.approx(float(first.subs(x, p_star)), rel=1e-13)
    assert bool((weights.diff()[:peak] >= 0).all()) and bool((weights.diff()[peak:] <= 0).all())
