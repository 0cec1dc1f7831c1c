"""Estimators: evaluation metrics from a pool of samples, and the per-prompt quantities CAT training plugs in.

Evaluation (all from the same n samples of one problem):
* ``pass_at_k``           unbiased pass@k 1 − C(n−c,k)/C(n,k) (Chen et al. 2021, Codex), stable product form
* ``majority_at_k``       expected plurality-vote accuracy over size-k subsets (CAT repo ``docs/evaluation.md``)
* ``best_of_k_expected``  exact expected maximum reward over size-k subsets (CAT App. L/M)

Training (rows = prompts, columns = their m rollouts):
* p̂ estimators ``empirical``, ``laplace``, ``sequence``, ``length_normalized`` (CAT §6, App. J floor)
* ``dynamic_majority_k``  dynamic consensus threshold (CAT App. K.2)
* ``within_prompt_quantiles`` and ``RewardHistory``  best-of-N reward quantiles (CAT App. B.2.3)
* ``pkpo_binary_credit``, ``pkpo_sloo_minus_one``  (Walder & Karkhanis 2025, arXiv:2505.15201, eqs. 8, 33)
* ``passk_training_advantage``  (Chen et al. 2025, arXiv:2508.10751, ``RUCAIBox/Passk_Training``)
"""

from __future__ import annotations

import itertools
import math
import numbers
import random
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import torch

from cat._logspace import log_binom
from cat._validation import as_float64, check_finite, check_k, check_not_nan, check_positive_int, check_same_shape

__all__ = [
    "pass_at_k",
    "MajorityEstimate",
    "majority_at_k",
    "best_of_k_expected",
    "empirical",
    "laplace",
    "sequence",
    "length_normalized",
    "P_ESTIMATORS",
    "dynamic_majority_k",
    "within_prompt_quantiles",
    "RewardHistory",
    "pkpo_binary_credit",
    "pkpo_sloo_minus_one",
    "passk_training_advantage",
]

EXACT_SUBSET_LIMIT = 200_000
DEFAULT_MC_SAMPLES = 2000


# -------------------------------------------------------------------------------------------------------- pass@k


def _as_count_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise TypeError(f"{name} must hold integers, got {t.tolist()!r}")
    return t.to(torch.int64)


def pass_at_k(n, c, k: int) -> torch.Tensor:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i), per problem (float64).

    ``n`` (samples) and ``c`` (correct) are ints or arrays of them, one entry per problem; ``k`` ≤ every n.
    """
    k = check_positive_int(k, "k")
    n_t, c_t = torch.broadcast_tensors(_as_count_tensor(n, "n"), _as_count_tensor(c, "c"))
    if bool((n_t < k).any()):
        raise ValueError(f"pass@k needs n >= k samples per problem, got n={int(n_t.min())} < k={k}")
    if bool(((c_t < 0) | (c_t > n_t)).any()):
        bad = c_t[(c_t < 0) | (c_t > n_t)].flatten()[0]
        raise ValueError(f"c must satisfy 0 <= c <= n, got c={int(bad)}")
    flat_n, flat_c = n_t.flatten().tolist(), c_t.flatten().tolist()
    values = []
    for ni, ci in zip(flat_n, flat_c):
        if ni - ci < k:
            values.append(1.0)
        else:
            i = torch.arange(ni - ci + 1, ni + 1, dtype=torch.float64)
            values.append(1.0 - float(torch.prod(1.0 - k / i)))
    return torch.tensor(values, dtype=torch.float64).reshape(n_t.shape)


def _pass_at_k_allow_zero(n: int, c: int, k: int) -> float:
    """pass@k with the k = 0 convention (an empty draw never succeeds), used inside PKPO's ρ(n−1, c, k−1)."""
    if k == 0:
        return 0.0
    return float(pass_at_k(n, c, k))


# ---------------------------------------------------------------------------------------------------------- maj@k


class MajorityEstimate(NamedTuple):
    """maj@k of one problem: ``value`` and its Monte Carlo standard error (0.0 when enumerated exactly)."""

    value: float
    stderr: float
    exact: bool


