"""Estimators: evaluation metrics from a pool of samples, and the per-prompt quantities CAT training plugs in.

Evaluation (all from the same n samples of one problem):
* ``pass_at_k``           unbiased pass@k 1 − C(n−c,k)/C(n,k) (Chen et al. 2021, Codex), vectorised over problems
* ``majority_at_k``       expected (weighted) plurality-vote accuracy over size-k subsets (CAT repo
                          ``docs/evaluation.md``), exact by counting subsets per answer cluster; ties shared equally;
                          ``majority_curve`` gives every k at once
* ``best_of_k_expected``  exact expected outcome of the top-scoring sample of a size-k subset (CAT App. L/M);
                          ``best_of_k_curve`` gives every k at once

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
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from fractions import Fraction
from typing import NamedTuple

import torch

from cat import _votes
from cat._logspace import log_binom
from cat._validation import as_float64, check_finite, check_k, check_not_nan, check_positive_int, check_same_shape

__all__ = [
    "pass_at_k",
    "MajorityEstimate",
    "majority_at_k",
    "majority_curve",
    "best_of_k_expected",
    "best_of_k_curve",
    "empirical",
    "laplace",
    "sequence",
    "length_normalized",
    "PER_PROMPT_ESTIMATORS",
    "PER_SAMPLE_ESTIMATORS",
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
    Evaluated for all problems at once as −expm1(Σ_i log1p(−k/i)), which keeps full relative precision when
    pass@k is small (the product form 1 − Π loses digits to cancellation there).
    """
    k = check_positive_int(k, "k")
    n_t, c_t = torch.broadcast_tensors(_as_count_tensor(n, "n"), _as_count_tensor(c, "c"))
    if bool((n_t < k).any()):
        raise ValueError(f"pass@k needs n >= k samples per problem, got n={int(n_t.min())} < k={k}")
    if bool(((c_t < 0) | (c_t > n_t)).any()):
        bad = c_t[(c_t < 0) | (c_t > n_t)].flatten()[0]
        raise ValueError(f"c must satisfy 0 <= c <= n, got c={int(bad)}")
    flat_n, flat_c = n_t.flatten(), c_t.flatten()
    certain = flat_n - flat_c < k  # every size-k subset holds a correct sample
    width = int(flat_c.max()) if flat_c.numel() else 0
    offset = torch.arange(width)
    i = (flat_n[:, None] - offset).to(torch.float64)  # n, n−1, ..., n−c+1 in the first c columns of each row
    used = (offset < flat_c[:, None]) & ~certain[:, None]
    terms = torch.log1p(-k / torch.where(used, i, torch.full_like(i, math.inf)))
    values = torch.where(certain, torch.ones_like(flat_n, dtype=torch.float64), -torch.expm1(terms.sum(-1)))
    return values.reshape(n_t.shape)


def _pass_at_k_allow_zero(n: int, c: int, k: int) -> float:
    """pass@k with the k = 0 convention (an empty draw never succeeds), used inside PKPO's ρ(n−1, c, k−1)."""
    if k == 0:
        return 0.0
    return float(pass_at_k(n, c, k))


# ---------------------------------------------------------------------------------------------------------- maj@k


class MajorityEstimate(NamedTuple):
    """maj@k of one problem: ``value`` and its Monte Carlo standard error (0.0 when computed exactly)."""

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


def _exact_weights(weights: Sequence[float], n: int) -> list[int]:
    """The vote weights as integers in the same ratios (floats are dyadic rationals: scale by a power of 2)."""
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"weights must hold one weight per sample, got {len(weights)} for {n} samples")
    fractions = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weights must be finite and >= 0, got {w!r} at index {i}")
        fractions.append(Fraction(w))
    scale = math.lcm(*(f.denominator for f in fractions)) if fractions else 1
    return [int(f * scale) for f in fractions]


MAJORITY_METHODS = ("auto", "count", "enumerate", "monte_carlo")


