"""cat.objectives against arbitrary-precision references, autograd, an independent polynomial derivative, and
hypothesis properties."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cat import objectives as obj

mpmath.mp.dps = 60

PS = ["0", "1e-12", "1e-6", "0.001", "0.01", "0.05", "0.1", "0.25", "0.5", "0.75", "0.9", "0.999", "0.999999", "1"]
NS = [1, 2, 4, 8, 16, 64, 256, 1024]


# ---------------------------------------------------------------------------------- independent mpmath references


def ref_passn(p, n):
    return 1 - (1 - p) ** n


def ref_passn_sft(p, n):
    if p == 0:
        return mpmath.mpf(1)
    return n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)


def ref_tail(p, n, k):
    return mpmath.fsum(mpmath.binomial(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def ref_majority_sft(p, n, k):
    if p == 0:
        return mpmath.mpf(k)
    return k * mpmath.binomial(n, k) * p**k * (1 - p) ** (n - k) / ref_tail(p, n, k)


def close(actual: float, expected, rel: float = 1e-11, abs_: float = 1e-300) -> bool:
    expected = float(expected)
    return abs(actual - expected) <= max(rel * abs(expected), abs_)


def grid_p(s: str) -> tuple[torch.Tensor, mpmath.mpf]:
    return torch.tensor(float(s), dtype=torch.float64), mpmath.mpf(float(s))  # same double on both sides


# ------------------------------------------------------------------------------------------------- pass@n values


@pytest.mark.parametrize("n", NS)
def test_passn_values_match_arbitrary_precision(n):
    for s in PS:
        p, mp = grid_p(s)
        assert close(float(obj.passn_probability(p, n)), ref_passn(mp, n)), (s, n)
        assert close(float(obj.passn_rl_weight(p, n)), n * (1 - mp) ** (n - 1)), (s, n)
        assert close(float(obj.passn_sft_weight(p, n)), ref_passn_sft(mp, n), rel=1e-10), (s, n)
        if float(s) > 0:
            log_value = float(obj.passn_log_probability(torch.log(p), n))
            expected = mpmath.log(ref_passn(mp, n))
            assert close(log_value, expected, rel=1e-10, abs_=1e-15), (s, n)


def test_passn_edge_values():
    p = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert obj.passn_sft_weight(p, 8).tolist() == [1.0, 0.0]
    assert obj.passn_sft_weight(p, 1).tolist() == [1.0, 1.0]
    assert obj.passn_rl_weight(p, 8).tolist() == [8.0, 0.0]
    assert obj.passn_probability(p, 8).tolist() == [0.0, 1.0]


def test_passn_weights_with_rational_p_are_exact_to_rounding():
    for p in (Fraction(1, 3), Fraction(1, 7), Fraction(5, 8)):
        for n in (2, 3, 5, 12):
            exact = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
            got = float(obj.passn_sft_weight(torch.tensor(float(p), dtype=torch.float64), n))
            assert got == pytest.approx(float(exact), rel=1e-13)


def test_paper_value_table_recomputed():
    """CAT paper Table 1: pass@N SFT weights for N = 4/16/64 (two decimals as printed there)."""
    for p, expected in {0.01: (0.985, 0.926, 0.716), 0.1: (0.848, 0.404, 0.008), 0.5: (0.267, 2e-4, 0)}.items():
        got = [float(obj.passn_sft_weight(p, n)) for n in (4, 16, 64)]
        assert got == pytest.approx(expected, abs=6e-4)
    assert float(obj.majority_rl_weight(0.5, 8, 3)) == pytest.approx(1.3125, rel=1e-14)


# ------------------------------------------------------------------------------------------------ majority values


@pytest.mark.parametrize("n,k", [(1, 1), (4, 1), (4, 3), (8, 3), (8, 8), (16, 4), (64, 26), (256, 129), (1024, 513)])
def test_majority_values_match_arbitrary_precision(n, k):
    for s in PS:
        p, mp = grid_p(s)
        tail = ref_tail(mp, n, k)
        assert close(float(obj.majority_probability(p, n, k)), tail, rel=1e-9), (s, n, k)
        rl = n * mpmath.binomial(n - 1, k - 1) * mp ** (k - 1) * (1 - mp) ** (n - k)
        assert close(float(obj.majority_rl_weight(p, n, k)), rl, rel=1e-9), (s, n, k)
        if tail > 0 or float(s) == 0:
            expected = ref_majority_sft(mp, n, k) if float(s) < 1 else (n if k == n else 0)
            assert close(float(obj.majority_sft_weight(p, n, k)), expected, rel=1e-9), (s, n, k)
        if 0 < float(s) < 1:
            log_value = float(obj.majority_log_probability(torch.log(p), n, k))
            assert close(log_value, mpmath.log(tail), rel=1e-9, abs_=1e-14), (s, n, k)


def test_majority_edge_limits():
    p = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert obj.majority_sft_weight(p, 8, 3).tolist() == pytest.approx([3.0, 0.0])
    assert obj.majority_sft_weight(p, 8, 8).tolist() == pytest.approx([8.0, 8.0])
    assert obj.majority_rl_weight(p, 8, 3).tolist() == [0.0, 0.0]


def test_majority_rl_weight_is_the_derivative_of_the_binomial_polynomial():
    """Differentiate P[Bin(n,p) ≥ k] symbolically (sympy) and evaluate with exact rationals."""
    x = sympy.symbols("x")
    for n, k in [(4, 2), (8, 3), (10, 7), (16, 4)]:
        tail = sum(sympy.binomial(n, i) * x**i * (1 - x) ** (n - i) for i in range(k, n + 1))
        derivative = sympy.diff(tail, x)
        for p in (Fraction(1, 10), Fraction(2, 7), Fraction(1, 2), Fraction(9, 10)):
            exact = derivative.subs(x, sympy.Rational(p.numerator, p.denominator))
            got = float(obj.majority_rl_weight(float(p), n, k))
            assert got == pytest.approx(float(exact), rel=1e-12)


def test_majority_k1_is_passn_and_k_equals_n_is_n_log_p():
    log_p = torch.linspace(-30, -1e-3, 50, dtype=torch.float64)
    for n in (2, 8, 64):
        assert torch.allclose(obj.majority_log_probability(log_p, n, 1), obj.passn_log_probability(log_p, n), rtol=1e-12)
        assert torch.allclose(
            obj.majority_sft_weight_from_logp(log_p, n, 1), obj.passn_sft_weight_from_logp(log_p, n), rtol=1e-10
        )
        loss = obj.majority_sft_loss(log_p, n, n, reduction="none")
        assert torch.allclose(loss, -n * log_p, rtol=1e-12)


def test_best_of_n_is_passn_rl_with_complement():
    q = torch.linspace(0, 1, 101, dtype=torch.float64)
    for n in (1, 2, 8, 64):
        assert torch.allclose(obj.best_of_n_rl_weight(1 - q, n), obj.passn_rl_weight(q, n), rtol=1e-12, atol=0)
        assert torch.allclose(obj.best_of_n_rl_weight(q, n), n * q ** (n - 1), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_passn_loss_gradient_is_minus_the_weight(n):
    log_p = torch.tensor([-20.0, -3.0, -0.7, -0.05, -1e-4], dtype=torch.float64, requires_grad=True)
    obj.passn_sft_loss(log_p, n, reduction="sum").backward()
    assert torch.equal(log_p.grad, -obj.passn_sft_weight_from_logp(log_p, n))
    assert torch.autograd.gradcheck(lambda x: obj.passn_sft_loss(x, n, reduction="none"), (log_p.detach().requires_grad_(),))


@pytest.mark.parametrize("n,k", [(4, 2), (8, 3), (16, 4), (64, 26)])
def test_majority_loss_gradient_is_minus_the_weight(n, k):
    log_p = torch.tensor([-20.0, -3.0, -0.7, -0.05, -1e-4], dtype=torch.float64, requires_grad=True)
    obj.majority_sft_loss(log_p, n, k, reduction="sum").backward()
    assert torch.equal(log_p.grad, -obj.majority_sft_weight_from_logp(log_p, n, k))
    assert torch.autograd.gradcheck(
        lambda x: obj.majority_sft_loss(x, n, k, reduction="none"), (log_p.detach().requires_grad_(),)
    )


def test_weight_equals_numerical_derivative_of_log_success():
    """w_SFT = d log f / d log p, checked by central differences in mpmath (independent of the code's formula)."""
    h = mpmath.mpf("1e-20")
    for lp in (-8.0, -2.0, -0.3):
        x = mpmath.mpf(lp)
        for n in (4, 16):
            deriv = (mpmath.log(ref_passn(mpmath.exp(x + h), n)) - mpmath.log(ref_passn(mpmath.exp(x - h), n))) / (2 * h)
            assert float(obj.passn_sft_weight_from_logp(lp, n)) == pytest.approx(float(deriv), rel=1e-10)
        for n, k in ((8, 3), (16, 4)):
            deriv = (mpmath.log(ref_tail(mpmath.exp(x + h), n, k)) - mpmath.log(ref_tail(mpmath.exp(x - h), n, k))) / (2 * h)
            assert float(obj.majority_sft_weight_from_logp(lp, n, k)) == pytest.approx(float(deriv), rel=1e-10)


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("p0", [0.0, 1.0])
def test_success_probability_gradient_is_exact_at_the_end_points(n, p0):
    """df/dp at p ∈ {0, 1} equals the RL weight evaluated with exact integers (Python's 0**0 = 1)."""
    for k in sorted({1, n}):
        p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(obj.majority_probability(p, n, k), p)
        expected = n * math.comb(n - 1, k - 1) * int(p0) ** (k - 1) * (1 - int(p0)) ** (n - k)
        assert float(grad) == pytest.approx(expected, rel=1e-14), (n, k)
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(obj.passn_probability(p, n), p)
    assert float(grad) == n * (1 - int(p0)) ** (n - 1)


@pytest.mark.parametrize("n,k", [(1, 1), (2, 2), (8, 1), (8, 3), (8, 8), (64, 26)])
def test_success_probability_gradient_matches_finite_differences(n, k):
    p = torch.tensor([1e-3, 0.2, 0.5, 0.8, 0.999], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: obj.majority_probability(x, n, k), (p,))
    assert torch.autograd.gradcheck(lambda x: obj.passn_probability(x, n), (p,))


def test_second_derivatives_differentiate_the_weight():
    """create_graph=True differentiates the closed-form backward: d²f/dp² = f″, d²log f/d(log p)² = dw_SFT/dlog p."""
    p = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(obj.passn_probability(p, 4).sum(), p, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), p)
    assert float(second) == pytest.approx(-4 * 3 * 0.7**2, rel=1e-13)
    h = mpmath.mpf("1e-15")
    for lp in (-4.0, -0.3):
        log_p = torch.tensor([lp], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(obj.majority_log_probability(log_p, 8, 3).sum(), log_p, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), log_p)
        log_f = lambda x: mpmath.log(ref_tail(mpmath.exp(x), 8, 3))  # noqa: E731
        x = mpmath.mpf(lp)
        expected = (log_f(x + h) - 2 * log_f(x) + log_f(x - h)) / h**2
        assert float(second) == pytest.approx(float(expected), rel=1e-8)


