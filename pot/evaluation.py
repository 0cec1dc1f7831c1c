"""Metrics, compute and confidence intervals from one pool of n samples per problem.

A *record* is one problem's dict (see ``pot.records``): ``samples`` (each with ``answer_key``, ``correct``,
``num_tokens`` and ``scores: {scorer: float}``), plus ``prompt_tokens`` and ``wall_time``. For every strategy and k:

- ``pass``: unbiased pass@k = 1 − C(n−c, k)/C(n, k) (``cat.estimators.pass_at_k``, Chen et al. 2021);
- ``maj``: expected plurality-vote accuracy over size-k subsets (``cat.estimators.majority_at_k``; exact, or Monte
  Carlo with its standard error reported as ``mc_stderr``);
- ``avg``: avg@k = expected accuracy of one of k samples = c/n;
- ``wmaj``: weighted majority vote over size-k subsets: each parsed answer collects the sum of its samples' vote
  weights (``pot.scorers.vote_weights`` of the scorer's scores) and the heaviest answer wins (ties: the answer that
  occurs first); exact by enumeration up to ``cat.estimators.EXACT_SUBSET_LIMIT`` subsets, else Monte Carlo with its
  standard error, like ``maj``;
- ``bon``: best-of-k under a scorer = E[correct of the highest-scoring sample of a uniform k-subset]
  = Σ_{i=k}^{n} C(i−1, k−1)/C(n, k) · correct_(i), samples ranked by score ascending (ties: the earlier sample wins).

Compute of a point (summed over problems): k of n samples cost k/n of the generated tokens and wall time; forward
tokens add the prompt once (shared prefill); FLOPs ≈ 2·P·forward + 4·P·backward (Kaplan et al. 2020).
95% CIs: percentile bootstrap over problems; ``paired_bootstrap`` resamples the same problems for two runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from cat.estimators import DEFAULT_MC_SAMPLES, EXACT_SUBSET_LIMIT, MajorityEstimate, majority_at_k, pass_at_k
from pot.scorers import vote_weights

STRATEGIES = ("pass", "maj", "wmaj", "avg", "bon")


def check_ks(ks: list[int], n: int) -> list[int]:
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must hold positive ints, got {k!r}")
        if k > n:
            raise ValueError(f"every k must be <= n={n}, got k={k}")
    return sorted(set(ks))


def best_of_k_selected(scores: list[float], correct: list[bool], k: int) -> float:
    """Expected correctness of the top-scoring sample in a uniform size-k subset (ties → earlier sample)."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"best-of-k needs 1 <= k <= n={n}, got k={k}")
    # ascending rank: higher score later; among equal scores the earlier sample ranks higher
    order = sorted(range(n), key=lambda i: (scores[i], -i))
    total = math.comb(n, k)
    return sum(math.comb(rank, k - 1) * correct[i] for rank, i in enumerate(order) if rank >= k - 1) / total


def weighted_majority_at_k(answer_keys: list, correct: list[bool], weights: list[float], k: int,
                           samples: int | None = None, seed: int = 0,
                           exact_limit: int = EXACT_SUBSET_LIMIT) -> MajorityEstimate:
    """Expected accuracy of the weighted vote over uniform size-k subsets (unparsed answers, None, never win).

    Exact over all C(n, k) subsets when that is ≤ ``exact_limit``, else the mean over ``samples`` seeded uniform
    subsets with standard error √(v̄(1−v̄)/(samples−1)).
    """
    n = len(answer_keys)
    if not (len(correct) == len(weights) == n):
        raise ValueError(f"answer_keys, correct and weights need equal lengths, "
                         f"got {n}, {len(correct)}, {len(weights)}")
    if not 1 <= k <= n:
        raise ValueError(f"weighted maj@k needs 1 <= k <= n={n}, got k={k}")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"weights must be finite and >= 0, got {bad[0]!r}")
    samples = DEFAULT_MC_SAMPLES if samples is None else samples
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for a Monte Carlo standard error, got samples={samples}")
    exact = math.comb(n, k) <= exact_limit
    if exact:
        subsets = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(-1, k)
    else:
        g = torch.Generator().manual_seed(seed)
        subsets = torch.rand(samples, n, generator=g).argsort(-1)[:, :k].sort(-1).values
    hits = _weighted_vote_hits(answer_keys, correct, weights, subsets).double()
    mean = float(hits.mean())
    return MajorityEstimate(mean, 0.0 if exact else math.sqrt(mean * (1 - mean) / (samples - 1)), exact)


def _weighted_vote_hits(answer_keys, correct, weights, subsets: torch.Tensor) -> torch.Tensor:
    """Whether each subset's (rows of sample indices, ascending) weighted-vote winner is correct."""
    clusters = {key: i for i, key in enumerate(dict.fromkeys(key for key in answer_keys if key is not None))}
    unparsed = len(clusters)  # one extra column that can never win
    cluster = torch.tensor([clusters.get(key, unparsed) for key in answer_keys])
    rows, k = subsets.shape
    member = cluster[subsets]
    totals = torch.zeros(rows, unparsed + 1, dtype=torch.float64).scatter_add_(
        1, member, torch.tensor(weights, dtype=torch.float64)[subsets])
    position = torch.arange(k).expand(rows, k)
    first = torch.full((rows, unparsed + 1), k).scatter_reduce_(1, member, position, "amin")
    present = first < k
    present[:, unparsed] = False
    totals = totals.masked_fill(~present, -math.inf)
    tied = present & (totals == totals.max(-1, keepdim=True).values)
    winner_position = first.masked_fill(~tied, k).min(-1).values
    winner = subsets.gather(1, winner_position.clamp_max(k - 1)[:, None]).squeeze(-1)
    return present.any(-1) & torch.tensor(correct, dtype=torch.bool)[winner]


