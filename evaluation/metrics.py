"""Metrics, compute and confidence intervals from one pool of n samples per problem.

A *record* is one problem's dict (see ``evaluation.records``): ``samples`` (each with ``answer_key``, ``correct``,
``num_tokens`` and ``scores: {scorer: float}``), plus ``prompt_tokens`` and ``wall_time``. For every strategy and k:

- ``pass``: unbiased pass@k = 1 − C(n−c, k)/C(n, k) (``cat.estimators.pass_at_k``, Chen et al. 2021);
- ``maj``: expected plurality-vote accuracy over size-k subsets (``cat.estimators.majority_curve``), exact for any
  n and k by counting the subsets each answer cluster wins; ties shared equally among the tied answers;
- ``avg``: avg@k = expected accuracy of one of k samples = c/n;
- ``wmaj``: weighted majority vote over size-k subsets: each parsed answer collects the sum of its samples' vote
  weights (``vote_weights`` of the scorer's scores) and the heaviest answer wins, ties shared;
  exact by counting or enumeration where possible, else Monte Carlo with its standard error reported as ``mc_stderr``
  (``majority_curve`` documents when);
- ``bon``: best-of-k under a scorer = E[correct of the highest-scoring sample of a uniform k-subset]
  = Σ_g [C(l_g + s_g, k) − C(l_g, k)]/C(n, k) · (share correct of score group g), ties for the top score shared
  (``cat.estimators.best_of_k_expected``).

Compute of a point (summed over problems): k of n samples cost k/n of the generated tokens and wall time; forward
tokens add the prompt once (shared prefill); FLOPs ≈ 2·P·(forward + backward) tokens (see ``pot.trace``).
95% CIs: percentile bootstrap over problems, one resampling of the problems shared by every strategy and k of an
evaluation (so the points of a curve are resampled consistently); ``paired_bootstrap`` resamples the same problems
for two runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cat.estimators import best_of_k_curve, majority_curve, pass_at_k
from evaluation.config import STRATEGIES, check_ks, check_scorer

BOOTSTRAP_RESAMPLES = 2000


def vote_weights(scorer: str, scores: list[float]) -> list[float]:
    """Non-negative weighted-majority vote weight of each sample's ``scorer`` score (``evaluation.scorers``).

    A weighted vote sums a non-negative weight per answer: oracle and self-certainty (a KL divergence, ≥ 0) as they
    are, ``mean_logprob`` → exp(mean log p) (the geometric-mean token probability), ``reward_model`` → sigmoid(logit)
    (the Bradley–Terry probability of being preferred over a reference of logit 0).
    """
    for score in scores:
        if not math.isfinite(score):
            raise ValueError(f"weighted majority needs finite {scorer!r} scores, got {score!r}")
    if scorer == "oracle":
        return list(scores)
    if scorer == "self_certainty":
        return [max(s, 0.0) for s in scores]  # a KL ≥ 0; rounding leaves near-uniform steps a hair below 0
    if scorer == "mean_logprob":
        return [math.exp(s) for s in scores]
    check_scorer(scorer)
    return [1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s)) for s in scores]


def problem_curve(record: dict, strategy: str, ks: list[int], scorer: str = "oracle",
                  mc_samples: int | None = None, seed: int = 0) -> tuple[list[float], list[float]]:
    """(values, Monte Carlo standard errors) of one problem under ``strategy`` at every k of ``ks``.

    ``pot@u``: oracle best-of-k over the problem's PoT runs with update budget u (unbiased pass@k over the runs).
    """
    if strategy.startswith("pot@"):
        runs = record.get("pot", {}).get(strategy[4:])
        if not runs:
            raise ValueError(f"strategy {strategy!r}: problem {record.get('id')!r} has no PoT runs with that budget")
        hits = sum(run["correct"] for run in runs)
        return [float(pass_at_k(len(runs), hits, k)) for k in ks], [0.0] * len(ks)
    samples = record["samples"]
    correct = [bool(s["correct"]) for s in samples]
    n, c = len(samples), sum(correct)
    if strategy == "pass":
        return [float(pass_at_k(n, c, k)) for k in ks], [0.0] * len(ks)
    if strategy == "avg":
        if ks and max(ks) > n:
            raise ValueError(f"avg@k needs k <= n={n}, got k={max(ks)}")
        return [c / n] * len(ks), [0.0] * len(ks)
    if strategy in ("maj", "wmaj"):
        weights = vote_weights(scorer, [s["scores"][scorer] for s in samples]) if strategy == "wmaj" else None
        estimates = majority_curve([s["answer_key"] for s in samples], correct, ks, samples=mc_samples, seed=seed,
                                   weights=weights)
        return [e.value for e in estimates], [e.stderr for e in estimates]
    if strategy == "bon":
        return best_of_k_curve([s["scores"][scorer] for s in samples], ks, outcomes=correct), [0.0] * len(ks)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def problem_values(record: dict, strategy: str, k: int, scorer: str = "oracle",
                   mc_samples: int | None = None, seed: int = 0) -> tuple[float, float]:
    """(value, Monte Carlo standard error) of one problem under ``strategy`` at ``k`` (see ``problem_curve``)."""
    values, errors = problem_curve(record, strategy, [k], scorer, mc_samples, seed)
    return values[0], errors[0]


def bootstrap_counts(problems: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples, problems) float64 matrix: how often each problem is drawn in each bootstrap resample.

    Resample b draws ``problems`` indices uniformly with replacement (seeded); the mean of resample b of per-problem
    values v is ``counts[b] @ v / problems``, so one matrix serves every strategy and k at once.
    """
    if problems < 1:
        raise ValueError("the bootstrap needs at least one value, got none")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, problems, (resamples, problems), generator=g)
    return torch.zeros(resamples, problems, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(resamples, problems, dtype=torch.float64))


