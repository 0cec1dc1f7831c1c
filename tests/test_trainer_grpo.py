"""CAT-GRPO: weights on hand-built groups against exact rational references, then the trainer end to end."""

import copy
import math
from fractions import Fraction
from itertools import combinations, product
from math import comb

import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from cat.estimators import RewardHistory, passk_training_advantage, pkpo_sloo_minus_one
from core.tiny_llama import tiny_llama
from trainers import CATGRPOConfig, CATGRPOTrainer
from trainers.cat_weights import compute_cat_weights


def _passn_raw(p: Fraction, n: int) -> Fraction:
    return n * (1 - p) ** (n - 1)  # d/dp [1 − (1−p)^n]


def _passn_log(p: Fraction, n: int) -> Fraction:
    return p * _passn_raw(p, n) / (1 - (1 - p) ** n)


def _majority_f(p: Fraction, n: int, k: int) -> Fraction:
    # brute-force enumeration of all 2^n vote outcomes
    return sum(
        p ** sum(votes) * (1 - p) ** (n - sum(votes)) for votes in product((0, 1), repeat=n) if sum(votes) >= k
    )


def _majority_raw(p: Fraction, n: int, k: int) -> Fraction:
    return n * comb(n - 1, k - 1) * p ** (k - 1) * (1 - p) ** (n - k)


def _mean_one(values):
    mean = sum(values) / len(values)
    return [float(v / mean) for v in values]


GROUPS = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)  # 1/4 and 3/4 correct


@pytest.mark.parametrize("n", [4, 16])
@pytest.mark.parametrize("form", ["raw", "log"])
def test_passn_weights_match_exact_rationals(n, form):
    ps = [Fraction(1, 4), Fraction(3, 4)]
    reference = _mean_one([(_passn_raw if form == "raw" else _passn_log)(p, n) for p in ps])
    out = compute_cat_weights("pass", GROUPS, n=n, form=form, p_estimator="empirical")
    expected = torch.tensor(reference, dtype=torch.float64).unsqueeze(1).expand(2, 4)
    torch.testing.assert_close(out.weights, expected, rtol=1e-12, atol=1e-12)
    assert out.weights[0, 0] > out.weights[1, 0]  # the harder prompt gets more weight


def test_passn_n1_is_uniform():
    out = compute_cat_weights("pass", GROUPS, n=1, form="raw", p_estimator="empirical")
    torch.testing.assert_close(out.weights, torch.ones(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("form", ["raw", "log"])
def test_majority_laplace_fixed_k(form):
    n, k = 5, 3
    ps = [Fraction(2, 6), Fraction(4, 6)]  # Laplace (c+1)/(m+2)
    raw = [_majority_raw(p, n, k) for p in ps]
    values = raw if form == "raw" else [p * w / _majority_f(p, n, k) for p, w in zip(ps, raw)]
    out = compute_cat_weights("maj", GROUPS, n=n, k=k, form=form, p_estimator="laplace")
    torch.testing.assert_close(out.weights[:, 0], torch.tensor(_mean_one(values), dtype=torch.float64))
    assert out.k.tolist() == [3, 3]


def test_majority_dynamic_k_per_prompt():
    keys = [["a", "b", "b", "c"], ["a", "a", "a", "d"]]
    out = compute_cat_weights("maj", GROUPS, n=4, k="dynamic", form="raw", answer_keys=keys)
    # largest wrong cluster: 2 of 4 → k = min(3, ⌊4·2/4⌋+1) = 3; 1 of 4 → k = max(2, ⌊4·1/4⌋+1) = 2
    assert out.k.tolist() == [3, 2]
    ps = [Fraction(2, 6), Fraction(4, 6)]
    reference = _mean_one([_majority_raw(ps[0], 4, 3), _majority_raw(ps[1], 4, 2)])
    torch.testing.assert_close(out.weights[:, 0], torch.tensor(reference, dtype=torch.float64))


def test_best_of_n_within_prompt_quantiles_with_ties():
    rewards = torch.tensor([[0.5, 0.5, 0.1, 0.9], [1.0, 1.0, 1.0, 1.0]])
    n = 4
    # q = (#strictly smaller + 1)/(m + 1): ties share q
    qs = [[Fraction(2, 5), Fraction(2, 5), Fraction(1, 5), Fraction(4, 5)], [Fraction(1, 5)] * 4]
    raw = [n * q ** (n - 1) for row in qs for q in row]
    out = compute_cat_weights("bon", GROUPS, n=n, rewards=rewards)
    torch.testing.assert_close(out.weights.flatten(), torch.tensor(_mean_one(raw), dtype=torch.float64))


def test_best_of_n_history_quantiles_do_not_mutate_history():
    history = RewardHistory(capacity=8)
    history.append(torch.tensor([0.0, 0.2, 0.4, 0.6]))
    rewards = torch.tensor([[0.1, 0.5, 0.7, 0.3], [0.0, 0.0, 0.9, 0.9]])
    # q = (#{h < r} + 1)/(|H| + 2)
    counts = [[1, 3, 4, 2], [0, 0, 4, 4]]
    raw = [3 * Fraction(c + 1, 6) ** 2 for row in counts for c in row]
    out = compute_cat_weights("bon", GROUPS, n=3, rewards=rewards, history=history)
    torch.testing.assert_close(out.weights.flatten(), torch.tensor(_mean_one(raw), dtype=torch.float64))
    assert len(history) == 4


def test_sequence_estimator_gives_per_sample_weights():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.5], [0.9, 0.1, 0.2, 0.3]], dtype=torch.float64))
    n = 2
    ps = [Fraction(1, 2), Fraction(1, 4), Fraction(1, 8), Fraction(1, 2), Fraction(9, 10), Fraction(1, 10),
          Fraction(1, 5), Fraction(3, 10)]
    out = compute_cat_weights("pass", GROUPS, n=n, form="raw", p_estimator="sequence", logp_sum=logp)
    reference = _mean_one([_passn_raw(p, n) for p in ps])
    torch.testing.assert_close(out.weights.flatten(), torch.tensor(reference, dtype=torch.float64))


