"""cat.operators: each strategy object agrees with the closed forms and with its evaluation estimator."""

import itertools

import pytest
import torch

from cat import BestOfN, MajorityVote, PassAtN
from cat import estimators as est
from cat import objectives as obj

P = torch.linspace(0, 1, 41, dtype=torch.float64)


def test_pass_at_n_bundles_the_pass_at_n_forms():
    op = PassAtN(8)
    assert torch.equal(op.success_probability(P), obj.passn_probability(P, 8))
    assert torch.equal(op.rl_weight(P, "raw"), obj.passn_rl_weight(P, 8))
    assert torch.equal(op.rl_weight(P, "log"), obj.passn_sft_weight(P, 8))
    assert torch.equal(op.sft_weight(P), obj.passn_sft_weight(P, 8))
    log_p = torch.tensor([-3.0, -0.2], dtype=torch.float64)
    assert torch.equal(op.sft_loss(log_p, "none"), obj.passn_sft_loss(log_p, 8, "none"))
    assert op.metric([16, 16], [0, 16]).tolist() == [0.0, 1.0]


def test_pass_at_n_metric_is_the_subset_success_rate():
    correct = [1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    subsets = list(itertools.combinations(range(10), 4))
    brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
    assert float(PassAtN(4).metric(10, 2)) == pytest.approx(brute, rel=1e-12)


def test_majority_vote_thresholds():
    assert MajorityVote(8).threshold == 5 and MajorityVote(8, 3).threshold == 3
    op = MajorityVote(8, 3)
    assert torch.equal(op.rl_weight(P), obj.majority_rl_weight(P, 8, 3))
    assert torch.equal(op.rl_weight(P, "log"), obj.majority_sft_weight(P, 8, 3))
    assert torch.equal(op.rl_weight(P, k=2), obj.majority_rl_weight(P, 8, 2))  # a per-prompt dynamic k
    assert torch.equal(MajorityVote(8).success_probability(P), obj.majority_probability(P, 8, 5))
    keys, correct = ["a", "b", "a", "c"], [True, False, True, False]
    assert MajorityVote(3).metric(keys, correct) == est.majority_at_k(keys, correct, 3)


def test_majority_vote_metric_is_the_plurality_vote_whatever_the_training_threshold():
    """k only shapes the training surrogate; maj@N is the plurality vote over N samples (brute force here)."""
    keys, correct = ["a", "b", "b", "a", "c"], [True, False, False, True, False]
    subsets = list(itertools.combinations(range(5), 3))
    wins = 0.0
    for s in subsets:
        votes = [keys[i] for i in s]
        top = max(votes.count(v) for v in votes)
        tied = {v for v in votes if votes.count(v) == top}  # ties shared equally among the tied answers
        wins += sum(correct[keys.index(v)] for v in tied) / len(tied)
    for k in (None, 1, 2, 3):
        assert MajorityVote(3, k).metric(keys, correct).value == pytest.approx(wins / len(subsets), abs=1e-15)


def test_best_of_n_uses_rank_weights_and_refuses_the_log_form():
    op = BestOfN(4)
    assert torch.equal(op.rl_weight(P), obj.best_of_n_rl_weight(P, 4))
    with pytest.raises(ValueError, match="form='log' is undefined for best-of-N"):
        op.rl_weight(P, "log")
    assert op.metric([0.0, 3.0, 1.0, 2.0, 5.0]) == pytest.approx(est.best_of_k_expected([0.0, 3.0, 1.0, 2.0, 5.0], 4))
    assert torch.equal(op.sft_weight(P), obj.passn_sft_weight(P, 4))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PassAtN(0), r"n must be a positive int, got 0"),
        (lambda: MajorityVote(4, 5), r"k must satisfy 1 <= k <= n=4, got k=5"),
        (lambda: BestOfN("8"), r"n must be a positive int, got '8'"),
        (lambda: PassAtN(4).rl_weight(0.5, "exp"), r"form must be one of .* got 'exp'"),
    ],
)
def test_operator_validation(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
