"""Metrics against brute-force subset enumeration, bootstrap coverage, records and resume bookkeeping."""

import itertools
import json
import math
import random
from collections import Counter, defaultdict
from fractions import Fraction
from statistics import mean

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cat.estimators import best_of_k_expected, majority_at_k
from evaluation.metrics import (bootstrap_ci, curves, finished_rate, paired_bootstrap, problem_values,
                                unparsed_counts, vote_weights)
from evaluation.records import RecordsFile, read_records


def make_record(pid, keys, correct, scores, tokens=None):
    tokens = tokens or [10] * len(keys)
    return {"id": pid, "prompt_tokens": 7, "wall_time": 2.0, "samples": [
        {"text": "", "num_tokens": t, "answer_key": key, "correct": c, "finished": True, "scores": {"sc": s}}
        for key, c, s, t in zip(keys, correct, scores, tokens)]}


def brute(record, strategy, k):
    """Exact mean over every size-k subset of the strategy's success on that subset (ties shared equally)."""
    samples = record["samples"]
    outcomes = []
    for subset in itertools.combinations(samples, k):
        if strategy == "pass":
            outcomes.append(Fraction(any(s["correct"] for s in subset)))
        elif strategy == "avg":
            outcomes.append(Fraction(sum(s["correct"] for s in subset), k))
        elif strategy == "bon":
            top = max(s["scores"]["sc"] for s in subset)
            tied = [s["correct"] for s in subset if s["scores"]["sc"] == top]
            outcomes.append(Fraction(sum(tied), len(tied)))
        else:  # plurality over parsed answers, ties shared, all-unparsed = wrong
            votes = Counter(s["answer_key"] for s in subset if s["answer_key"] is not None)
            if not votes:
                outcomes.append(Fraction(0))
                continue
            tied = [key for key, v in votes.items() if v == max(votes.values())]
            right = {s["answer_key"] for s in samples if s["correct"]}
            outcomes.append(Fraction(sum(key in right for key in tied), len(tied)))
    return sum(outcomes) / len(outcomes)


def brute_weighted_vote(keys, correct, weights, k):
    """Exact (Fraction) weighted vote over every size-k subset; the heaviest answers share the win."""
    hits = []
    for subset in itertools.combinations(range(len(keys)), k):
        totals = defaultdict(Fraction)
        for i in subset:
            if keys[i] is not None:
                totals[keys[i]] += Fraction(weights[i])
        if not totals:
            hits.append(Fraction(0))
            continue
        tied = [key for key, total in totals.items() if total == max(totals.values())]
        right = {key for key, c in zip(keys, correct) if c}
        hits.append(Fraction(sum(key in right for key in tied), len(tied)))
    return sum(hits) / len(hits)


RECORDS = [
    make_record("a", ["3", "3", "5", None, "5", "5"], [True, True, False, False, False, False],
                [0.1, 0.9, 0.9, 0.3, -1.0, 0.2]),
    make_record("b", ["1", None, "2", "1", "4", "1"], [False, False, True, False, False, False],
                [0.5, 0.5, 0.4, 0.5, 0.0, 0.5]),
    make_record("c", [None] * 6, [False] * 6, [0.0] * 6),
]


@pytest.mark.parametrize("strategy", ["pass", "maj", "avg", "bon"])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_metrics_match_brute_force(strategy, k):
    for record in RECORDS:
        assert problem_values(record, strategy, k, "sc")[0] == pytest.approx(float(brute(record, strategy, k)),
                                                                           rel=1e-15, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 2), st.booleans()), min_size=1, max_size=8), st.data())
def test_best_of_k_with_ties_matches_brute_force(pairs, data):
    k = data.draw(st.integers(1, len(pairs)))
    record = make_record("x", ["1"] * len(pairs), [c for _, c in pairs], [float(s) for s, _ in pairs])
    assert best_of_k_expected([float(s) for s, _ in pairs], k, outcomes=[c for _, c in pairs]) == float(
        brute(record, "bon", k))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3", None]), st.integers(0, 3)), min_size=1, max_size=8),
       st.data())