def test_best_of_n_weights_count_only_scored_rollouts_left_in_the_loss():
    rewards = torch.tensor([[0.5, math.nan, 0.1, 0.9], [1.0, 0.0, 0.3, 0.2]], dtype=torch.float64)
    scored = ~rewards.isnan()
    trainable = torch.tensor([[True, True, True, False], [True, True, True, True]])  # one truncated rollout
    out = compute_cat_weights("bon", GROUPS, n=3, rewards=rewards, scored=scored, trainable=trainable)
    # q among each prompt's scored rollouts: (2/4, −, 1/4, 3/4) and (4/5, 1/5, 3/5, 2/5); w = 3q², mean 1 over the 6
    # rollouts that are scored and in the loss, 0 for the other two (the truncated one still ranks the others)
    qs = [Fraction(2, 4), Fraction(1, 4), Fraction(4, 5), Fraction(1, 5), Fraction(3, 5), Fraction(2, 5)]
    w = _mean_one([3 * q**2 for q in qs])
    expected = torch.tensor([[w[0], 0.0, w[1], 0.0], w[2:]], dtype=torch.float64)
    torch.testing.assert_close(out.weights, expected, rtol=1e-12, atol=1e-12)
    assert out.counted.sum() == 6


def test_clip_caps_before_normalising():
    out = compute_cat_weights("pass", GROUPS, n=4, form="raw", p_estimator="empirical", clip=1.0)
    # raw 4·(3/4)^3 = 1.6875 → 1.0; 4·(1/4)^3 = 0.0625
    torch.testing.assert_close(out.weights[:, 0], torch.tensor(_mean_one([Fraction(1), Fraction(1, 16)]), dtype=torch.float64))
    # alignment: cosine of the clipped training weights (1, 1/16) with the test weights f′ = (27/16, 1/16)
    train, test = [1, 1 / 16], [27 / 16, 1 / 16]
    cosine = sum(a * b for a, b in zip(train, test)) / math.sqrt(sum(a * a for a in train) * sum(b * b for b in test))
    assert out.alignment == pytest.approx(cosine, rel=1e-12) and out.alignment < 1


def test_all_zero_weights_stay_zero():
    solved = torch.ones(2, 4, dtype=torch.float64)
    out = compute_cat_weights("pass", solved, n=4, form="raw", p_estimator="empirical")
    torch.testing.assert_close(out.weights, torch.zeros(2, 4, dtype=torch.float64))
    assert out.alignment is None  # both weight curves vanish: the cosine is undefined, not 0 or 1