def test_weights_are_constants():
    p = torch.tensor([0.2, 0.7], dtype=torch.float64, requires_grad=True)
    for w in (obj.passn_sft_weight(p, 4), obj.passn_rl_weight(p, 4), obj.majority_sft_weight(p, 8, 3),
              obj.majority_rl_weight(p, 8, 3)):
        assert not w.requires_grad


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_best_of_n_rl_weight_is_differentiable_in_q_and_exact_at_the_ends(n):
    q = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    w = obj.best_of_n_rl_weight(q, n)
    assert w.tolist() == [float(n * Fraction(v).limit_denominator() ** (n - 1)) for v in (0, 0.25, 0.5, 1)]
    w.sum().backward()
    # d/dq n·q^(n−1) = n(n−1)·q^(n−2), by exact rationals (0^0 = 1 at n = 2, and 0 for n = 1)
    expected = [float(n * (n - 1) * Fraction(v) ** (n - 2)) if n >= 2 else 0.0 for v in (0, 0.25, 0.5, 1)]
    assert q.grad.tolist() == expected
    x = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: obj.best_of_n_rl_weight(v, n), (x,))


FLOAT_OUTPUTS = {
    "passn_probability": lambda x: obj.passn_probability(x, 4),
    "passn_rl_weight": lambda x: obj.passn_rl_weight(x, 4),
    "passn_sft_weight": lambda x: obj.passn_sft_weight(x, 4),
    "majority_probability": lambda x: obj.majority_probability(x, 8, 3),
    "majority_rl_weight": lambda x: obj.majority_rl_weight(x, 8, 3),
    "majority_sft_weight": lambda x: obj.majority_sft_weight(x, 8, 3),
    "best_of_n_rl_weight": lambda x: obj.best_of_n_rl_weight(x, 4),
    "normalize_prompt_weights": obj.normalize_prompt_weights,
    "normalize_sample_weights": obj.normalize_sample_weights,
}
LOG_OUTPUTS = {
    "passn_log_probability": lambda x: obj.passn_log_probability(x, 4),
    "passn_sft_weight_from_logp": lambda x: obj.passn_sft_weight_from_logp(x, 4),
    "passn_sft_loss": lambda x: obj.passn_sft_loss(x, 4, reduction="none"),
    "majority_log_probability": lambda x: obj.majority_log_probability(x, 8, 3),
    "majority_sft_weight_from_logp": lambda x: obj.majority_sft_weight_from_logp(x, 8, 3),
    "majority_sft_loss": lambda x: obj.majority_sft_loss(x, 8, 3, reduction="none"),
}


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [(name, d, e) for name in [*FLOAT_OUTPUTS, *LOG_OUTPUTS] for d, e in [
        (torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32)]],
)
def test_outputs_keep_the_input_floating_dtype(name, dtype, expected):
    fn = FLOAT_OUTPUTS.get(name) or LOG_OUTPUTS[name]
    x = torch.tensor([0.25, 0.5]) if name in FLOAT_OUTPUTS else torch.tensor([-1.5, -0.25])
    out = fn(x.to(dtype))
    assert out.dtype == expected
    # computed in float64 inside: the float32 result is the float64 result rounded once
    if dtype == torch.float32:
        assert torch.equal(out, fn(x.to(torch.float64)).to(torch.float32))
    assert fn(x.tolist()).dtype == torch.float64  # numbers and lists: float64


