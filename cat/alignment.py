"""Alignment between a training objective and a test metric, measured on their weight curves over p.

The CAT paper's alignment coefficient A (App., "Alignment Coefficient", waste/starvation regions) is the cosine
of the two weight functions, A = ∫ w_train w_test dμ(p) / √(∫ w_train² dμ ∫ w_test² dμ), with μ uniform on (0, 1)
or the empirical distribution of a batch's p̂. A low A means gradient is misallocated:

* waste      = share of the training weight mass where the test weight is ≈ 0 (the test metric is satiated);
* starvation = share of the test weight mass where the training weight is ≈ 0 (no training signal).

"≈ 0" means below ``tolerance`` × that curve's maximum over the evaluation points.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cat._validation import as_float64, check_positive_int, check_probability

WeightFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Alignment:
    coefficient: float
    waste: float
    starvation: float


def _weight_curve(weight: WeightFn, points: torch.Tensor, name: str) -> torch.Tensor:
    """``weight(points)`` as float64, one finite non-negative weight per point, not all zero."""
    w = as_float64(weight(points), f"{name}(p)")
    if w.shape != points.shape:
        expected = tuple(points.shape)
        raise ValueError(f"{name}(p) must return one weight per point, shape {expected}, got {tuple(w.shape)}")
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        raise ValueError(f"{name}(p) must be finite and >= 0, got {float(w[bad][0])!r} at p={float(points[bad][0])!r}")
    if not bool((w > 0).any()):
        raise ValueError(f"{name}(p) is zero at every point; the cosine is undefined")
    return w


def alignment_coefficient(
    train_weight: WeightFn, test_weight: WeightFn, p=None, grid: int = 20_000, tolerance: float = 1e-3
) -> Alignment:
    """Cosine of the two weight curves over p (midpoint rule on a uniform grid, or the given 1-D sample of p̂).

    Both curves must be finite and non-negative with one value per point; ``grid`` is used only when ``p`` is None.
    """
    if p is None:
        grid = check_positive_int(grid, "grid")
        points = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    else:
        points = check_probability(p, "p").detach()
        if points.dim() != 1 or points.numel() == 0:
            raise ValueError(f"p must be a non-empty 1-D sample of probabilities, got shape {tuple(points.shape)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    a = _weight_curve(train_weight, points, "train_weight")
    b = _weight_curve(test_weight, points, "test_weight")
    a_small = a <= tolerance * a.max()
    b_small = b <= tolerance * b.max()
    return Alignment(
        coefficient=float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum())),
        waste=float(a[b_small].sum() / a.sum()),
        starvation=float(b[a_small].sum() / b.sum()),
    )