def test_unnormalised_weights_are_raw():
    out = compute_cat_weights("pass", GROUPS, n=4, form="raw", p_estimator="empirical", normalize=False)
    torch.testing.assert_close(out.weights[:, 0], torch.tensor([1.6875, 0.0625], dtype=torch.float64))


@pytest.mark.parametrize("field", ["logp_sum", "rewards"])
def test_non_finite_input_names_the_prompt(field):
    bad = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, float("nan"), 0.0, 0.0]], dtype=torch.float64)
    strategy = "pass" if field == "logp_sum" else "bon"
    with pytest.raises(ValueError, match=f"{field} .*prompt 'two'"):
        compute_cat_weights(strategy, GROUPS, n=2, p_estimator="sequence", prompts=["one", "two"], **{field: bad})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "pass_at"}, "strategy"),
        ({"strategy": "bon"}, "rewards"),
        ({"strategy": "maj", "k": "dynamic", "n": 4}, "answer_keys"),
        ({"strategy": "pass", "p_estimator": "sequence"}, "p_estimator"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    strategy = kwargs.pop("strategy")
    with pytest.raises(ValueError, match=match):
        compute_cat_weights(strategy, GROUPS, **kwargs)


# ------------------------------------------------------------------------------------------ the trainer end to end

def _contains_a(completions, **kwargs):
    return [1.0 if "a" in c else 0.0 for c in completions]


def _first_chars(completions):
    return [c[:1] or None for c in completions]


def _dataset():
    return Dataset.from_dict({"prompt": ["ab", "ba", "aa", "bb"]})


def _common(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        dataloader_pin_memory=False,
        logging_steps=1,
        seed=0,
        save_strategy="no",
        temperature=1.0,
    )
    base.update(overrides)
    return base


class _GradSnapshot(TrainerCallback):
    def __init__(self, model):
        self.model, self.grads = model, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None})


def _train(trainer_cls, config, reward_funcs=_contains_a, **kwargs):
    model, tokenizer = tiny_llama()
    snapshot = _GradSnapshot(model)
    trainer = trainer_cls(
        model=model, reward_funcs=reward_funcs, args=config, train_dataset=_dataset(), processing_class=tokenizer,
        callbacks=[snapshot], **kwargs,
    )
    trainer.train()
    return trainer, snapshot.grads


@pytest.mark.parametrize("cat", [{"cat_strategy": "none"}, {"cat_strategy": "pass", "cat_n": 1}])
def test_identity_with_plain_grpo(tmp_path, cat):
    # rewards with spread in both groups, so the advantages and the gradient are not zero
    rewards = _fixed_rewards(HAND_BUILT)
    plain, plain_grads = _train(GRPOTrainer, GRPOConfig(**_common(tmp_path / "a")), reward_funcs=rewards)
    ours, our_grads = _train(CATGRPOTrainer, CATGRPOConfig(**_common(tmp_path / "b"), **cat), reward_funcs=rewards)
    assert plain.state.log_history[0]["loss"] == ours.state.log_history[0]["loss"] != 0
    assert plain_grads[0].keys() == our_grads[0].keys() and plain_grads[0]
    assert any(bool(grad.abs().max() > 1e-4) for grad in plain_grads[0].values())
    for name, grad in plain_grads[0].items():
        torch.testing.assert_close(our_grads[0][name], grad, rtol=0, atol=0)


def test_passn_weights_scale_advantages_and_are_logged(tmp_path):
    config = CATGRPOConfig(**_common(tmp_path), cat_strategy="maj", cat_n=4, cat_k="dynamic", cat_weight_form="raw")
    trainer, grads = _train(CATGRPOTrainer, config, answer_keys_fn=_first_chars)
    logs = trainer.state.log_history[0]
    for key in ("cat/weight_mean", "cat/weight_max", "cat/weight_frac_zero", "cat/p_hat_mean",
                "cat/effective_sample_size", "cat/k_mean", "cat/raw_reward_mean"):
        assert key in logs, key
    assert logs["cat/weight_mean"] == pytest.approx(1.0)  # normalised to mean 1 over prompts
    assert 0 < logs["cat/effective_sample_size"] <= 1
    assert 2 <= logs["cat/k_mean"] <= 3
    assert all(torch.isfinite(g).all() for g in grads[0].values())