def test_half_precision_gradients_flow_back_in_the_input_dtype():
    log_p = torch.tensor([-2.0, -0.5], dtype=torch.bfloat16, requires_grad=True)
    loss = obj.passn_sft_loss(log_p, 8, reduction="none")
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert log_p.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("n", [1, 2, 8, 16, 64])
def test_majority_k_equals_n_gradient_is_exactly_minus_n(n):
    log_p = torch.tensor([0.0, -1e-3, -0.5, -7.0, -200.0], dtype=torch.float64, requires_grad=True)
    obj.majority_sft_loss(log_p, n, n, reduction="sum").backward()
    assert log_p.grad.tolist() == [-float(n)] * 5
    assert obj.majority_sft_weight(torch.tensor([1.0, 0.5], dtype=torch.float64), n, n).tolist() == [float(n)] * 2
    # the RL weight n·C(n−1,k−1)·p^(k−1)(1−p)^(n−k) is n·p^(n−1) at k = n: exactly n at p = 1
    assert obj.majority_rl_weight(torch.tensor([1.0], dtype=torch.float64), n, n).tolist() == [float(n)]


# ------------------------------------------------------------------------------------------------ extreme regime


def test_extreme_regime_is_finite_with_asymptotic_values():
    log_p = torch.tensor([-1e4, -700.0, -50.0], dtype=torch.float64, requires_grad=True)
    n = 1024
    loss = obj.passn_sft_loss(log_p, n, reduction="none")
    assert torch.allclose(loss, -log_p.detach() - math.log(n), rtol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(log_p.grad).all() and torch.allclose(log_p.grad, -torch.ones(3, dtype=torch.float64))
    log_p.grad = None
    for k in (2, 26, 513, 1024):
        loss = obj.majority_sft_loss(log_p, n, k, reduction="none")
        expected = -k * log_p.detach() - float(mpmath.log(mpmath.binomial(n, k)))
        assert torch.allclose(loss, expected, rtol=1e-10)
        loss.sum().backward()
        assert torch.allclose(log_p.grad, -k * torch.ones(3, dtype=torch.float64), rtol=1e-10)
        log_p.grad = None


def test_complementary_tail_keeps_tiny_losses_accurate():
    """Near p = 1 the loss −log P[Bin ≥ k] is tiny; the complementary tail keeps its relative accuracy."""
    for p in ("0.9", "0.99"):
        lp = math.log(float(p))
        expected = -mpmath.log(ref_tail(mpmath.exp(mpmath.mpf(lp)), 16, 4))
        got = float(obj.majority_sft_loss(torch.tensor(lp, dtype=torch.float64), 16, 4))
        assert got == pytest.approx(float(expected), rel=1e-9)


# ----------------------------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(p=st.floats(1e-6, 1 - 1e-6), n=st.integers(1, 200))
def test_passn_success_grows_and_sft_weight_shrinks_with_n(p, n):
    assert float(obj.passn_probability(p, n + 1)) >= float(obj.passn_probability(p, n))
    assert float(obj.passn_sft_weight(p, n + 1)) <= float(obj.passn_sft_weight(p, n)) * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.0, 1.0), n=st.integers(1, 300))
