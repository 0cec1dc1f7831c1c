"""Exact vote accuracy over all size-k subsets of one pool, by counting subsets per answer cluster.

The pool has m answer clusters (cluster j: c_j samples with integer vote weights, credited v_j when it wins) and u
unparsed samples, n = Σ c_j + u. A size-k subset S gives cluster j the total W_j(S) of its samples' weights in S
(plurality vote: every weight 1, so W_j is the vote count). The clusters present in S (at least one sample) with
the largest total win, ties shared equally; a subset without a parsed sample is wrong. So

    Σ_{|S|=k} accuracy(S) = Σ_T Σ_{r≥1} (1/r) · Σ_{S ∈ 𝒮(T, r)} Σ_{j at T in S} v_j,

𝒮(T, r): the size-k subsets in which exactly r present clusters total T and every other cluster totals less.

For one level T each cluster contributes a polynomial in z (z^x: x of its samples in S) split into *below*
(x = 0 or W < T) and *tied* (x ≥ 1 and W = T) parts, and a marker s per tied cluster:

    G_T(z, s) = (1 + z)^u · Π_j (below_j(z) + s·tied_j(z)·(1 + L·v_j·ε)),    ε² = 0,

so that the ε-part of [z^k s^r] G_T is L·Σ_S Σ_{j tied} v_j over the subsets with exactly r tied clusters
(dual numbers carry the credited value; L = the common denominator of the v_j keeps every count an integer).
A cluster whose largest total is below T is entirely below: it multiplies in as (1 + z)^{c_j}. One product per
level gives every k ≤ k_max at once; its cost is polynomial (levels × clusters × k_max² at most), and all counts
are exact Python integers (int64 where a bound on the counts proves that it cannot overflow).

Only levels that a credited cluster (v_j > 0) reaches can credit anything. Their number is the number of distinct
totals a cluster can reach: c_j for a plurality vote or a weight that is constant within each cluster, but up to
2^{c_j} for arbitrary real weights, where counting subsets by weight sum is a knapsack-counting problem (#P-hard
in general); ``count_vote_wins`` then returns None and the caller falls back to enumeration or Monte Carlo.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

MAX_LEVELS = 4096  # distinct vote totals counted exactly; beyond, the caller enumerates or samples
_INT64_LIMIT = 2**63


class _Cluster:
    """One answer cluster's vote totals: for each reachable total W, the number of ways to draw x of its samples."""

    def __init__(self, weights: Sequence[int], value: Fraction, k_max: int, dtype, max_levels: int | None):
        self.size = len(weights)
        self.value = value
        table: dict[int, list[int]] = {0: [1]}  # total -> counts over x (x = index)
        for weight, count in sorted(Counter(weights).items()):
            grown: dict[int, list[int]] = {}
            for total, counts in table.items():
                for y in range(count + 1):  # y of the `count` samples with this weight
                    ways = math.comb(count, y)
                    row = grown.setdefault(total + weight * y, [0] * (k_max + 1))
                    for x, c in enumerate(counts):
                        if c and x + y <= k_max:
                            row[x + y] += ways * c
            table = {t: r for t, r in grown.items() if any(r)}
            if max_levels is not None and len(table) > max_levels + 1:
                raise _TooManyLevels
        empty = np.zeros(k_max + 1, dtype=dtype)
        empty[0] = 1
        self.totals: list[int] = []  # reachable totals of a non-empty draw, ascending
        self.tied: list[np.ndarray] = []  # counts over x ≥ 1 drawing exactly that total
        for total in sorted(table):
            row = np.array(table[total], dtype=dtype)
            row[0] = 0
            if row.any():
                self.totals.append(total)
                self.tied.append(row)
        # below[i]: the empty draw plus every draw whose total is below totals[i] (below[-1]: every draw)
        self.below = [empty]
        for row in self.tied:
            self.below.append(self.below[-1] + row)

    def split(self, level: int) -> tuple[np.ndarray, np.ndarray | None]:
        i = bisect_left(self.totals, level)
        tied = self.tied[i] if i < len(self.totals) and self.totals[i] == level else None
        return self.below[i], tied


class _TooManyLevels(Exception):
    pass


