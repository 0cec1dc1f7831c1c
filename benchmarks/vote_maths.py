"""Vote maths: evaluation curves (pass@k, maj@k, best-of-k with bootstrap CIs) before and after exact counting.

"Before" is the implementation of commit f25e134, copied below verbatim and labelled ``before_*``: maj@k enumerated
all subsets up to C(n, k) ≤ 200 000 and otherwise averaged 2000 seeded Monte Carlo subsets, with ties going to the
answer that occurs first; every point bootstrapped on its own. "After" is ``evaluation.metrics.curves`` (maj@k counted
exactly for every k, ties shared, one bootstrap resampling for all points).

Run in one process on the same data:

1. synthetic pools, n = 64 samples × 500 problems, every k = 1..64, strategies pass, maj and bon: answer
   distributions of a weak model (a few large clusters, the right answer among them or not, many distinct answers
   and some unparsed samples). Before runs on the first ``--before-problems`` problems (it takes seconds per
   problem); after runs on those same problems (the measured ratio) and on all of them.
2. exactness: (a) at the points where "before" enumerated exactly, the largest |before − after| where the tie rule
   cannot matter (every tie for the top either involves no right answer or only right answers: the first-occurrence
   and shared rules then agree) — it must be 0 — and that "after" lies between the values of the most and the
   least favourable tie rules everywhere; (b) "after" against a brute-force enumeration with shared ties in exact
   rational arithmetic on small pools (the first 12 samples of problems, every k) and at n = 64 for k ≤ 2 and
   k ≥ 62.
3. committed records (``--arm``'s in the archive ``--records``): both implementations on its default curves.

Times are CPU seconds of the process (single-threaded: run with OMP_NUM_THREADS=1).
Usage: OMP_NUM_THREADS=1 python benchmarks/vote_maths.py [--problems 500] [--before-problems 20]
       [--records results/arith_g8/records.tar.gz --arm baseline]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from collections import Counter
from fractions import Fraction

import torch

from evaluation.metrics import curves
from evaluation.records import read_archived_records

# ------------------------------------------------------------------------ before: f25e134, copied verbatim

BEFORE_EXACT_SUBSET_LIMIT = 200_000
BEFORE_DEFAULT_MC_SAMPLES = 2000


def before_pass_at_k(n, c, k: int) -> torch.Tensor:
    n_t, c_t = torch.broadcast_tensors(torch.as_tensor(n).to(torch.int64), torch.as_tensor(c).to(torch.int64))
    flat_n, flat_c = n_t.flatten().tolist(), c_t.flatten().tolist()
    values = []
    for ni, ci in zip(flat_n, flat_c):
        if ni - ci < k:
            values.append(1.0)
        else:
            i = torch.arange(ni - ci + 1, ni + 1, dtype=torch.float64)
            values.append(1.0 - float(torch.prod(1.0 - k / i)))
    return torch.tensor(values, dtype=torch.float64).reshape(n_t.shape)


def before_plurality_is_correct(subset, keys, correct) -> bool:
    votes = Counter(keys[i] for i in subset if keys[i] is not None)
    if not votes:
        return False
    top = max(votes.values())
    # ties go to the answer that occurs first in the subset's sample order
    winner = next(i for i in subset if keys[i] is not None and votes[keys[i]] == top)
    return bool(correct[winner])


def before_majority_at_k(answer_keys, correct, k: int, samples: int | None = None, seed: int = 0):
    """(value, stderr, exact) as f25e134's ``cat.estimators.majority_at_k`` (argument checks left out)."""
    n = len(answer_keys)
    flags = [bool(c) for c in correct]
    samples = BEFORE_DEFAULT_MC_SAMPLES if samples is None else samples
    total = math.comb(n, k)
    if total <= BEFORE_EXACT_SUBSET_LIMIT:
        hits = sum(before_plurality_is_correct(s, answer_keys, flags) for s in itertools.combinations(range(n), k))
        return hits / total, 0.0, True
    rng = random.Random(seed)
    outcomes = [before_plurality_is_correct(sorted(rng.sample(range(n), k)), answer_keys, flags)
                for _ in range(samples)]
    mean = sum(outcomes) / samples
    return mean, math.sqrt(mean * (1 - mean) / (samples - 1)), False


def before_best_of_k_selected(scores, correct, k: int) -> float:
    n = len(scores)
    order = sorted(range(n), key=lambda i: (scores[i], -i))
    total = math.comb(n, k)
    return sum(math.comb(rank, k - 1) * correct[i] for rank, i in enumerate(order) if rank >= k - 1) / total