def test_majority_with_k1_is_passn(p, n):
    assert float(obj.majority_probability(p, n, 1)) == pytest.approx(float(obj.passn_probability(p, n)), rel=1e-10, abs=1e-300)
    assert float(obj.majority_sft_weight(p, n, 1)) == pytest.approx(float(obj.passn_sft_weight(p, n)), rel=1e-9, abs=1e-300)
    assert float(obj.majority_rl_weight(p, n, 1)) == pytest.approx(float(obj.passn_rl_weight(p, n)), rel=1e-10, abs=1e-300)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(1e-9, 1 - 1e-9), n=st.integers(2, 100), data=st.data())
def test_weights_are_nonnegative_and_sft_weight_bounded_by_k(p, n, data):
    k = data.draw(st.integers(1, n))
    w = float(obj.majority_sft_weight(p, n, k))
    assert 0 <= w <= k * (1 + 1e-12)
    assert float(obj.majority_rl_weight(p, n, k)) >= 0


# --------------------------------------------------------------------------------------- normalisation and RL loss


def test_normalize_prompt_weights_mean_one_ratios_kept_exact_at_extreme_scales():
    w = torch.tensor([0.5, 2.0, 0.0, 1.5], dtype=torch.float64)
    out = obj.normalize_prompt_weights(w)
    assert float(out.mean()) == pytest.approx(1.0, rel=1e-15)
    assert out.tolist() == pytest.approx([0.5, 2.0, 0.0, 1.5], rel=1e-15)
    for scale in (1e-300, 1e300):
        assert torch.allclose(obj.normalize_prompt_weights(w * scale), out, rtol=1e-15, atol=0)
    grad_w = torch.tensor([1.0, 3.0], requires_grad=True)
    assert not obj.normalize_prompt_weights(grad_w).requires_grad