def test_advantages_are_trl_advantages_times_weights(tmp_path):
    config = CATGRPOConfig(**_common(tmp_path), cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                           cat_p_estimator="empirical")
    model, tokenizer = tiny_llama()
    trainer = CATGRPOTrainer(model=model, reward_funcs=_contains_a, args=config, train_dataset=_dataset(),
                             processing_class=tokenizer)
    batch = [{"prompt": p} for p in ["ab", "ab", "ab", "ab", "ba", "ba", "ba", "ba"]]
    torch.manual_seed(0)
    ours = trainer._generate_and_score_completions(copy.deepcopy(batch))
    texts = tokenizer.batch_decode(ours["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(_contains_a(texts), dtype=torch.float64).view(2, 4)
    # independent reference: TRL's group standardisation times the pass@4 raw weight 4(1−p̂)^3, mean 1 over prompts
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)
    plain = (rewards - mean) / (std + 1e-4)
    p = rewards.mean(1)
    w = 4 * (1 - p) ** 3
    w = (w / w.mean()) if w.sum() > 0 else None
    expected = plain if w is None else plain * w.unsqueeze(1)
    torch.testing.assert_close(ours["advantages"].double(), expected.flatten(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cat_strategy": "pass@n"}, "cat_strategy"),
        ({"cat_n": 0}, "cat_n"),
        ({"cat_strategy": "maj", "cat_n": 3, "cat_k": 4}, "cat_k"),
        ({"cat_strategy": "maj", "cat_n": 1, "cat_k": "dynamic"}, "cat_k"),
        ({"cat_strategy": "bon", "cat_n": 4, "cat_weight_form": "log"}, "cat_weight_form"),
        ({"cat_clip": 0.0}, "cat_clip"),
        ({"cat_clip": float("nan")}, "cat_clip"),
        ({"cat_normalize": 1}, "cat_normalize"),
        ({"cat_p_estimator": "exact"}, "cat_p_estimator"),
        ({"cat_quantile": "global"}, "cat_quantile"),
        ({"cat_history_size": 0}, "cat_history_size"),
        ({"cat_all_wrong_penalty": -0.5}, "cat_all_wrong_penalty"),
        ({"cat_all_wrong_penalty": float("inf")}, "cat_all_wrong_penalty"),
        ({"cat_correct_threshold": float("nan")}, "cat_correct_threshold"),
        ({"cat_strategy": "pass", "cat_n": 4, "num_generations": 8}, "cat_normalize"),
    ],
)
def test_config_rejects_bad_fields(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        CATGRPOConfig(**_common(tmp_path, **overrides))


# ------------------------------------------------------- hand-built groups through the trainer, down to the gradient

HAND_BUILT = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # prompt 1: 1/4 correct, prompt 2: 3/4 correct


class _Recording(CATGRPOTrainer):
    """Keeps the scored generation batch in rollout order (TRL shuffles it before the loss)."""

    scored = None

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.scored = self.scored or output
        return output


def _fixed_rewards(values):
    def reward(completions, **kwargs):
        return list(values)

    return reward


def _step(tmp_path, rewards, answer_keys=None, **cat):
    """One training step whose 2×4 rollouts get ``rewards`` (and ``answer_keys``) in order; lr 0 keeps the model."""
    config = CATGRPOConfig(**{**_common(tmp_path, learning_rate=0.0, max_grad_norm=0.0), **cat})
    model, tokenizer = tiny_llama()
    snapshot = _GradSnapshot(model)
    keys = iter(answer_keys or [])
    trainer = _Recording(
        model=model, reward_funcs=_fixed_rewards(rewards), args=config, train_dataset=_dataset(),
        processing_class=tokenizer, callbacks=[snapshot],
        answer_keys_fn=(lambda cs: [next(keys) for _ in cs]) if answer_keys else None,
    )
    trainer.train()
    return trainer, snapshot.grads[0]


def _grpo_advantages(rewards) -> torch.Tensor:
    """TRL's group standardisation (r − mean)/(unbiased std + 1e-4), groups of 4."""
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, 4)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()


def _completion_logps(model, inputs) -> torch.Tensor:
    """log π(y_t | x, y_<t) of each completion token, by a plain forward pass (0 on padding)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -width - 1 : -1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return logps * inputs["completion_mask"]


def _surrogate_grads(model, inputs, advantages) -> dict[str, torch.Tensor]:
    """∇ of −Σ_i A_i Σ_t log π(y_it) / #completion tokens: TRL's default "dapo" loss at ratio 1, written out."""
    model.zero_grad()
    loss = -(advantages.float().unsqueeze(1) * _completion_logps(model, inputs)).sum() / inputs["completion_mask"].sum()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _pkpo_brute_force(group, k) -> list[float]:
    """s_i = mean over k-subsets I ∋ i of [max_I g − max_(I∖i) g] × C(n−1,k−1)/C(n,k), by enumeration."""
    g = [Fraction(v) for v in group]
    n, out = len(g), []
    for i in range(n):
        subsets = [s for s in combinations(range(n), k) if i in s]
        total = sum(max(g[j] for j in s) - max(g[j] for j in s if j != i) for s in subsets)
        out.append(float(total / comb(n, k)))
    return out


def _passk_brute_force(group, k) -> list[float]:
    """(mean over k-subsets ∋ i of their max − R̄)/√(R̄(1−R̄)), R̄ the mean max over all k-subsets (0 if σ = 0)."""
    group, n = [Fraction(v) for v in group], len(group)
    r_bar = sum(max(group[j] for j in s) for s in combinations(range(n), k)) / comb(n, k)
    sigma = math.sqrt(r_bar * (1 - r_bar))
    out = []
    for i in range(n):
        subsets = [s for s in combinations(range(n), k) if i in s]
        own = sum(max(group[j] for j in s) for s in subsets) / len(subsets)
        out.append(float(own - r_bar) / sigma if sigma else 0.0)
    return out


def test_pkpo_credits_replace_the_advantages_and_drive_the_gradient(tmp_path):
    rewards = [0.25, 0.75, 0.5, 0.75, 0.0, 1.0, 0.125, 0.625]  # ties in prompt 1; exact in float32
    trainer, grads = _step(tmp_path, rewards, cat_strategy="pkpo", cat_n=2)
    credits = torch.tensor(_pkpo_brute_force(rewards[:4], 2) + _pkpo_brute_force(rewards[4:], 2))
    torch.testing.assert_close(pkpo_sloo_minus_one(torch.tensor(rewards).view(2, 4), 2).flatten().float(), credits)
    expected = 4 * credits  # sum convention (the estimator is Σ_i s_i ∇log π) → TRL's mean over the 4 rollouts
    torch.testing.assert_close(trainer.scored["advantages"], expected, rtol=1e-6, atol=1e-7)
    reference = _surrogate_grads(trainer.model, trainer.scored, expected)
    assert reference.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)


