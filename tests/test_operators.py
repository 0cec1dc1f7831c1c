"""cat.operators: each strategy object agrees with the closed forms of cat.objectives."""

import pytest
import torch

from cat import BestOfN, MajorityVote, PassAtN
from cat import objectives as obj

P = torch.linspace(0, 1, 41, dtype=torch.float64)


def test_pass_at_n_bundles_the_pass_at_n_forms():
    op = PassAtN(8)
    assert torch.equal(op.success_probability(P), obj.passn_probability(P, 8))
    assert torch.equal(op.rl_weight(P), obj.passn_rl_weight(P, 8))
    assert torch.equal(op.log_rl_weight(P), obj.passn_sft_weight(P, 8))
    assert torch.equal(op.sft_weight(P), obj.passn_sft_weight(P, 8))
    log_p = torch.tensor([-3.0, -0.2], dtype=torch.float64)
    assert torch.equal(op.sft_loss(log_p, "none"), obj.passn_sft_loss(log_p, 8, "none"))


def test_log_rl_weight_is_the_derivative_of_log_f_in_log_p():
    log_p = torch.linspace(-6, -0.01, 25, dtype=torch.float64, requires_grad=True)
    for op in (PassAtN(8), MajorityVote(8, 3)):
        op.success_probability(log_p.exp()).log().sum().backward()
        assert torch.allclose(log_p.grad, op.log_rl_weight(log_p.detach().exp()), rtol=1e-9, atol=1e-12)
        log_p.grad = None


def test_majority_vote_thresholds():
    assert MajorityVote(8).threshold == 5 and MajorityVote(8, 3).threshold == 3
    op = MajorityVote(8, 3)
    assert torch.equal(op.rl_weight(P), obj.majority_rl_weight(P, 8, 3))
    assert torch.equal(op.log_rl_weight(P), obj.majority_sft_weight(P, 8, 3))
    assert torch.equal(op.rl_weight(P, k=2), obj.majority_rl_weight(P, 8, 2))  # a per-prompt dynamic k
    assert torch.equal(MajorityVote(8).success_probability(P), obj.majority_probability(P, 8, 5))


def test_best_of_n_uses_rank_weights_and_refuses_the_log_form():
    op = BestOfN(4)
    assert torch.equal(op.rl_weight(P), obj.best_of_n_rl_weight(P, 4))
    with pytest.raises(ValueError, match="log form is undefined for best-of-N"):
        op.log_rl_weight(P)
    assert torch.equal(op.sft_weight(P), obj.passn_sft_weight(P, 4))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PassAtN(0), r"n must be a positive int, got 0"),
        (lambda: MajorityVote(4, 5), r"k must satisfy 1 <= k <= n=4, got k=5"),
        (lambda: BestOfN("8"), r"n must be a positive int, got '8'"),
    ],
)
def test_operator_validation(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