def test_normalize_sample_weights_any_shape():
    w = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    out = obj.normalize_sample_weights(w)
    assert out.shape == (2, 2) and float(out.mean()) == pytest.approx(1.0)
    assert out.flatten().tolist() == pytest.approx([0.5, 1.5, 0.0, 2.0])


def test_weighted_policy_loss_detaches_advantage_and_weight():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -0.5, 2.0], requires_grad=True)
    w = torch.tensor([2.0, 1.0, 0.5], requires_grad=True)
    loss = obj.weighted_policy_loss(logp, adv, w)
    assert float(loss.detach()) == pytest.approx(float(-(logp * adv * w).mean().detach()))
    loss.backward()
    assert torch.allclose(logp.grad, -(adv * w).detach() / 3)
    assert adv.grad is None and w.grad is None


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: obj.passn_probability(0.5, 0), r"n must be a positive int, got 0"),
        (lambda: obj.passn_probability(0.5, 2.0), r"n must be a positive int, got 2.0"),
        (lambda: obj.passn_probability(0.5, True), r"n must be a positive int, got True"),
        (lambda: obj.passn_rl_weight(1.5, 4), r"p must lie in \[0, 1\], got 1.5"),
        (lambda: obj.passn_sft_weight(float("nan"), 4), r"p must lie in \[0, 1\], got nan"),
        (lambda: obj.passn_sft_loss(torch.tensor([0.3]), 4), r"log_p must be a log-probability .* got 0.3"),
        (lambda: obj.passn_log_probability(float("nan"), 4), r"log_p must be .* got nan"),
        (lambda: obj.passn_sft_loss(torch.tensor([-1 + 0j]), 4), r"log_p must be a real tensor, got dtype torch.complex64"),
        (lambda: obj.majority_probability(0.5, 4, 5), r"k must satisfy 1 <= k <= n=4, got k=5"),
        (lambda: obj.majority_rl_weight(0.5, 4, 0), r"k must be a positive int, got 0"),
        (lambda: obj.majority_sft_loss(torch.tensor([-1.0]), 4, 2, reduction="avg"), r"reduction must be .* got 'avg'"),
        (lambda: obj.best_of_n_rl_weight(-0.1, 4), r"q must lie in \[0, 1\], got -0.1"),
        (lambda: obj.normalize_prompt_weights(torch.tensor([1.0])), r"at least two distinct prompts .* got 1"),
        (lambda: obj.normalize_prompt_weights(torch.ones(2, 2)), r"must be 1-D .* got shape \(2, 2\)"),
        (lambda: obj.normalize_prompt_weights(torch.zeros(3)), r"all-zero"),
        (lambda: obj.normalize_sample_weights(torch.zeros(2, 2)), r"all-zero"),
        (lambda: obj.normalize_sample_weights(torch.tensor([1.0, float("inf")])), r"finite and >= 0, got inf"),
        (lambda: obj.weighted_policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3, 1)), r"same shape .* weights=\(3, 1\)"),
        (
            lambda: obj.weighted_policy_loss(torch.zeros(2), torch.tensor([0.0, float("nan")]), torch.ones(2)),
            r"advantages must be finite, got nan at index \(1,\)",
        ),
        (
            lambda: obj.weighted_policy_loss(torch.tensor([float("nan")]), torch.ones(1), torch.ones(1)),
            r"logp must be a log-probability .* got nan",
        ),
        (
            lambda: obj.weighted_policy_loss(torch.tensor([0.5]), torch.ones(1), torch.ones(1)),
            r"logp must be a log-probability .* got 0.5",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_naming_argument_and_value(call, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n,k", [(1, 1), (8, 1), (8, 3), (8, 8), (1024, 2), (1024, 513)])
def test_log_success_gradient_is_the_weight_and_finite_at_the_ends(n, k):
    """d log f / d log p = w_SFT for the public log-probabilities too, finite from log p = −1e4 up to log p = 0."""
    log_p = torch.tensor([-math.inf, -1e4, -50.0, -3.0, -0.5, -1e-3, 0.0], dtype=torch.float64, requires_grad=True)
    obj.majority_log_probability(log_p, n, k).sum().backward()
    assert torch.isfinite(log_p.grad).all()
    assert float(log_p.grad[0]) == pytest.approx(k, rel=1e-13)  # the p → 0 limit of the weight
    assert torch.equal(log_p.grad, obj.majority_sft_weight_from_logp(log_p, n, k))
    if k == 1:
        log_p.grad = None
        obj.passn_log_probability(log_p, n).sum().backward()
        assert torch.equal(log_p.grad, obj.passn_sft_weight_from_logp(log_p, n))