def majority_curve(
    answer_keys: Sequence[Hashable | None],
    correct: Sequence[bool],
    ks: Sequence[int],
    samples: int | None = None,
    seed: int = 0,
    *,
    weights: Sequence[float] | None = None,
    exact_limit: int = EXACT_SUBSET_LIMIT,
    method: str = "auto",
) -> list[MajorityEstimate]:
    """maj@k for every k in ``ks``: the expected accuracy of a (weighted) plurality vote over the size-k subsets.

    Every size-k subset of the problem's n samples is equally likely. Each answer cluster (equal ``answer_keys``)
    in the subset collects one vote per sample, or with ``weights`` the sum of its samples' weights (a weighted
    vote, e.g. ``evaluation.metrics.vote_weights``); the cluster with the most wins. **Ties are shared equally**: a
    subset in which r clusters tie for the most credits each of them 1/r. That equals breaking ties by a uniformly
    random order of the samples, so the value does not depend on the order in which the samples are listed (it
    replaces the rule "the tied answer that occurs first wins"). Unparsed answers (None) stay in the pool and never
    win: a subset of only unparsed answers is wrong. A winning cluster is credited the share of its samples that are
    ``correct`` (1 or 0 whenever equal keys agree on correctness).

    ``method="auto"`` picks the first that applies:

    * ``"count"`` (exact, any n and k): count, per cluster and vote total, the subsets it wins
      (``cat._votes.count_vote_wins``; polynomial in n for a plurality vote and for weights constant within each
      cluster). A plurality vote is always counted.
    * ``"enumerate"`` (exact): every subset, when C(n, k) ≤ ``exact_limit``. For weights whose subset sums take too
      many distinct values to count: counting subsets by a real-valued weight sum is a knapsack-counting problem
      (#P-hard in general).
    * ``"monte_carlo"``: the mean over ``samples`` (default 2000, ≥ 2) seeded uniform size-k subsets, with the
      standard error s/√samples of the per-subset accuracies (``exact=False``).

    Weights are summed exactly (as integers in their float ratios) except by the enumeration or Monte Carlo of
    weights too far apart in magnitude for int64, which sum in float64. ``samples`` and ``seed`` only matter for the
    Monte Carlo fallback.
    """
    n = len(answer_keys)
    flags = _check_flags(correct)
    if len(flags) != n:
        raise ValueError(f"answer_keys and correct must have the same length, got {n} and {len(flags)}")
    ks = [check_k(k, n) if n else check_positive_int(k, "k") for k in ks]
    if ks and n < max(ks):
        raise ValueError(f"maj@k needs n >= k samples, got n={n} < k={max(ks)}")
    samples = DEFAULT_MC_SAMPLES if samples is None else check_positive_int(samples, "samples")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for a Monte Carlo standard error, got samples={samples}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if method not in MAJORITY_METHODS:
        raise ValueError(f"method must be one of {MAJORITY_METHODS}, got {method!r}")
    if weights is None and method not in ("auto", "count"):
        raise ValueError(f"method {method!r} needs weights: a plurality vote is always counted exactly")
    int_weights = [1] * n if weights is None else _exact_weights(weights, n)
    clusters = list(dict.fromkeys(key for key in answer_keys if key is not None))
    index = {key: j for j, key in enumerate(clusters)}
    members: list[list[int]] = [[] for _ in clusters]
    for i, key in enumerate(answer_keys):
        if key is not None:
            members[index[key]].append(i)
    values = [Fraction(sum(flags[i] for i in m), len(m)) for m in members]
    if not ks:
        return []
    if method in ("auto", "count"):
        limit = _votes.MAX_LEVELS if method == "auto" and weights is not None else None  # plurality: always count
        sums = _votes.count_vote_wins([[int_weights[i] for i in m] for m in members], values,
                                      n - sum(map(len, members)), max(ks), max_levels=limit)
        if sums is not None:
            return [MajorityEstimate(float(sums[k] / math.comb(n, k)), 0.0, True) for k in ks]
    cluster = torch.tensor([index[key] if key is not None else len(clusters) for key in answer_keys])
    if max(int_weights, default=0) * n < 2**63:
        vote = torch.tensor(int_weights, dtype=torch.int64)
    else:
        vote = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    credit_scale = math.lcm(*(v.denominator for v in values)) if values else 1
    credit = torch.tensor([int(v * credit_scale) for v in values], dtype=torch.int64)
    out = []
    for k in ks:
        if not clusters:
            out.append(MajorityEstimate(0.0, 0.0, True))
        elif method == "enumerate" or (method == "auto" and math.comb(n, k) <= exact_limit):
            subsets = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)
            winners, tied = _votes.subset_votes(cluster, vote, subsets, len(clusters))
            won = (winners.long() * credit).sum(-1)
            total = sum(Fraction(int(won[tied == r].sum()), r) for r in tied.unique().tolist() if r > 0)
            out.append(MajorityEstimate(float(total / (credit_scale * math.comb(n, k))), 0.0, True))
        else:
            g = torch.Generator().manual_seed(seed)
            subsets = torch.rand(samples, n, generator=g).argsort(-1)[:, :k]
            winners, tied = _votes.subset_votes(cluster, vote, subsets, len(clusters))
            won = (winners.double() * credit.double()).sum(-1)
            accuracy = won / (tied.clamp_min(1) * credit_scale)
            out.append(MajorityEstimate(float(accuracy.mean()), float(accuracy.std() / math.sqrt(samples)), False))
    return out