def problem_values(record: dict, strategy: str, k: int, scorer: str = "oracle",
                   mc_samples: int | None = None, seed: int = 0) -> tuple[float, float]:
    """(value, Monte Carlo standard error) of one problem under ``strategy`` at ``k``.

    ``pot@u``: oracle best-of-k over the problem's PoT runs with update budget u (unbiased pass@k over the runs).
    """
    if strategy.startswith("pot@"):
        runs = record.get("pot", {}).get(strategy[4:])
        if not runs:
            raise ValueError(f"strategy {strategy!r}: problem {record.get('id')!r} has no PoT runs with that budget")
        return float(pass_at_k(len(runs), sum(run["correct"] for run in runs), k)), 0.0
    samples = record["samples"]
    correct = [bool(s["correct"]) for s in samples]
    n, c = len(samples), sum(correct)
    if strategy == "pass":
        return float(pass_at_k(n, c, k)), 0.0
    if strategy == "avg":
        if k > n:
            raise ValueError(f"avg@k needs k <= n={n}, got k={k}")
        return c / n, 0.0
    if strategy == "maj":
        estimate = majority_at_k([s["answer_key"] for s in samples], correct, k, samples=mc_samples, seed=seed)
        return estimate.value, estimate.stderr
    if strategy == "wmaj":
        weights = vote_weights(scorer, [s["scores"][scorer] for s in samples])
        estimate = weighted_majority_at_k([s["answer_key"] for s in samples], correct, weights, k,
                                          samples=mc_samples, seed=seed)
        return estimate.value, estimate.stderr
    if strategy == "bon":
        return best_of_k_selected([s["scores"][scorer] for s in samples], correct, k), 0.0
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def bootstrap_ci(values, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over problems."""
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (resamples, v.numel()), generator=g)
    means = v[idx].mean(-1)
    alpha = (1 - level) / 2
    return float(torch.quantile(means, alpha)), float(torch.quantile(means, 1 - alpha))


@dataclass
class PairedComparison:
    difference: float  # mean(b) − mean(a)
    ci_low: float
    ci_high: float
    within_noise: bool  # the CI contains 0


def paired_bootstrap(a, b, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Bootstrap of mean(b − a) resampling the same problems for both runs."""
    a_t, b_t = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a_t.shape != b_t.shape:
        raise ValueError(f"paired bootstrap needs per-problem values of equal length, got {a_t.numel()} and {b_t.numel()}")
    low, high = bootstrap_ci(b_t - a_t, resamples, level, seed)
    return PairedComparison(float((b_t - a_t).mean()), low, high, low <= 0.0 <= high)


def point_compute(records: list[dict], k: int, num_parameters: int) -> dict:
    """Compute of using k of the n samples of every problem (summed over problems)."""
    generated = sum(k / len(r["samples"]) * sum(s["num_tokens"] for s in r["samples"]) for r in records)
    forward = generated + sum(r["prompt_tokens"] for r in records)
    wall = sum(k / len(r["samples"]) * r["wall_time"] for r in records)
    return {"generated_tokens": generated, "forward_tokens": forward, "backward_tokens": 0,
            "flops": 2.0 * num_parameters * forward, "wall_time": wall}


def curves(records: list[dict], strategies: list[str], ks: list[int], scorer: str = "oracle",
           num_parameters: int = 0, seed: int = 0) -> dict:
    """``{strategy: [point]}`` with value, 95% bootstrap CI, Monte Carlo error and compute per k."""
    if not records:
        raise ValueError("curves need at least one evaluated problem, got 0 records")
    n = min(len(r["samples"]) for r in records)
    ks = check_ks(ks, n)
    out: dict[str, list[dict]] = {}
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        points = []
        for k in ks:
            values, errors = zip(*(problem_values(r, strategy, k, scorer, seed=seed) for r in records))
            low, high = bootstrap_ci(values, seed=seed)
            mc = math.sqrt(sum(e * e for e in errors)) / len(errors)
            points.append({"k": k, "value": sum(values) / len(values), "ci_low": low, "ci_high": high,
                           "mc_stderr": mc, **point_compute(records, k, num_parameters)})
        out[strategy] = points
    return out


def unparsed_counts(records: list[dict], strategies: list[str]) -> dict[str, int]:
    """Samples whose answer could not be parsed (counted as wrong) in the pool each strategy draws from."""
    missing = sum(s["answer_key"] is None for r in records for s in r["samples"])
    return {strategy: missing for strategy in strategies}


def pot_curves(records: list[dict], ks: list[int], seed: int = 0) -> dict:
    """``{"pot@u": [point]}``: accuracy of best-of-k (oracle) over a problem's PoT runs at each update budget u.

    k = 1 is PoT alone (mean accuracy of one run); compute per point is k times a run's mean measured compute
    (generated/forward/backward tokens, FLOPs, wall time from its trace), summed over problems.
    """
    budgets = sorted(records[0]["pot"], key=int)
    out: dict[str, list[dict]] = {}
    for budget in budgets:
        runs_of = [r["pot"][budget] for r in records]
        points = []
        for k in check_ks(ks, min(len(runs) for runs in runs_of)):
            values = [problem_values(r, f"pot@{budget}", k)[0] for r in records]
            low, high = bootstrap_ci(values, seed=seed)
            totals = {key: sum(k * sum(run[key] for run in runs) / len(runs) for runs in runs_of)
                      for key in ("generated_tokens", "forward_tokens", "backward_tokens", "flops", "wall_time")}
            points.append({"k": k, "value": sum(values) / len(values), "ci_low": low, "ci_high": high,
                           "mc_stderr": 0.0, **totals})
        out[f"pot@{budget}"] = points
    return out