def _check_flags(correct: Sequence, name: str = "correct") -> list[bool]:
    """One bool per sample: True/False or 0/1 (numpy and 0-d tensor scalars compare equal to these)."""
    flags = list(correct)
    for i, flag in enumerate(flags):
        if flag not in (0, 1):
            raise ValueError(f"{name} must hold booleans or 0/1, got {flag!r} at index {i}")
    return [bool(flag) for flag in flags]


def _plurality_is_correct(subset: Sequence[int], keys: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    votes = Counter(keys[i] for i in subset if keys[i] is not None)
    if not votes:
        return False
    top = max(votes.values())
    # ties go to the answer that occurs first in the subset's sample order
    winner = next(i for i in subset if keys[i] is not None and votes[keys[i]] == top)
    return bool(correct[winner])


def majority_at_k(
    answer_keys: Sequence[Hashable | None], correct: Sequence[bool], k: int, samples: int | None = None, seed: int = 0
) -> MajorityEstimate:
    """Expected plurality-vote accuracy over size-k subsets of one problem's n samples.

    Exact by enumeration when C(n,k) ≤ 200 000: ``exact=True``, ``stderr=0.0``, and ``samples``/``seed`` are not
    used. Otherwise the mean v̄ over ``samples`` (default 2000) seeded uniform size-k subsets, with standard error
    √(v̄(1−v̄)/(samples−1)) (sample variance of the 0/1 outcomes over samples), so ``samples`` must be ≥ 2 for the
    error to be defined. Ties go to the first occurrence; unparsed answers (None) stay in the pool but never win,
    so a subset of only None votes is wrong.
    """
    n = len(answer_keys)
    flags = _check_flags(correct)
    if len(flags) != n:
        raise ValueError(f"answer_keys and correct must have the same length, got {n} and {len(flags)}")
    k = check_k(k, n) if n else check_positive_int(k, "k")
    if n < k:
        raise ValueError(f"maj@k needs n >= k samples, got n={n} < k={k}")
    samples = DEFAULT_MC_SAMPLES if samples is None else check_positive_int(samples, "samples")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for a Monte Carlo standard error, got samples={samples}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    total = math.comb(n, k)
    if total <= EXACT_SUBSET_LIMIT:
        hits = sum(_plurality_is_correct(s, answer_keys, flags) for s in itertools.combinations(range(n), k))
        return MajorityEstimate(hits / total, 0.0, True)
    rng = random.Random(seed)
    outcomes = [_plurality_is_correct(sorted(rng.sample(range(n), k)), answer_keys, flags) for _ in range(samples)]
    mean = sum(outcomes) / samples
    return MajorityEstimate(mean, math.sqrt(mean * (1 - mean) / (samples - 1)), False)


# ----------------------------------------------------------------------------------------------------- best-of-k


def best_of_k_expected(rewards, k: int) -> float:
    """Exact E[max of a uniform size-k subset] = Σ_{i=k}^{n} C(i−1,k−1)/C(n,k)·r_(i), r sorted ascending.

    ``rewards`` is one problem's 1-D pool of finite rewards.
    """
    r = check_finite(as_float64(rewards, "rewards"), "rewards")
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one problem's pool), got shape {tuple(r.shape)}")
    n = r.numel()
    k = check_positive_int(k, "k")
    if n < k:
        raise ValueError(f"best-of-k needs n >= k rewards, got n={n} < k={k}")
    ranks = torch.arange(k, n + 1, dtype=torch.float64)
    log_w = log_binom(ranks - 1, k - 1) - log_binom(n, k)
    return float((torch.exp(log_w) * torch.sort(r).values[k - 1 :]).sum())


# ------------------------------------------------------------------------------------------------- p̂ estimators


def _correct_matrix(correct) -> torch.Tensor:
    c = torch.as_tensor(correct)
    if c.dim() != 2 or c.shape[1] < 1:
        raise ValueError(f"correct must be a (prompts, rollouts) matrix, got shape {tuple(c.shape)}")
    bad = ~((c == 0) | (c == 1))
    if bool(bad.any()):
        raise ValueError(f"correct must hold 0/1 or booleans, got {c[bad].flatten()[0].item()!r}")
    return c.to(torch.float64)


def _scored_matrix(scored, shape: torch.Size) -> torch.Tensor:
    """The rollouts that carry a reward, as a bool matrix of ``shape`` (all of them when None)."""
    if scored is None:
        return torch.ones(shape, dtype=torch.bool)
    s = torch.as_tensor(scored)
    if s.dtype != torch.bool:
        raise TypeError(f"scored must be a bool tensor, got dtype {s.dtype}")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"scored must have the shape of correct {tuple(shape)}, got {tuple(s.shape)}")
    return s