def before_problem_values(record, strategy, k, scorer="oracle", mc_samples=None, seed=0):
    samples = record["samples"]
    correct = [bool(s["correct"]) for s in samples]
    n, c = len(samples), sum(correct)
    if strategy == "pass":
        return float(before_pass_at_k(n, c, k)), 0.0
    if strategy == "maj":
        value, stderr, _ = before_majority_at_k([s["answer_key"] for s in samples], correct, k, mc_samples, seed)
        return value, stderr
    if strategy == "bon":
        return before_best_of_k_selected([s["scores"][scorer] for s in samples], correct, k), 0.0
    raise ValueError(strategy)


def before_bootstrap_ci(values, resamples: int = 2000, level: float = 0.95, seed: int = 0):
    v = torch.as_tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (resamples, v.numel()), generator=g)
    means = v[idx].mean(-1)
    alpha = (1 - level) / 2
    return float(torch.quantile(means, alpha)), float(torch.quantile(means, 1 - alpha))


def before_curves(records, strategies, ks, scorer="oracle", seed=0):
    out = {}
    for strategy in strategies:
        points = []
        for k in ks:
            values, errors = zip(*(before_problem_values(r, strategy, k, scorer, seed=seed) for r in records))
            low, high = before_bootstrap_ci(values, seed=seed)
            mc = math.sqrt(sum(e * e for e in errors)) / len(errors)
            points.append({"k": k, "value": sum(values) / len(values), "ci_low": low, "ci_high": high,
                           "mc_stderr": mc})
        out[strategy] = points
    return out


# ---------------------------------------------------------------------------------------------- synthetic pools


def weak_model_record(rng: random.Random, index: int, n: int) -> dict:
    """A few large answer clusters (the right answer is one of them, a small one, or missing), many distinct
    wrong answers, some unparsed samples; oracle scores."""
    big = [rng.uniform(0.05, 0.4) for _ in range(rng.randint(1, 3))]
    right = rng.choice([0, 0, 1, None, "small"])
    keys = []
    for _ in range(n):
        u = rng.random()
        if u < 0.08:
            keys.append(None)
            continue
        u = rng.random()
        for j, share in enumerate(big):
            if u < share:
                keys.append(f"big{j}")
                break
            u -= share
        else:
            keys.append(f"rare{rng.randrange(40)}")
    gold = {0: "big0", 1: "big1", None: None, "small": "rare0"}[right]
    correct = [key is not None and key == gold for key in keys]
    return {"id": f"p{index}", "prompt_tokens": 50, "wall_time": 1.0, "samples": [
        {"text": "", "num_tokens": 100, "answer_key": key, "correct": ok, "finished": True,
         "scores": {"oracle": float(ok)}} for key, ok in zip(keys, correct)]}


# ----------------------------------------------------------------------------------------------------- exactness


def tie_rule_bounds(keys, correct, k):
    """(least, most) favourable tie rule over every size-k subset: a tie for the top counts right only if every
    tied answer is right, or if any is. Equal bounds: the value does not depend on the tie rule."""
    right = {key for key, ok in zip(keys, correct) if ok and key is not None}
    low = high = 0
    for subset in itertools.combinations(range(len(keys)), k):
        votes = Counter(keys[i] for i in subset if keys[i] is not None)
        if votes:
            top = max(votes.values())
            tied = [key in right for key, v in votes.items() if v == top]
            low, high = low + all(tied), high + any(tied)
    total = math.comb(len(keys), k)
    return low / total, high / total


def brute_shared(keys, correct, k) -> Fraction:
    right = {key for key, ok in zip(keys, correct) if ok and key is not None}
    total = Fraction(0)
    for subset in itertools.combinations(range(len(keys)), k):
        votes = Counter(keys[i] for i in subset if keys[i] is not None)
        if votes:
            tied = [key for key, v in votes.items() if v == max(votes.values())]
            total += Fraction(sum(key in right for key in tied), len(tied))
    return total / math.comb(len(keys), k)


