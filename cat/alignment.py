"""Alignment between a training objective and a test metric, measured on their weight curves over p.

The CAT paper's alignment coefficient A (App., "Alignment Coefficient", waste/starvation regions) is the cosine
of the two weight functions, A = ∫ w_train w_test dμ(p) / √(∫ w_train² dμ ∫ w_test² dμ), with μ uniform on (0, 1)
or the empirical distribution of a batch's p̂. A low A means gradient is misallocated:

* waste      = share of the training weight mass where the test weight is ≈ 0 (the test metric is satiated);
* starvation = share of the test weight mass where the training weight is ≈ 0 (no training signal).

"≈ 0" means below ``tolerance`` × that curve's maximum over the evaluation points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cat._validation import as_float64, check_positive_int

WeightFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Alignment:
    coefficient: float
    waste: float
    starvation: float


def alignment_coefficient(
    train_weight: WeightFn, test_weight: WeightFn, p=None, grid: int = 20_000, tolerance: float = 1e-3
) -> Alignment:
    """Cosine of the two weight curves over p (midpoint rule on a uniform grid, or the given samples of p̂)."""
    if p is None:
        grid = check_positive_int(grid, "grid")
        points = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    else:
        points = as_float64(p, "p").flatten()
        if points.numel() == 0 or bool(((points < 0) | (points > 1) | torch.isnan(points)).any()):
            raise ValueError("p must be a non-empty sample of probabilities in [0, 1]")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance!r}")
    a = as_float64(train_weight(points), "train_weight(p)")
    b = as_float64(test_weight(points), "test_weight(p)")
    norm = torch.sqrt((a * a).sum() * (b * b).sum())
    if float(norm) == 0.0:
        raise ValueError("a weight curve is identically zero on these points; the cosine is undefined")
    a_small = a <= tolerance * a.max()
    b_small = b <= tolerance * b.max()
    return Alignment(
        coefficient=float((a * b).sum() / norm),
        waste=float(a[b_small].sum() / a.sum()),
        starvation=float(b[a_small].sum() / b.sum()),
    )