def _counts(correct, scored) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct count c, scored count m) per row, over the scored rollouts only; a row with none is refused."""
    c = _correct_matrix(correct)
    s = _scored_matrix(scored, c.shape)
    m = s.sum(dim=1)
    if bool((m == 0).any()):
        raise ValueError(f"every row needs a scored rollout, row {int((m == 0).nonzero()[0])} has none")
    return (c * s).sum(dim=1), m.to(torch.float64)


def empirical(correct, scored=None) -> torch.Tensor:
    """p̂ = c/m per prompt (rows = prompts), over the ``scored`` rollouts (all when None)."""
    c, m = _counts(correct, scored)
    return c / m


def laplace(correct, scored=None) -> torch.Tensor:
    """Laplace-smoothed p̂ = (c+1)/(m+2) per prompt, never 0 or 1 (CAT's majority-vote RL estimator).

    c and m count the ``scored`` rollouts only (all when None): a completion no reward function could score is
    neither a success nor a failure.
    """
    c, m = _counts(correct, scored)
    return (c + 1) / (m + 2)


def _clamped_probability(log_p: torch.Tensor) -> torch.Tensor:
    # CAT App. J floor: log p clamped to [−50, 0], p to [1e−10, 1 − 1e−10]
    return torch.exp(torch.clamp(log_p.to(torch.float64), -50.0, 0.0)).clamp(1e-10, 1 - 1e-10)


def sequence(logp_sum) -> torch.Tensor:
    """Per-sample p̂ = π_old(y|x) = exp(Σ_t log π_old(y_t)) with the CAT App. J clamps, float64 (NaN refused)."""
    return _clamped_probability(check_not_nan(as_float64(logp_sum, "logp_sum"), "logp_sum"))


def length_normalized(logp_sum, lengths) -> torch.Tensor:
    """Per-sample p̂ = exp(mean_t log π_old(y_t)), the geometric-mean token probability, same clamps.

    ``logp_sum`` and ``lengths`` (token counts, ≥ 1) must have the same shape; NaN is refused in either.
    """
    logp_sum = check_not_nan(as_float64(logp_sum, "logp_sum"), "logp_sum")
    lengths = as_float64(lengths, "lengths")
    check_same_shape(logp_sum=logp_sum, lengths=lengths)
    bad = ~(lengths >= 1)  # also catches NaN
    if bool(bad.any()):
        raise ValueError(f"lengths must be >= 1, got {float(lengths[bad].flatten()[0])!r}")
    return _clamped_probability(logp_sum / lengths)


P_ESTIMATORS = ("laplace", "empirical", "sequence", "length_normalized")


# ----------------------------------------------------------------------------------------------- majority: dynamic k


def dynamic_majority_k(answer_keys: Sequence[Hashable | None], correct: Sequence[bool], n: int) -> int:
    """Dynamic consensus threshold k = max(2, min(⌊n/2⌋+1, ⌊n·c_max/m⌋+1)) (CAT App. K.2).

    c_max is the size of the largest *wrong* answer cluster among the m rollouts; all unparsed answers (None) form
    one wrong cluster and stay in m. ⌊n·c_max/m⌋ is the strongest rival's expected vote count in n draws.
    """
    n = check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"the dynamic majority threshold needs n >= 2, got n={n}")
    m = len(answer_keys)
    correct = _check_flags(correct)
    if m == 0 or len(correct) != m:
        raise ValueError(f"need one correctness flag per rollout, got {m} keys and {len(correct)} flags")
    unparsed_correct = next((i for i, (key, ok) in enumerate(zip(answer_keys, correct)) if key is None and ok), None)
    if unparsed_correct is not None:
        raise ValueError(f"correct flags an unparsed answer (answer_keys[{unparsed_correct}] is None) as correct")
    wrong = Counter(key for key, ok in zip(answer_keys, correct) if not ok)
    c_max = max(wrong.values(), default=0)
    return max(2, min(n // 2 + 1, (n * c_max) // m + 1))


# ------------------------------------------------------------------------------------------- best-of-N quantiles


def within_prompt_quantiles(rewards, scored=None) -> torch.Tensor:
    """q_ij = (#{l : r_il < r_ij} + 1)/(m + 1) within each row (prompt); ties share q; never across prompts.

    With ``scored``, l and m run over the scored rollouts of the row only; rewards outside it may be NaN and their
    q is NaN (they have no rank).
    """
    r = as_float64(rewards, "rewards")
    if r.dim() != 2:
        raise ValueError(f"rewards must be a (prompts, rollouts) matrix, got shape {tuple(r.shape)}")
    s = _scored_matrix(scored, r.shape)
    check_not_nan(r[s], "rewards")
    smaller = ((r.unsqueeze(1) < r.unsqueeze(2)) & s.unsqueeze(1)).sum(dim=2)
    q = (smaller + 1).to(torch.float64) / (s.sum(dim=1, keepdim=True) + 1)
    return q.masked_fill(~s, math.nan)


class RewardHistory:
    """FIFO of the last ``capacity`` rewards for unconditional best-of-N quantiles (CAT App. B.2.3).

    ``quantiles(r)`` = (#{h ∈ H : h < r} + 1)/(|H| + 2), clamped to [0.001, 0.999]; it never mutates the history,
    so a batch is queried before it is ``append``-ed. NaN rewards are refused (a NaN has no rank). The capacity is
    configuration: ``load_state_dict`` refuses a state saved with another capacity rather than adopting it.
    """

    STATE_KEYS = frozenset({"capacity", "values"})

    def __init__(self, capacity: int = 4000):
        self.capacity = check_positive_int(capacity, "capacity")
        self._values: deque[float] = deque(maxlen=self.capacity)

    def __len__(self) -> int:
        return len(self._values)

    def quantiles(self, rewards) -> torch.Tensor:
        r = check_not_nan(as_float64(rewards, "rewards"), "rewards")
        history = torch.sort(torch.tensor(list(self._values), dtype=torch.float64)).values
        smaller = torch.searchsorted(history, r.flatten(), side="left").reshape(r.shape)
        return ((smaller + 1).to(torch.float64) / (len(history) + 2)).clamp(0.001, 0.999)

    def append(self, rewards) -> None:
        r = check_not_nan(as_float64(rewards, "rewards").flatten(), "rewards")
        self._values.extend(r.tolist())

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "values": list(self._values)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != self.STATE_KEYS:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {sorted(self.STATE_KEYS)}, got {got!r}")
        capacity = check_positive_int(state["capacity"], "state['capacity']")
        if capacity != self.capacity:
            raise ValueError(f"state['capacity'] must equal this history's capacity {self.capacity}, got {capacity}")
        raw = state["values"]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, numbers.Real) for v in raw):
            raise ValueError(f"state['values'] must be a list of real numbers, got {raw!r:.80}")
        values = check_not_nan(torch.tensor(raw, dtype=torch.float64), "state['values']")
        if len(raw) > capacity:
            raise ValueError(f"state['values'] holds {len(raw)} rewards, more than the capacity {capacity}")
        self._values = deque(values.tolist(), maxlen=capacity)


# --------------------------------------------------------------------------------------------- pass@k policy credit


def _group_size_and_k(m: int, k: int) -> int:
    k = check_positive_int(k, "k")
    if k > m:
        raise ValueError(f"k must be <= the group size {m}, got k={k}")
    return k


def pkpo_binary_credit(correct, k: int) -> torch.Tensor:
    """PKPO unbiased per-sample pass@k credit for 0/1 rewards (Walder & Karkhanis 2025, eq. 8, sum convention).

    r_i = k/n if sample i is correct, else (k/n)·ρ(n−1, c, k−1), ρ the unbiased pass@k; equivalently the mean over
    all size-k subsets containing i of the subset's max, times C(n−1,k−1)/C(n,k).
    """
    c_mat = _correct_matrix(correct)
    m = c_mat.shape[1]
    k = _group_size_and_k(m, k)
    out = torch.empty_like(c_mat)
    for g, row in enumerate(c_mat):
        c = int(row.sum())
        wrong_credit = (k / m) * _pass_at_k_allow_zero(m - 1, c, k - 1) if c < m else 0.0
        out[g] = torch.where(row > 0, torch.full_like(row, k / m), torch.full_like(row, wrong_credit))
    return out


def pkpo_sloo_minus_one(rewards, k: int) -> torch.Tensor:
    """PKPO s^(loo−1) for continuous rewards (eq. 33): s_i = (1/C(n,k)) Σ_{|I|=k, i∈I} [max_I g − max_{I∖i} g].

    With g sorted ascending and i its rank this collapses to [C(i−1,k−1)·g_(i) − Σ_{j<i} C(j−1,k−2)·g_(j)]/C(n,k).
    For k = 1 (no subset transform) it is the leave-one-out centred reward (g_i − mean_{j≠i} g_j)/n.
    """
    g = check_finite(as_float64(rewards, "rewards"), "rewards")
    if g.dim() != 2:
        raise ValueError(f"rewards must be a (prompts, rollouts) matrix, got shape {tuple(g.shape)}")
    m = g.shape[1]
    k = _group_size_and_k(m, k)
    if k == 1:
        if m < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 rollouts per prompt")
        loo_mean = (g.sum(dim=1, keepdim=True) - g) / (m - 1)
        return (g - loo_mean) / m
    order = torch.argsort(g, dim=1, stable=True)
    sorted_g = torch.gather(g, 1, order)
    rank = torch.arange(1, m + 1, dtype=torch.float64)
    own = torch.exp(log_binom(rank - 1, k - 1) - log_binom(m, k))
    lower_w = torch.where(rank >= k - 1, torch.exp(log_binom(rank - 1, k - 2) - log_binom(m, k)), torch.zeros(m))
    # Σ_{j<i} C(j−1,k−2)·g_(j): exclusive cumulative sum along the sorted rewards
    lower = torch.cumsum(lower_w * sorted_g, dim=1) - lower_w * sorted_g
    s_sorted = own * sorted_g - lower
    return torch.empty_like(g).scatter_(1, order, s_sorted)


def passk_training_advantage(correct, k: int) -> torch.Tensor:
    """Pass@k-Training analytical advantage (Chen et al. 2025, ``code/passk_adv.py``).

    R̄ = 1 − C(n_neg,k)/C(n,k), σ = √(R̄(1−R̄)), A_pos = (1−R̄)/σ,
    A_neg = (1 − R̄ − C(n_neg−1,k−1)/C(n−1,k−1))/σ; 0 for groups that are all wrong or all right (σ = 0).
    The reference code divides by σ + 1e−6; here σ = 0 exactly gives 0 and otherwise σ is used as is.
    """
    c_mat = _correct_matrix(correct)
    m = c_mat.shape[1]
    k = _group_size_and_k(m, k)
    out = torch.zeros_like(c_mat)
    for g, row in enumerate(c_mat):
        n_neg = m - int(row.sum())
        r_bar = 1.0 - math.comb(n_neg, k) / math.comb(m, k)
        sigma = math.sqrt(r_bar * (1.0 - r_bar))
        if sigma == 0.0:
            continue
        a_pos = (1.0 - r_bar) / sigma
        a_neg = (1.0 - r_bar - (math.comb(n_neg - 1, k - 1) / math.comb(m - 1, k - 1) if n_neg >= 1 else 0.0)) / sigma
        out[g] = torch.where(row > 0, torch.full_like(row, a_pos), torch.full_like(row, a_neg))
    return out