def timed(fn, *args, **kwargs):
    """(result, CPU seconds of this process): unlike wall time, robust to other processes sharing the cores."""
    tic = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--before-problems", type=int, default=20, help="problems the slow 'before' code runs on")
    parser.add_argument("--records", default="results/arith_g8/records.tar.gz", help="a results directory's archive")
    parser.add_argument("--arm", default="baseline", help="whose records in --records")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    records = [weak_model_record(rng, i, args.n) for i in range(args.problems)]
    subset = records[: args.before_problems]
    ks = list(range(1, args.n + 1))
    strategies = ["pass", "maj", "bon"]

    print(f"1. synthetic pools: n = {args.n}, {args.problems} problems, every k = 1..{args.n}, {strategies}")
    after_all, t_after_all = timed(curves, records, strategies, ks)
    after_sub, t_after_sub = timed(curves, subset, strategies, ks)
    before_sub, t_before_sub = timed(before_curves, subset, strategies, ks)
    per_problem = t_before_sub / len(subset)
    print(f"   before, {len(subset)} problems: {t_before_sub:8.2f} s  ({per_problem:.2f} s per problem: "
          f"≈ {per_problem * args.problems:.0f} s for {args.problems})")
    print(f"   after,  {len(subset)} problems: {t_after_sub:8.2f} s   ratio {t_before_sub / t_after_sub:7.1f}×")
    print(f"   after, {args.problems} problems: {t_after_all:8.2f} s   ratio to the scaled before "
          f"{per_problem * args.problems / t_after_all:7.1f}×")
    maj_only, t_maj = timed(curves, records, ["maj"], ks)
    print(f"   after, maj@k alone on {args.problems} problems: {t_maj:.2f} s")
    del maj_only, after_all

    print("2a. before vs after where 'before' enumerated every subset (C(n, k) <= 200 000)")
    exact_ks = [k for k in ks if math.comb(args.n, k) <= BEFORE_EXACT_SUBSET_LIMIT]
    rule_free, tied_points, worst_rule_free, worst_any, outside = 0, 0, 0.0, 0.0, 0
    for record in subset[: max(1, len(subset) // 2)]:
        keys = [s["answer_key"] for s in record["samples"]]
        correct = [s["correct"] for s in record["samples"]]
        after = curves([record], ["maj"], exact_ks)["maj"]
        for k, point in zip(exact_ks, after):
            before = before_majority_at_k(keys, correct, k)[0]
            low, high = tie_rule_bounds(keys, correct, k)
            outside += not (low - 1e-15 <= point["value"] <= high + 1e-15)
            worst_any = max(worst_any, abs(before - point["value"]))
            if low == high:
                rule_free += 1
                worst_rule_free = max(worst_rule_free, abs(before - point["value"]))
            else:
                tied_points += 1
    print(f"   k in {exact_ks}: {rule_free} points where the tie rule cannot matter: max |before − after| = "
          f"{worst_rule_free:.1e}")
    print(f"   {tied_points} points where it can: max |before − after| = {worst_any:.3f} (first occurrence vs "
          f"shared); 'after' outside [least, most favourable tie rule] at {outside} points")
    print("   Monte Carlo points of 'before' (k = 4..60): max |before − after| = "
          f"{max(abs(b['value'] - a['value']) for b, a in zip(before_sub['maj'], after_sub['maj'])):.4f} "
          f"on the curve means over {len(subset)} problems")

    print("2b. after vs brute-force enumeration with shared ties (exact rationals)")
    worst, points = 0.0, 0
    for record in records[:40]:
        samples = record["samples"][:12]
        keys, correct = [s["answer_key"] for s in samples], [s["correct"] for s in samples]
        after = curves([{**record, "samples": samples}], ["maj"], list(range(1, 13)))["maj"]
        for point in after:
            worst = max(worst, abs(point["value"] - float(brute_shared(keys, correct, point["k"]))))
            points += 1
    for record in records[:5]:
        keys = [s["answer_key"] for s in record["samples"]]
        correct = [s["correct"] for s in record["samples"]]
        edge = [1, 2, args.n - 2, args.n - 1, args.n]
        for point in curves([record], ["maj"], edge)["maj"]:
            worst = max(worst, abs(point["value"] - float(brute_shared(keys, correct, point["k"]))))
            points += 1
    print(f"   {points} points (40 pools of 12 samples, every k; 5 pools of {args.n} at k = 1, 2, "
          f"{args.n - 2}..{args.n}): max |after − brute force| = {worst:.1e}")

    print(f"3. committed records {args.records} ({args.arm})")
    _, real = read_archived_records(args.records, f"{args.arm}.records.jsonl")
    n_real = min(len(r["samples"]) for r in real)
    real_ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_real]
    before_real, t_before_real = timed(before_curves, real, ["pass", "maj"], real_ks)
    after_real, t_after_real = timed(curves, real, ["pass", "maj"], real_ks)
    print(f"   {len(real)} problems × n = {n_real}, k = {real_ks}, pass and maj: before {t_before_real:.1f} s, "
          f"after {t_after_real:.2f} s, ratio {t_before_real / t_after_real:.0f}×")
    for b, a in zip(before_real["maj"], after_real["maj"]):
        how = f"± {b['mc_stderr']:.4f} (Monte Carlo)" if b["mc_stderr"] else "(enumerated, ties to the first)"
        print(f"   maj@{b['k']:<3} before {b['value']:.4f} {how:<31} after {a['value']:.4f} (exact, ties shared)")


if __name__ == "__main__":
    main()