def percentile_cis(values: torch.Tensor, counts: torch.Tensor,
                   level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap CIs of the mean of each column of ``values`` (problems × points) under ``counts``."""
    means = counts @ values / values.shape[0]
    alpha = (1 - level) / 2
    bounds = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    return bounds[0], bounds[1]


def bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over problems."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    low, high = percentile_cis(v[:, None], bootstrap_counts(v.numel(), resamples, seed), level)
    return float(low[0]), float(high[0])


@dataclass
class PairedComparison:
    difference: float  # mean(b) − mean(a)
    ci_low: float
    ci_high: float
    within_noise: bool  # the CI contains 0


def paired_bootstrap(a, b, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                     seed: int = 0) -> PairedComparison:
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
    """``{strategy: [point]}`` with value, 95% bootstrap CI, Monte Carlo error and compute per k.

    Every point's CI comes from the same bootstrap resamples of the problems (``bootstrap_counts`` with ``seed``),
    so each equals ``bootstrap_ci`` of that point's per-problem values with the same seed.
    """
    if not records:
        raise ValueError("curves need at least one evaluated problem, got 0 records")
    n = min(len(r["samples"]) for r in records)
    ks = check_ks(ks, n)
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not strategies:
        return {}
    values, errors = [], []  # one (problems × ks) matrix per strategy
    for strategy in strategies:
        if strategy == "pass":  # vectorised over problems
            ns = [len(r["samples"]) for r in records]
            hits = [sum(bool(s["correct"]) for s in r["samples"]) for r in records]
            values.append(torch.stack([pass_at_k(ns, hits, k) for k in ks], dim=1))
            errors.append(torch.zeros(len(records), len(ks), dtype=torch.float64))
            continue
        per_problem = [problem_curve(r, strategy, ks, scorer, seed=seed) for r in records]
        values.append(torch.tensor([v for v, _ in per_problem], dtype=torch.float64).reshape(len(records), len(ks)))
        errors.append(torch.tensor([e for _, e in per_problem], dtype=torch.float64).reshape(len(records), len(ks)))
    table = torch.cat(values, dim=1)
    low, high = percentile_cis(table, bootstrap_counts(len(records), seed=seed))
    means = table.mean(0)
    mc = torch.cat(errors, dim=1).square().sum(0).sqrt() / len(records)
    compute = [point_compute(records, k, num_parameters) for k in ks]
    out: dict[str, list[dict]] = {}
    for s, strategy in enumerate(strategies):
        out[strategy] = [{"k": k, "value": float(means[s * len(ks) + i]), "ci_low": float(low[s * len(ks) + i]),
                          "ci_high": float(high[s * len(ks) + i]), "mc_stderr": float(mc[s * len(ks) + i]),
                          **compute[i]} for i, k in enumerate(ks)]
    return out


def unparsed_counts(records: list[dict], strategies: list[str]) -> dict[str, int]:
    """Answers that could not be parsed (counted as wrong) among those each strategy draws from: the sampled pool,
    or for ``pot@u`` the PoT runs with update budget u."""
    def missing(answers) -> int:
        return sum(a["answer_key"] is None for a in answers)

    pool = missing(s for r in records for s in r["samples"])
    return {name: missing(run for r in records for run in r["pot"][name[4:]]) if name.startswith("pot@") else pool
            for name in strategies}


def finished_rate(records: list[dict]) -> float:
    """Share of the samples that ended on their own (end-of-sequence) rather than at the token limit."""
    finished = [bool(s["finished"]) for r in records for s in r["samples"]]
    return sum(finished) / len(finished) if finished else 0.0


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
