"""One strategy vocabulary: the name a trainer optimises for is the name of the metric evaluation reports for it."""

from math import comb
from types import SimpleNamespace

import pytest
import torch

from cat.operators import BestOfN
from cat.strategies import BON, FORMER_NAMES, MAJ, PASS, TEST_TIME_STRATEGIES
from evaluation.config import STRATEGIES as EVAL_STRATEGIES
from evaluation.metrics import problem_values
from recipes.config import TrainConfig
from trainers import CATGRPOConfig
from trainers.cat_args import GRPO_STRATEGIES, SFT_STRATEGIES, CATSFTArgs
from trainers.sft import CATSFTTrainer

P = [0.02, 0.3, 0.5, 0.77, 0.97]
POOL = 9  # samples per problem in the evaluation pool


def _record(correct: int) -> dict:
    """A problem whose pool holds ``correct`` right answers "a" and the rest one wrong answer "b"."""
    samples = [{"answer_key": "a" if i < correct else "b", "correct": i < correct,
                "scores": {"oracle": float(i < correct)}} for i in range(POOL)]
    return {"id": "q", "samples": samples}


def _expected_metric(strategy: str, k: int, p: float) -> float:
    """E over pools of POOL Bernoulli(p) samples of the metric ``strategy@k``, by enumerating the correct count."""
    return sum(comb(POOL, c) * p**c * (1 - p) ** (POOL - c) * problem_values(_record(c), strategy, k)[0]
               for c in range(POOL + 1))


def _trained_success(strategy: str, n: int, p: float) -> float:
    """f(p) = exp(−ℓ), ℓ the per-sequence loss the SFT trainer minimises for ``cat_strategy=strategy``, ``cat_n=n``."""
    args = CATSFTArgs(cat_strategy=strategy, cat_n=n)
    args.validate_cat_fields()
    loss = CATSFTTrainer.per_sequence_loss(SimpleNamespace(args=args), torch.tensor([p], dtype=torch.float64).log())
    return float(torch.exp(-loss)[0])


def test_every_test_time_strategy_is_a_training_target_and_an_evaluation_metric():
    assert set(TEST_TIME_STRATEGIES) <= set(GRPO_STRATEGIES) and set(TEST_TIME_STRATEGIES) <= set(EVAL_STRATEGIES)
    assert {PASS, MAJ} <= set(SFT_STRATEGIES)  # best-of-N SFT is pass@N SFT on the best target
    current = {*GRPO_STRATEGIES, *SFT_STRATEGIES, *EVAL_STRATEGIES}
    assert not set(FORMER_NAMES) & current and set(FORMER_NAMES.values()) == set(TEST_TIME_STRATEGIES)


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_training_for_pass_maximises_the_reported_pass_at_k(k):
    for p in P:
        assert _trained_success(PASS, k, p) == pytest.approx(_expected_metric(PASS, k, p), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
def test_training_for_maj_maximises_the_reported_maj_at_k_for_two_answers_and_odd_k(k):
    # with one wrong answer and odd k the plurality of a k-subset is right iff more than k/2 of it is,
    # which is the surrogate P[Bin(k, p) >= floor(k/2) + 1] that training uses by default
    for p in P:
        assert _trained_success(MAJ, k, p) == pytest.approx(_expected_metric(MAJ, k, p), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_bon_under_a_verifier_scorer_is_the_operator_that_training_for_bon_uses(k):
    for p in P:
        expected = float(BestOfN(k).success_probability(torch.tensor(p, dtype=torch.float64)))
        assert expected == pytest.approx(_expected_metric(BON, k, p), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("former, current", sorted(FORMER_NAMES.items()))
def test_a_former_name_is_read_as_the_current_one_with_a_warning_naming_the_field(former, current):
    with pytest.warns(FutureWarning, match=f"train.cat_strategy='{former}' is now '{current}'") as caught:
        config = TrainConfig(algorithm="grpo", cat_strategy=former, cat_n=4, cat_weight_form="raw")
    assert config.cat_strategy == current and len([w for w in caught if w.category is FutureWarning]) == 1
    with pytest.warns(FutureWarning, match=f"^cat_strategy='{former}' is now '{current}'"):
        trl_config = CATGRPOConfig(output_dir="/tmp/unused", cat_strategy=former, cat_n=4, cat_weight_form="raw",
                                   num_generations=4, per_device_train_batch_size=8, use_cpu=True, report_to="none")
    assert trl_config.cat_strategy == current


def test_an_unknown_strategy_is_one_line_naming_the_field_and_the_value():
    with pytest.raises(ValueError, match=r"^train.cat_strategy must be one of \(.*'pass'.*\), got 'pass@n'$"):
        TrainConfig(algorithm="grpo", cat_strategy="pass@n", cat_n=4)
