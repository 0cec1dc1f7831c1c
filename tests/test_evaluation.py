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

from cat.estimators import majority_at_k
from pot.evaluation import (best_of_k_selected, bootstrap_ci, curves, paired_bootstrap, problem_values,
                            unparsed_counts, weighted_majority_at_k)
from pot.records import RecordsFile, read_records
from pot.scorers import vote_weights


def make_record(pid, keys, correct, scores, tokens=None):
    tokens = tokens or [10] * len(keys)
    return {"id": pid, "prompt_tokens": 7, "wall_time": 2.0, "samples": [
        {"text": "", "num_tokens": t, "answer_key": key, "correct": c, "finished": True, "scores": {"sc": s}}
        for key, c, s, t in zip(keys, correct, scores, tokens)]}


def brute(record, strategy, k):
    """Average over every size-k subset (in sample order) of the strategy's success on that subset."""
    samples = record["samples"]
    outcomes = []
    for subset in itertools.combinations(samples, k):
        if strategy == "pass":
            outcomes.append(any(s["correct"] for s in subset))
        elif strategy == "avg":
            outcomes.append(mean(s["correct"] for s in subset))
        elif strategy == "bon":
            top = max(s["scores"]["sc"] for s in subset)
            outcomes.append(next(s for s in subset if s["scores"]["sc"] == top)["correct"])
        else:  # plurality over parsed answers, ties to the first occurring, all-unparsed = wrong
            votes = Counter(s["answer_key"] for s in subset if s["answer_key"] is not None)
            if not votes:
                outcomes.append(False)
                continue
            best = max(votes.values())
            outcomes.append(next(s for s in subset if s["answer_key"] is not None
                                 and votes[s["answer_key"]] == best)["correct"])
    return mean(outcomes)


def brute_weighted_vote(keys, correct, weights, k):
    """Exact (Fraction) weighted vote over every size-k subset; ties to the answer occurring first."""
    hits = []
    for subset in itertools.combinations(range(len(keys)), k):
        totals = defaultdict(Fraction)
        for i in subset:
            if keys[i] is not None:
                totals[keys[i]] += Fraction(weights[i])
        if not totals:
            hits.append(Fraction(0))
            continue
        top = max(totals.values())
        winner = next(i for i in subset if keys[i] is not None and totals[keys[i]] == top)
        hits.append(Fraction(int(correct[winner])))
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
        assert problem_values(record, strategy, k, "sc")[0] == pytest.approx(brute(record, strategy, k), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 2), st.booleans()), min_size=1, max_size=8), st.data())
def test_best_of_k_with_ties_matches_brute_force(pairs, data):
    k = data.draw(st.integers(1, len(pairs)))
    record = make_record("x", ["1"] * len(pairs), [c for _, c in pairs], [float(s) for s, _ in pairs])
    assert best_of_k_selected([float(s) for s, _ in pairs], [c for _, c in pairs], k) == pytest.approx(
        brute(record, "bon", k), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3", None]), st.integers(0, 3)), min_size=1, max_size=8),
       st.data())
def test_weighted_majority_matches_brute_force(votes, data):
    keys = [key for key, _ in votes]
    weights = [w / 2 for _, w in votes]  # halves: float sums are exact, so ties are real ties
    correct = [key == "2" for key in keys]
    k = data.draw(st.integers(1, len(votes)))
    estimate = weighted_majority_at_k(keys, correct, weights, k)
    assert estimate.exact and estimate.stderr == 0
    assert estimate.value == pytest.approx(float(brute_weighted_vote(keys, correct, weights, k)), abs=1e-12)
    equal = weighted_majority_at_k(keys, correct, [1.0] * len(keys), k)
    assert equal.value == pytest.approx(majority_at_k(keys, correct, k).value, abs=1e-12)  # equal weights = maj


def test_weighted_majority_monte_carlo_within_its_error():
    keys = ["1", "2", "2", None, "3", "1", "2", "3", "1", "4"]
    correct = [key == "1" for key in keys]
    weights = [2.0, 0.5, 0.7, 9.0, 1.0, 0.2, 0.6, 1.1, 0.4, 3.0]
    exact = weighted_majority_at_k(keys, correct, weights, 5)
    mc = weighted_majority_at_k(keys, correct, weights, 5, samples=20000, seed=1, exact_limit=0)
    assert not mc.exact and 0 < mc.stderr < 0.01
    assert abs(mc.value - exact.value) < 4 * mc.stderr
    assert mc == weighted_majority_at_k(keys, correct, weights, 5, samples=20000, seed=1, exact_limit=0)


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
    with pytest.raises(ValueError, match="weights must be finite and >= 0, got -1.0"):
        weighted_majority_at_k(["1", "2"], [True, False], [1.0, -1.0], 1)
    with pytest.raises(ValueError, match="k=3"):
        weighted_majority_at_k(["1", "2"], [True, False], [1.0, 1.0], 3)
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