def test_passk_advantage_replaces_the_advantages(tmp_path):
    trainer, _ = _step(tmp_path, HAND_BUILT, cat_strategy="passk_advantage", cat_n=2)
    expected = torch.tensor(_passk_brute_force(HAND_BUILT[:4], 2) + _passk_brute_force(HAND_BUILT[4:], 2))
    torch.testing.assert_close(expected[:4], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))  # worked by hand
    torch.testing.assert_close(passk_training_advantage(torch.tensor(HAND_BUILT).view(2, 4), 2).flatten().float(), expected)
    torch.testing.assert_close(trainer.scored["advantages"], expected, rtol=1e-6, atol=1e-7)


def test_majority_dynamic_k_through_the_trainer(tmp_path):
    keys = ["a", "b", "b", "c", "a", "a", "a", "d"]
    trainer, _ = _step(tmp_path, HAND_BUILT, answer_keys=keys, cat_strategy="maj", cat_n=4, cat_k="dynamic",
                       cat_weight_form="raw")
    # k = 3 (largest wrong cluster 2/4) and k = 2 (1/4), Laplace p̂ = 2/6 and 4/6, as in the weight test above
    w = _mean_one([_majority_raw(Fraction(2, 6), 4, 3), _majority_raw(Fraction(4, 6), 4, 2)])
    expected = _grpo_advantages(HAND_BUILT) * torch.tensor(w, dtype=torch.float64).repeat_interleave(4)
    torch.testing.assert_close(trainer.scored["advantages"].double(), expected, rtol=1e-6, atol=1e-6)
    assert trainer.state.log_history[0]["cat/k_mean"] == pytest.approx(2.5)