def _times(state: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Each row of ``state`` times the polynomial ``poly`` in z, truncated to the row length."""
    width = state.shape[-1]
    terms = np.flatnonzero(poly)
    if len(terms) > state.shape[0]:  # fewer rows than terms: one convolution per row
        return np.stack([np.convolve(row, poly[: terms[-1] + 1])[:width] for row in state])
    out = np.zeros_like(state)
    for x in terms:
        out[..., x:] += poly[x] * state[..., : width - x]
    return out


def count_vote_wins(weights: Sequence[Sequence[int]], values: Sequence[Fraction], unparsed: int, k_max: int,
                    max_levels: int | None = MAX_LEVELS) -> list[Fraction] | None:
    """[Σ_{|S|=k} accuracy(S) for k = 0..k_max], or None when the clusters reach more than ``max_levels`` totals
    (None: no limit).

    ``weights[j]``: the non-negative integer vote weights of cluster j's samples; ``values[j]``: the accuracy
    credited when cluster j wins (a Fraction in [0, 1]); ``unparsed``: samples that never vote.
    """
    n = unparsed + sum(len(w) for w in weights)
    scale = math.lcm(*(Fraction(v).denominator for v in values)) if values else 1
    credited = sum(v > 0 for v in values)
    # every partial product counts draws from the pool (≤ C(n, n/2)), times at most scale·(credited clusters tied)
    dtype = np.int64 if scale * max(credited, 1) * math.comb(n, n // 2) < _INT64_LIMIT else object
    try:
        clusters = [_Cluster(w, Fraction(v), k_max, dtype, max_levels) for w, v in zip(weights, values)]
    except _TooManyLevels:
        return None
    credits = [int(c.value * scale) for c in clusters]
    # a level that no credited cluster reaches credits nothing: only the totals of credited clusters are visited
    levels = sorted({t for c, credit in zip(clusters, credits) if credit for t in c.totals})
    if max_levels is not None and len(levels) > max_levels:
        return None
    free = np.zeros(k_max + 1, dtype=dtype)  # (1 + z)^(unparsed) times every cluster that cannot reach the level
    free[: min(unparsed, k_max) + 1] = [math.comb(unparsed, x) for x in range(min(unparsed, k_max) + 1)]
    by_top = sorted(range(len(clusters)), key=lambda j: clusters[j].totals[-1] if clusters[j].totals else -1)
    freed = 0
    totals_by_ties: dict[int, np.ndarray] = {}  # r -> Σ over levels of the credit with r tied clusters
    for level in levels:
        while freed < len(by_top) and (not clusters[by_top[freed]].totals
                                       or clusters[by_top[freed]].totals[-1] < level):
            free = _times(free, clusters[by_top[freed]].below[-1])
            freed += 1
        # uncredited clusters first (their credit stays 0, only counts are multiplied), largest first while few
        # rows of ties exist yet
        contenders = sorted(by_top[freed:], key=lambda j: (credits[j] > 0, -clusters[j].size))
        splits = [clusters[j].split(level) for j in contenders]
        count = np.zeros((1 + sum(tied is not None for _, tied in splits), k_max + 1), dtype=dtype)
        count[0] = free  # row r: subsets with r tied clusters so far
        credit = np.zeros_like(count)  # ε-part: scale · Σ of the tied clusters' values
        rows, credit_is_zero = 1, True
        for j, (below, tied) in zip(contenders, splits):
            tied_count = None if tied is None else _times(count[:rows], tied)
            tied_credit = None if tied is None or credit_is_zero else _times(credit[:rows], tied)
            count[:rows] = _times(count[:rows], below)
            if not credit_is_zero:
                credit[:rows] = _times(credit[:rows], below)
            if tied is None:
                continue
            count[1 : rows + 1] += tied_count
            if tied_credit is not None:
                credit[1 : rows + 1] += tied_credit
            if credits[j]:
                credit[1 : rows + 1] += credits[j] * tied_count
                credit_is_zero = False
            rows += 1
        for r in range(1, credit.shape[0]):
            totals_by_ties[r] = totals_by_ties.get(r, 0) + credit[r]
    ties = math.lcm(*totals_by_ties) if totals_by_ties else 1
    numerators = [0] * (k_max + 1)
    for r, row in totals_by_ties.items():
        for k in np.flatnonzero(row):
            numerators[k] += int(row[k]) * (ties // r)
    return [Fraction(v, scale * ties) for v in numerators]


def subset_votes(cluster: torch.Tensor, weights: torch.Tensor, subsets: torch.Tensor, clusters: int):
    """(winning clusters, number tied) of each subset: a bool (subsets, clusters) mask and its row sums.

    ``cluster[i]``: the cluster of sample i (``clusters`` for unparsed, which never wins); ``weights[i]``: its vote
    weight (int64 for exact ties, or float64); ``subsets``: rows of sample indices. A row without a parsed sample
    has no winner (zero tied).
    """
    rows = subsets.shape[0]
    member = cluster[subsets]
    totals = torch.zeros(rows, clusters + 1, dtype=weights.dtype).scatter_add_(1, member, weights[subsets])
    present = torch.zeros(rows, clusters + 1, dtype=torch.bool).scatter_(1, member, True)[:, :clusters]
    totals = totals[:, :clusters]
    lowest = torch.iinfo(totals.dtype).min if not totals.is_floating_point() else -math.inf
    totals = totals.masked_fill(~present, lowest)
    winners = present & (totals == totals.max(-1, keepdim=True).values)
    return winners, winners.sum(-1)
