"""Argument checks shared by the ``cat`` modules: each failure is a one-line error naming the argument and value."""

from __future__ import annotations

import numbers

import torch

_HALF = (torch.float16, torch.bfloat16)


def check_positive_int(value, name: str) -> int:
    """``value`` as an int ≥ 1 (bools and floats are refused, even 2.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_k(k, n: int, name: str = "k") -> int:
    """``k`` as an int with 1 ≤ k ≤ n."""
    k = check_positive_int(k, name)
    if k > n:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= n={n}, got {name}={k}")
    return k


def as_float64(x, name: str) -> torch.Tensor:
    """``x`` (tensor, number or nested list) as a float64 tensor; half precision is promoted, not truncated."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
        return x.to(torch.float64)
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or a number, got {x!r}") from err


def _first_bad(x: torch.Tensor, bad: torch.Tensor) -> float:
    return float(x.detach()[bad].flatten()[0])


def check_not_nan(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` unchanged after checking that no entry is NaN (±inf allowed)."""
    bad = torch.isnan(x.detach())
    if bool(bad.any()):
        raise ValueError(f"{name} must not contain NaN, got {_first_bad(x, bad)!r}")
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` unchanged after checking that every entry is finite (no NaN, no ±inf)."""
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite, got {_first_bad(x, bad)!r}")
    return x


def check_probability(p, name: str = "p") -> torch.Tensor:
    """``p`` as float64 with every entry in [0, 1] and none NaN."""
    t = as_float64(p, name)
    bad = torch.isnan(t) | (t < 0) | (t > 1)
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [0, 1], got {_first_bad(t, bad)!r}")
    return t


def check_log_probability(log_p, name: str = "log_p") -> torch.Tensor:
    """``log_p`` kept in its own dtype (so autograd flows) after checking every entry is ≤ 0 and not NaN."""
    t = log_p if isinstance(log_p, torch.Tensor) else as_float64(log_p, name)
    if t.is_complex():
        raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    bad = torch.isnan(t.detach()) | (t.detach() > 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be a log-probability (<= 0, not NaN), got {_first_bad(t, bad)!r}")
    return t


def output_dtype(x) -> torch.dtype:
    """The dtype a result is returned in: a floating tensor's own dtype, half precision promoted to float32 (a bf16
    weight or loss keeps 3 significant digits); float64 for numbers, lists and integer or boolean tensors."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return torch.float64
    return torch.float32 if x.dtype in _HALF else x.dtype


def check_reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Refuse silent broadcasting: every tensor must have exactly the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        names = ", ".join(shapes)
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"{names} must have the same shape (no broadcasting), got {listed}")