def test_all_wrong_penalty_then_weight_and_logged_alignment(tmp_path):
    rewards = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    trainer, _ = _step(tmp_path, rewards, cat_strategy="pass", cat_n=4, cat_weight_form="log",
                       cat_p_estimator="empirical", cat_all_wrong_penalty=0.5)
    # log-form pass@4 weights p·f′/f: 1 at p = 0 (its limit), (1/4)·4·(3/4)^3/(1 − (3/4)^4) = 108/175 at p = 1/4
    train = [Fraction(1), Fraction(108, 175)]
    w = torch.tensor(_mean_one(train), dtype=torch.float64).repeat_interleave(4)
    penalty = torch.tensor([0.5] * 4 + [0.0] * 4, dtype=torch.float64)  # only the unsolved prompt
    expected = (_grpo_advantages(rewards) - penalty) * w
    torch.testing.assert_close(trainer.scored["advantages"].double(), expected, rtol=1e-6, atol=1e-6)
    logs = trainer.state.log_history[0]
    test = [4.0, 4 * (3 / 4) ** 3]  # the test metric's f′(p) = 4(1−p)^3
    cosine = sum(float(a) * b for a, b in zip(train, test)) / math.sqrt(
        sum(float(a) ** 2 for a in train) * sum(b * b for b in test)
    )
    assert logs["cat/alignment"] == pytest.approx(cosine, rel=1e-6)
    assert logs["cat/raw_reward_mean"] == pytest.approx(1 / 8) and logs["reward"] == pytest.approx(1 / 8)


@pytest.mark.parametrize(("estimator", "num_iterations"), [("sequence", 1), ("length_normalized", 2)])
def test_sequence_estimators_use_the_old_policy_log_prob(tmp_path, estimator, num_iterations):
    # num_iterations=2 makes TRL compute old_per_token_logps itself; with 1 the trainer runs its own forward pass.
    # Two-token completions keep the sequence p̂ above its 1e-10 floor, so the weights differ per rollout.
    trainer, _ = _step(tmp_path, HAND_BUILT, cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                       cat_p_estimator=estimator, num_iterations=num_iterations, max_completion_length=2)
    assert trainer.state.log_history[0]["cat/p_hat_floor_frac"] == 0.0
    inputs = trainer.scored
    assert ("old_per_token_logps" in inputs) == (num_iterations == 2)
    with torch.no_grad():
        log_p = _completion_logps(trainer.model, inputs).double().sum(dim=1)
    if estimator == "length_normalized":
        log_p = log_p / inputs["completion_mask"].sum(dim=1)
    p = torch.exp(log_p.clamp(-50, 0)).clamp(1e-10, 1 - 1e-10)  # CAT App. J floor
    w = 4 * (1 - p) ** 3
    expected = _grpo_advantages(HAND_BUILT) * w / w.mean()  # per-sample weights, mean 1 over the samples
    torch.testing.assert_close(inputs["advantages"].double(), expected, rtol=1e-4, atol=1e-6)


def test_unequal_weights_reach_their_own_rows_down_to_the_gradient(tmp_path):
    # pass@4 raw weights 4(1−p̂)^3 at p̂ = 1/4 and 3/4: 27/16 and 1/16, normalised 54/28 and 2/28; swapping the groups'
    # weights, or applying them to the wrong rows, changes both the advantages and the gradient
    trainer, grads = _step(tmp_path, HAND_BUILT, cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                           cat_p_estimator="empirical", log_completions=True)
    w = torch.tensor(_mean_one([Fraction(27, 16), Fraction(1, 16)]), dtype=torch.float64).repeat_interleave(4)
    expected = _grpo_advantages(HAND_BUILT) * w
    torch.testing.assert_close(trainer.scored["advantages"].double(), expected, rtol=1e-6, atol=1e-6)
    reference = _surrogate_grads(trainer.model, trainer.scored, expected)
    assert reference.keys() == grads.keys()
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-4
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)
    # TRL's completions table shows the advantages the loss used, after CAT, in rollout order
    table = pd.read_parquet(tmp_path / "completions" / "completions_00001.parquet")
    torch.testing.assert_close(torch.tensor(table["advantage"].tolist(), dtype=torch.float64), expected,
                               rtol=1e-6, atol=1e-6)