def test_weighted_majority_matches_brute_force(votes, data):
    keys = [key for key, _ in votes]
    weights = [w / 2 for _, w in votes]  # halves: float sums are exact, so ties are real ties
    correct = [key == "2" for key in keys]
    k = data.draw(st.integers(1, len(votes)))
    estimate = majority_at_k(keys, correct, k, weights=weights)
    assert estimate.exact and estimate.stderr == 0
    assert estimate.value == float(brute_weighted_vote(keys, correct, weights, k))
    equal = majority_at_k(keys, correct, k, weights=[1.0] * len(keys))
    assert equal.value == pytest.approx(majority_at_k(keys, correct, k).value, abs=1e-12)  # equal weights = maj


def test_weighted_majority_monte_carlo_within_its_error():
    keys = ["1", "2", "2", None, "3", "1", "2", "3", "1", "4"]
    correct = [key == "1" for key in keys]
    weights = [2.0, 0.5, 0.7, 9.0, 1.0, 0.2, 0.6, 1.1, 0.4, 3.0]
    exact = majority_at_k(keys, correct, 5, weights=weights)
    mc = majority_at_k(keys, correct, 5, samples=20000, seed=1, method="monte_carlo", weights=weights)
    assert exact.exact and not mc.exact and 0 < mc.stderr < 0.01
    assert abs(mc.value - exact.value) < 4 * mc.stderr
    assert mc == majority_at_k(keys, correct, 5, samples=20000, seed=1, method="monte_carlo", weights=weights)
    enumerated = majority_at_k(keys, correct, 5, method="enumerate", weights=weights)
    assert enumerated == exact


@pytest.mark.parametrize("scorer, transform", [
    ("mean_logprob", math.exp),
    ("reward_model:rm", lambda x: float(torch.sigmoid(torch.tensor(x, dtype=torch.float64)))),
    ("oracle", lambda x: x), ("self_certainty", lambda x: x)])
def test_wmaj_strategy_uses_vote_weights_of_the_scorer(scorer, transform):
    scores = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0] if scorer == "oracle" else [0.3, 2.5, 0.05, 1.0, 0.7, 0.1]
    if scorer == "mean_logprob":
        scores = [-s for s in scores]
    keys, correct = ["7", "8", "7", None, "9", "8"], [False, True, False, False, False, True]
    record = {"samples": [{"answer_key": key, "correct": c, "scores": {scorer: s}}
                          for key, c, s in zip(keys, correct, scores)]}
    weights = [transform(s) for s in scores]
    assert vote_weights(scorer, scores) == pytest.approx(weights, rel=1e-12)
    for k in range(1, 7):
        expected = float(brute_weighted_vote(keys, correct, [Fraction(w) for w in weights], k))
        assert problem_values(record, "wmaj", k, scorer)[0] == pytest.approx(expected, abs=1e-12)


def test_bad_weighted_vote_inputs():
    with pytest.raises(ValueError, match="weights must be finite and >= 0, got -1.0 at index 1"):
        majority_at_k(["1", "2"], [True, False], 1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="k=3"):
        majority_at_k(["1", "2"], [True, False], 3, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="finite 'self_certainty' scores, got nan"):
        vote_weights("self_certainty", [0.1, float("nan")])


def test_curves_points_compute_and_unparsed():
    tokens = [[5, 6, 7, 8, 9, 10], [1] * 6, [2] * 6]
    records = [make_record(r["id"], [s["answer_key"] for s in r["samples"]], [s["correct"] for s in r["samples"]],
                           [s["scores"]["sc"] for s in r["samples"]], t) for r, t in zip(RECORDS, tokens)]
    out = curves(records, ["pass", "maj"], [1, 3, 6], scorer="sc", num_parameters=100)
    pass6 = out["pass"][-1]
    assert pass6["value"] == pytest.approx((1 + 1 + 0) / 3)
    assert pass6["generated_tokens"] == pytest.approx(45 + 6 + 12)
    assert pass6["forward_tokens"] == pytest.approx(45 + 6 + 12 + 3 * 7)
    assert pass6["flops"] == pytest.approx(2 * 100 * (63 + 21))
    assert out["pass"][0]["generated_tokens"] == pytest.approx((45 + 6 + 12) / 6)
    assert out["maj"][1]["wall_time"] == pytest.approx(3 * 2.0 * 3 / 6)
    assert all(p["ci_low"] <= p["value"] <= p["ci_high"] for p in out["pass"])
    assert unparsed_counts(records, ["pass"]) == {"pass": 1 + 1 + 6}
    records[0]["pot"] = {"0": [{"answer_key": None}, {"answer_key": "3"}], "2": [{"answer_key": "3"}] * 2}
    records[1]["pot"] = {"0": [{"answer_key": None}] * 2, "2": [{"answer_key": None}, {"answer_key": "4"}]}
    assert unparsed_counts(records[:2], ["maj", "pot@0", "pot@2"]) == {"maj": 1 + 1, "pot@0": 3, "pot@2": 1}