def majority_at_k(
    answer_keys: Sequence[Hashable | None],
    correct: Sequence[bool],
    k: int,
    samples: int | None = None,
    seed: int = 0,
    *,
    weights: Sequence[float] | None = None,
    exact_limit: int = EXACT_SUBSET_LIMIT,
    method: str = "auto",
) -> MajorityEstimate:
    """maj@k of one problem: one k of ``majority_curve``, which documents the vote, its tie rule and the methods."""
    return majority_curve(answer_keys, correct, [k], samples, seed, weights=weights, exact_limit=exact_limit,
                          method=method)[0]


# ----------------------------------------------------------------------------------------------------- best-of-k


def best_of_k_curve(rewards, ks: Sequence[int], outcomes=None) -> list[float]:
    """``best_of_k_expected`` for every k in ``ks``."""
    r = check_finite(as_float64(rewards, "rewards"), "rewards")
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one problem's pool), got shape {tuple(r.shape)}")
    n = r.numel()
    ks = [check_positive_int(k, "k") for k in ks]
    if ks and n < max(ks):
        raise ValueError(f"best-of-k needs n >= k rewards, got n={n} < k={max(ks)}")
    if outcomes is None:
        values = r.tolist()
    else:
        o = check_finite(as_float64(outcomes, "outcomes"), "outcomes")
        if o.shape != r.shape:
            raise ValueError(f"outcomes must hold one value per reward, got shape {tuple(o.shape)} for {n} rewards")
        values = o.tolist()
    groups: dict[float, list[float]] = {}  # reward -> outcomes of the samples with that reward
    for reward, value in zip(r.tolist(), values):
        groups.setdefault(reward, []).append(value)
    lower, parts = 0, []  # (samples with a lower reward, samples tied at this reward, their mean outcome)
    for reward in sorted(groups):
        group = groups[reward]
        parts.append((lower, len(group), sum(map(Fraction, group)) / len(group)))
        lower += len(group)
    return [float(sum((math.comb(below + size, k) - math.comb(below, k)) * mean for below, size, mean in parts)
                  / math.comb(n, k)) for k in ks]


def best_of_k_expected(rewards, k: int, outcomes=None) -> float:
    """Exact expected outcome of the highest-reward sample of a uniform size-k subset of one problem's pool.

    With the distinct rewards ascending, the s_g samples of group g (above l_g lower ones) hold the subset's top
    reward with probability [C(l_g + s_g, k) − C(l_g, k)]/C(n, k), so

        E = Σ_g [C(l_g + s_g, k) − C(l_g, k)]/C(n, k) · (mean outcome of group g).

    ``outcomes=None`` scores the reward itself: E[max of k rewards] = Σ_{i≥k} C(i−1,k−1)/C(n,k)·r_(i)
    (CAT App. L/M).
    Given ``outcomes`` (e.g. correctness), it is best-of-k selection under a scorer whose scores are ``rewards``.
    Ties for the top reward are shared equally (a uniformly random one of them is selected), so the value does not
    depend on the order of the samples. Exact rational arithmetic, rounded once to float.
    """
    return best_of_k_curve(rewards, [k], outcomes)[0]


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


PER_PROMPT_ESTIMATORS = ("laplace", "empirical")  # one p̂ per prompt, from its group's correct count
PER_SAMPLE_ESTIMATORS = ("sequence", "length_normalized")  # one p̂ per completion, from its log-probability
P_ESTIMATORS = PER_PROMPT_ESTIMATORS + PER_SAMPLE_ESTIMATORS


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