def test_pkpo_k1_is_the_leave_one_out_advantage_on_the_grpo_scale(tmp_path):
    trainer, _ = _step(tmp_path, HAND_BUILT, cat_strategy="pkpo", cat_n=1)
    r = torch.tensor(HAND_BUILT, dtype=torch.float64).view(2, 4)
    # n·s_i = g_i − mean_{j≠i} g_j = n/(n−1)·(g_i − ḡ): GRPO's advantage times (std + 1e-4)·n/(n−1)
    expected = (_grpo_advantages(HAND_BUILT).view(2, 4) * (r.std(1, keepdim=True) + 1e-4) * 4 / 3).flatten()
    torch.testing.assert_close(trainer.scored["advantages"].double(), expected, rtol=1e-5, atol=1e-6)
    assert float(trainer.scored["advantages"].abs().max()) == pytest.approx(1.0)  # ±1 at 1/4 and 3/4 correct


UNSCORABLE = [1.0, None, 0.0, 0.0, 0.0, None, 0.0, None]  # prompt 1: 1 of 3 scored correct, prompt 2: 0 of 2


def _trl_advantages_with_unscorable(values) -> torch.Tensor:
    """TRL's nan-aware group standardisation; unscorable rollouts get 0."""
    r = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64).view(-1, 4)
    mean = torch.nanmean(r, dim=1, keepdim=True)
    std = torch.sqrt(torch.nansum((r - mean) ** 2, dim=1, keepdim=True) / ((~r.isnan()).sum(1, keepdim=True) - 1))
    return torch.nan_to_num((r - mean) / (std + 1e-4), nan=0.0).flatten()


def test_unscorable_completions_take_no_part(tmp_path):
    trainer, _ = _step(tmp_path, UNSCORABLE, cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                       cat_p_estimator="laplace", cat_all_wrong_penalty=0.5)
    # Laplace p̂ over the scored rollouts: (1+1)/(3+2) and (0+1)/(2+2); the penalty only on prompt 2's scored rows
    w = _mean_one([4 * (1 - Fraction(2, 5)) ** 3, 4 * (1 - Fraction(1, 4)) ** 3])
    scored = torch.tensor([v is not None for v in UNSCORABLE], dtype=torch.float64)
    penalty = torch.tensor([0.0] * 4 + [0.5] * 4, dtype=torch.float64) * scored
    weights = torch.tensor(w, dtype=torch.float64).repeat_interleave(4) * scored
    expected = (_trl_advantages_with_unscorable(UNSCORABLE) - penalty) * weights
    torch.testing.assert_close(trainer.scored["advantages"].double(), expected, rtol=1e-6, atol=1e-6)
    logs = trainer.state.log_history[0]
    assert logs["cat/p_hat_mean"] == pytest.approx((2 / 5 + 1 / 4) / 2)
    assert logs["cat/weight_mean"] == pytest.approx((3 * w[0] + 2 * w[1]) / 5)  # over the 3 + 2 scored rollouts