def test_curve_cis_share_one_resampling_and_equal_the_per_point_bootstrap():
    rng = random.Random(5)
    records = [make_record(f"p{i}", [rng.choice(["1", "2", None]) for _ in range(6)],
                           [rng.random() < 0.4 for _ in range(6)], [rng.random() for _ in range(6)]) for i in range(40)]
    out = curves(records, ["pass", "maj", "bon", "avg"], [1, 2, 4, 6], scorer="sc", seed=3)
    for strategy, points in out.items():
        for point in points:
            values = [problem_values(r, strategy, point["k"], "sc")[0] for r in records]
            assert point["value"] == pytest.approx(mean(values), rel=1e-14)
            low, high = bootstrap_ci(values, seed=3)
            assert (point["ci_low"], point["ci_high"]) == pytest.approx((low, high), rel=1e-12, abs=1e-15)
    # pass@1 = avg@1 on every problem: resampled with the same draws, their intervals are identical
    assert (out["pass"][0]["ci_low"], out["pass"][0]["ci_high"]) == pytest.approx(
        (out["avg"][0]["ci_low"], out["avg"][0]["ci_high"]), abs=1e-15)


def test_bootstrap_ci_equals_resampling_by_index():
    """The counts-matrix bootstrap against the direct form: means of v[idx] over seeded index draws."""
    values = torch.tensor([random.Random(1).random() for _ in range(57)], dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, 57, (2000, 57), generator=g)
    means = values[idx].mean(-1)
    expected = (float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975)))
    assert bootstrap_ci(values, seed=9) == pytest.approx(expected, rel=1e-12)


def test_finished_rate_counts_every_sample():
    records = [make_record("a", ["1", "2"], [True, False], [0.0, 0.0]),
               make_record("b", ["1", None, "3"], [True, False, False], [0.0] * 3)]
    records[1]["samples"][1]["finished"] = False
    records[1]["samples"][2]["finished"] = False
    assert finished_rate(records) == pytest.approx(3 / 5)


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="k=7"):
        curves(RECORDS, ["pass"], [1, 7])
    with pytest.raises(ValueError, match="'mean'"):
        curves(RECORDS, ["mean"], [1])
    with pytest.raises(ValueError, match="0 records"):
        curves([], ["pass"], [1])


def test_bootstrap_ci_covers_truth_in_seeded_simulation():
    rng = random.Random(0)
    truth, hits, trials = 0.3, 0, 1000
    for trial in range(trials):
        values = [float(rng.random() < truth) for _ in range(100)]
        low, high = bootstrap_ci(values, resamples=1000, seed=trial)
        hits += low <= truth <= high
    assert 0.93 <= hits / trials <= 0.97  # binomial sd ≈ 0.007 around 0.95; a 90% CI lands near 0.92


def test_paired_bootstrap_detects_real_difference_only():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(300, generator=g) < 0.5).double()
    noise = a.clone()
    flip = torch.randperm(300, generator=g)[:6]
    noise[flip] = 1 - noise[flip]
    better = torch.where(torch.rand(300, generator=g) < 0.3, torch.ones_like(a), a)
    assert paired_bootstrap(a, noise).within_noise
    result = paired_bootstrap(a, better)
    assert not result.within_noise and result.difference == pytest.approx(float((better - a).mean()))
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap(a, better[:5])


def test_records_resume_config_check_and_torn_line(tmp_path):
    path = tmp_path / "records.jsonl"
    records = RecordsFile(path, {"n": 4, "seed": 0})
    records.add(RECORDS[0])
    records.add(RECORDS[1])
    with path.open("a") as f:
        f.write('{"id": "c", "samp')  # a kill in the middle of a write
    resumed = RecordsFile(path, {"n": 4, "seed": 0})
    assert sorted(resumed.done) == ["a", "b"]
    resumed.add(RECORDS[2])
    config, stored = read_records(path)
    assert config == {"n": 4, "seed": 0} and [r["id"] for r in stored] == ["a", "b", "c"]
    assert stored[0] == json.loads(json.dumps(RECORDS[0]))
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['seed'\]\)"):
        RecordsFile(path, {"n": 4, "seed": 1})
