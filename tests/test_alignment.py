"""cat.alignment against an independent mpmath quadrature of the weight-curve cosine."""

import mpmath
import pytest
import torch

from cat import alignment_coefficient
from cat.objectives import passn_rl_weight, passn_sft_weight


def mp_sft(p, n):
    return n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)


def mp_cosine(a, b):
    f = lambda x: mp_sft(x, a) * mp_sft(x, b)  # noqa: E731
    num = mpmath.quad(f, [0, 0.01, 0.1, 1])
    den = mpmath.sqrt(
        mpmath.quad(lambda x: mp_sft(x, a) ** 2, [0, 0.01, 0.1, 1]) * mpmath.quad(lambda x: mp_sft(x, b) ** 2, [0, 0.01, 0.1, 1])
    )
    return float(num / den)


@pytest.mark.parametrize("a,b,quoted", [(1, 4, 0.741), (4, 16, 0.776), (1, 64, 0.216), (16, 64, 0.778)])
def test_pass_at_n_sft_alignment_matches_quadrature(a, b, quoted):
    got = alignment_coefficient(lambda p: passn_sft_weight(p, a), lambda p: passn_sft_weight(p, b))
    assert got.coefficient == pytest.approx(mp_cosine(a, b), abs=5e-5)
    assert round(got.coefficient, 3) == quoted


def test_waste_and_starvation():
    ce = lambda p: torch.ones_like(p)  # noqa: E731
    pass64 = lambda p: passn_sft_weight(p, 64)  # noqa: E731
    result = alignment_coefficient(ce, pass64)
    # pass@64's weight is below 1e-3 of its max once p > ~0.1: CE spends most of its weight there
    p = (torch.arange(20_000, dtype=torch.float64) + 0.5) / 20_000
    expected_waste = float((pass64(p) <= 1e-3 * pass64(p).max()).double().mean())
    assert result.waste == pytest.approx(expected_waste) and result.waste > 0.8
    assert result.starvation == 0.0  # CE never starves pass@64
    assert alignment_coefficient(pass64, ce).starvation == pytest.approx(expected_waste)


def test_empirical_distribution_of_p_hat():
    p_hat = torch.tensor([0.1, 0.1, 0.5], dtype=torch.float64)
    got = alignment_coefficient(lambda p: passn_rl_weight(p, 4), lambda p: passn_rl_weight(p, 8), p=p_hat)
    a, b = passn_rl_weight(p_hat, 4), passn_rl_weight(p_hat, 8)
    assert got.coefficient == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p": torch.tensor([1.5])}, r"p must lie in \[0, 1\], got 1.5"),
        ({"p": torch.tensor([0.2, float("nan")])}, r"p must lie in \[0, 1\], got nan"),
        ({"p": torch.empty(0)}, r"p must be a non-empty 1-D sample of probabilities, got shape \(0,\)"),
        ({"p": torch.full((2, 3), 0.5)}, r"p must be a non-empty 1-D sample .* got shape \(2, 3\)"),
        ({"p": torch.tensor(0.5)}, r"p must be a non-empty 1-D sample .* got shape \(\)"),
        ({"grid": 0}, r"grid must be a positive int, got 0"),
        ({"tolerance": 1.0}, r"tolerance must be a number in \[0, 1\), got 1.0"),
        ({"tolerance": float("nan")}, r"tolerance must be a number in \[0, 1\), got nan"),
        ({"train": lambda p: p - 0.5}, r"train_weight\(p\) must be finite and >= 0, got -0.4.* at p=0.1"),
        ({"test": lambda p: torch.where(p > 0.5, torch.nan, p)}, r"test_weight\(p\) must be finite and >= 0, got nan"),
        ({"train": lambda p: torch.tensor(1.0)}, r"train_weight\(p\) must return one weight per point, shape \(3,\)"),
        ({"test": lambda p: torch.zeros_like(p)}, r"test_weight\(p\) is zero at every point"),
    ],
)
def test_alignment_validation(kwargs, match):
    p = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    kwargs = {"train": lambda p: p, "test": lambda p: 1 - p, "p": p, **kwargs}
    if "grid" in kwargs:
        kwargs.pop("p")
    with pytest.raises((ValueError, TypeError), match=match) as info:
        alignment_coefficient(kwargs.pop("train"), kwargs.pop("test"), **kwargs)
    assert "\n" not in str(info.value)