def test_unscorable_completions_get_no_pass_at_k_credit(tmp_path):
    values = [0.25, None, 0.75, 0.5, 1.0, None, None, None]  # prompt 2 has one scored rollout: too few for pass@2
    trainer, _ = _step(tmp_path, values, cat_strategy="pkpo", cat_n=2)
    credits = [3 * c for c in _pkpo_brute_force([0.25, 0.75, 0.5], 2)]  # 3 scored rollouts, mean convention
    expected = torch.tensor([credits[0], 0.0, credits[1], credits[2], 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(trainer.scored["advantages"], expected, rtol=1e-6, atol=1e-7)


def test_dynamic_k_clusters_only_the_scored_completions(tmp_path):
    calls = []
    model, tokenizer = tiny_llama()
    config = CATGRPOConfig(**_common(tmp_path, learning_rate=0.0), cat_strategy="maj", cat_n=4, cat_k="dynamic",
                           cat_weight_form="raw")

    def keys(completions):
        calls.append(len(completions))
        return ["a", "b", "b", "c"][: len(completions)] if len(completions) == 3 else ["a"] * len(completions)

    trainer = _Recording(model=model, reward_funcs=_fixed_rewards([1.0, None, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
                         args=config, train_dataset=_dataset(), processing_class=tokenizer, answer_keys_fn=keys)
    trainer.train()
    assert calls == [3, 4]  # one call per prompt group, with its scored completions
    # prompt 1: wrong clusters {b: 2} of 3 scored → k = min(3, ⌊4·2/3⌋+1) = 3; prompt 2: {a: 1} of 4 → k = 2
    assert trainer.state.log_history[0]["cat/k_mean"] == pytest.approx(2.5)


def test_truncated_completions_leave_the_per_sample_normalisation(tmp_path):
    trainer, _ = _step(tmp_path, HAND_BUILT, cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                       cat_p_estimator="length_normalized", mask_truncated_completions=True, max_completion_length=16)
    inputs = trainer.scored
    tokens = inputs["completion_mask"].sum(dim=1)
    valid = tokens > 0
    assert 2 <= int(valid.sum()) < 8  # some rows masked, several left (seeded)
    with torch.no_grad():
        log_p = _completion_logps(trainer.model, inputs).double().sum(dim=1) / tokens.clamp(min=1)
    p = torch.exp(log_p.clamp(-50, 0)).clamp(1e-10, 1 - 1e-10)
    w = torch.where(valid, 4 * (1 - p) ** 3, 0.0)
    w = w / w[valid].mean()  # mean 1 over the rollouts that have tokens in the loss
    expected = torch.where(valid, _grpo_advantages(HAND_BUILT) * w, 0.0)
    torch.testing.assert_close(inputs["advantages"].double(), expected, rtol=1e-4, atol=1e-6)
    assert trainer.state.log_history[0]["cat/p_hat_mean"] == pytest.approx(float(p[valid].mean()), rel=1e-4)


def test_sequence_floor_warns_once_and_is_logged(tmp_path):
    # 8 random-model tokens: p = π(y|x) far below 1e-10 for every rollout, so every weight is the same
    with pytest.warns(UserWarning, match="1e-10 floor for 100% of the rollouts"):
        trainer, _ = _step(tmp_path, HAND_BUILT, cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                           cat_p_estimator="sequence")
    assert trainer.state.log_history[0]["cat/p_hat_floor_frac"] == 1.0


def test_eval_batch_of_one_prompt_group_gets_weight_one(tmp_path):
    config = CATGRPOConfig(**_common(tmp_path), cat_strategy="pass", cat_n=4, cat_weight_form="raw",
                           cat_p_estimator="empirical", per_device_eval_batch_size=4, num_generations_eval=4)
    model, tokenizer = tiny_llama()
    trainer = CATGRPOTrainer(model=model, reward_funcs=_fixed_rewards([1.0, 0.0, 0.0, 0.0]), args=config,
                             train_dataset=_dataset(), eval_dataset=Dataset.from_dict({"prompt": ["ab", "ba"]}),
                             processing_class=tokenizer)
    metrics = trainer.evaluate()
    assert metrics["eval_cat/weight_mean"] == 1.0 and metrics["eval_cat/weight_max"] == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cat_strategy": "pkpo", "cat_n": 4, "num_generations_eval": 2, "per_device_eval_batch_size": 4},
         "num_generations_eval=2"),
        ({"cat_strategy": "passk_advantage", "cat_n": 3, "num_generations_eval": 2, "per_device_eval_batch_size": 4},
         "num_generations_eval=2"),
        ({"num_generations_eval": 3, "per_device_eval_batch_size": 4}, "per_device_eval_batch_size=4"),
        ({"num_generations_eval": 0}, "num_generations_eval"),
    ],
)
def test_config_checks_eval_sizes(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        CATGRPOConfig(**_common(tmp_path, **overrides))


@pytest.mark.parametrize("strategy", ["pass", "maj", "pkpo", "passk_advantage", "bon"])
def test_cat_n_one_is_never_refused_for_batch_sizes(tmp_path, strategy):
    # one prompt per generation batch and one rollout per evaluation prompt: weights ≡ 1 need neither
    form = {"cat_weight_form": "raw"} if strategy == "bon" else {}
    config = CATGRPOConfig(**_common(tmp_path, per_device_train_batch_size=4, num_generations_eval=1,
                                     per_device_eval_batch_size=1), cat_strategy=strategy, cat_n=1, **form)
    assert config.cat_n == 1


def test_per_sample_weights_need_no_second_prompt(tmp_path):
    # per-sample p̂ normalises over the rollouts, so one prompt per generation batch is enough
    config = CATGRPOConfig(**_common(tmp_path, per_device_train_batch_size=4), cat_strategy="pass", cat_n=4,
                           cat_p_estimator="length_normalized")
    assert config.generation_batch_size == config.num_generations
