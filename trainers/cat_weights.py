"""Turn one step's gathered rollout results into per-sample CAT weights; every formula lives in ``cat``.

Rows are prompts (GRPO groups), columns their m rollouts. Per-prompt strategies (pass@N, majority vote with a
group-level p̂) give one weight per prompt, normalised to mean 1 over prompts and then broadcast to the rollouts
(CAT App. B); per-sample estimators (sequence, length-normalised p̂) and best-of-N rank weights are normalised per
sample.

Two masks say which rollouts count. ``scored``: some reward function scored it (TRL gives a completion that every
function refused a NaN reward and no advantage); p̂, dynamic k and reward quantiles come from scored rollouts only.
``trainable``: it has completion tokens in the loss (``mask_truncated_completions`` empties truncated ones); a
per-sample weight needs the rollout's own log-probability or carries its own gradient, so per-sample weights are
0 outside ``scored & trainable`` and normalised over it. A truncated completion is still a draw from the policy, so
it keeps counting in the per-prompt p̂, as it does in TRL's group baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from cat import estimators, objectives
from cat.estimators import PER_PROMPT_ESTIMATORS, PER_SAMPLE_ESTIMATORS
from cat.alignment import alignment_coefficient
from cat.operators import BestOfN, MajorityVote, PassAtN
from cat.strategies import BON, PASS, TEST_TIME_STRATEGIES
from trainers.cat_args import WEIGHT_FORMS

WeightFn = Callable[[torch.Tensor], torch.Tensor]

STRATEGIES = ("none", *TEST_TIME_STRATEGIES)
P_FLOOR = 1e-10  # the lower clamp of the per-sample p̂ estimators (CAT App. J)


@dataclass(frozen=True)
class CATWeights:
    """Per-sample weights (prompts, rollouts), 0 where a rollout does not count, and what they came from.

    ``counted`` marks the rollouts the weights were computed and normalised over. ``p_hat`` holds the p̂ values
    behind them (one per prompt with a scored rollout, or one per counted rollout for per-sample estimators), ``k``
    the majority threshold per prompt, ``alignment`` the cosine of the training weight with the test strategy (None
    where undefined) and ``floor_frac`` the share of per-sample p̂ at the 1e-10 floor (None for other estimators).
    """

    weights: torch.Tensor
    counted: torch.Tensor
    p_hat: torch.Tensor
    k: torch.Tensor | None
    alignment: float | None
    floor_frac: float | None = None


def _mask(mask, shape: torch.Size, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be a bool matrix of shape {tuple(shape)}, got {mask.dtype} {tuple(mask.shape)}")
    return mask


def _check_finite(values: torch.Tensor | None, what: str, prompts: Sequence[str] | None, where: torch.Tensor) -> None:
    """Stop the step on NaN/inf where a value is used, naming the prompt: a NaN weight would poison the update."""
    if values is None:
        return
    values = torch.as_tensor(values)
    bad_rows = (~torch.isfinite(values) & where).reshape(values.shape[0], -1).any(dim=1)
    if bool(bad_rows.any()):
        row = int(bad_rows.nonzero()[0])
        name = repr(prompts[row]) if prompts is not None else f"#{row}"
        raise ValueError(f"{what} is not finite for prompt {name}: {values[row].tolist()}")


def _majority_weight_fn(operator: MajorityVote, k_points: torch.Tensor, form: str) -> WeightFn:
    """w(p) for a 1-D sample of p whose i-th point has threshold ``k_points[i]`` (dynamic k differs per prompt)."""

    def weight(p: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(p, dtype=torch.float64)
        for k in k_points.unique().tolist():
            chosen = k_points == k
            rl_weight = operator.log_rl_weight if form == "log" else operator.rl_weight
            out[chosen] = rl_weight(p[chosen], k=int(k))
        return out

    return weight


def _clipped(weight: WeightFn, clip: float | None) -> WeightFn:
    return weight if clip is None else (lambda p: weight(p).clamp(max=clip))


def _alignment(train: WeightFn, test: WeightFn, points: torch.Tensor) -> float | None:
    """Cosine of the training and test weight curves over this batch's points; None where either is zero everywhere."""
    if points.numel() == 0 or not bool((train(points) > 0).any()) or not bool((test(points) > 0).any()):
        return None
    return alignment_coefficient(train, test, p=points).coefficient


def _normalise(raw: torch.Tensor, per_prompt: bool) -> torch.Tensor:
    """Mean 1 over the values that count (CAT App. B). All-zero weights stay 0 (every prompt solved, pass@N raw
    form: TRL's advantages are 0 there); a lone prompt, as in an evaluation batch of one group, gets weight 1."""
    if raw.numel() == 0 or not bool((raw > 0).any()):
        return raw
    if per_prompt and raw.numel() == 1:
        return torch.ones_like(raw)
    return objectives.normalize_prompt_weights(raw) if per_prompt else objectives.normalize_sample_weights(raw)


def compute_cat_weights(
    strategy: str,
    correct: torch.Tensor,
    *,
    n: int = 1,
    k: int | str | None = None,
    form: str = "log",
    p_estimator: str = "laplace",
    clip: float | None = None,
    normalize: bool = True,
    answer_keys: Sequence[Sequence[Hashable | None]] | None = None,
    rewards: torch.Tensor | None = None,
    history: estimators.RewardHistory | None = None,
    logp_sum: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    scored: torch.Tensor | None = None,
    trainable: torch.Tensor | None = None,
) -> CATWeights:
    """CAT weight for each rollout of each prompt.

    pass: w = f′(p̂) ("raw") or p̂·f′/f ("log") with f(p) = 1 − (1−p)^n (CAT §5).
    maj: f(p) = P[Bin(n, p) ≥ k]; ``k="dynamic"`` takes each prompt's k from its answer clusters (App. K.2),
    ``answer_keys[g]`` holding the keys of prompt g's scored rollouts in order.
    bon: w = n·q^(n−1) with q the reward quantile, within the prompt or, with ``history``, against the last
    rewards of earlier steps (App. B.2.3). ``clip`` caps raw weights before normalisation (App. J).
    ``scored`` and ``trainable`` (bool, prompts × rollouts, all True when None) are described in the module doc.
    The alignment is ``cat.alignment``'s cosine between the training weight (form and clip as configured) and the
    test strategy's f′ (n·q^(n−1) for best-of-N), over this batch's p̂ (or q) values.
    """
    correct = torch.as_tensor(correct, dtype=torch.float64)
    if correct.dim() != 2:
        raise ValueError(f"correct must be a (prompts, rollouts) matrix, got shape {tuple(correct.shape)}")
    groups, m = correct.shape
    scored = _mask(scored, correct.shape, "scored")
    trainable = _mask(trainable, correct.shape, "trainable")
    rated = scored.any(dim=1)  # prompts with at least one scored rollout: the only ones with a p̂
    if strategy == "none":
        p_hat = estimators.empirical(correct[rated], scored[rated])
        return CATWeights(scored.double(), scored, p_hat, None, None)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if form not in WEIGHT_FORMS:  # bon has its rank weight alone, whatever the form
        raise ValueError(f"form must be one of {WEIGHT_FORMS}, got {form!r}")
    per_sample = strategy == BON or p_estimator in PER_SAMPLE_ESTIMATORS
    counted = scored & trainable if per_sample else scored
    _check_finite(rewards, "rewards", prompts, counted)
    _check_finite(logp_sum, "logp_sum", prompts, counted)
    k_per_prompt = None
    floor_frac = None
    if strategy == BON:
        if rewards is None:
            raise ValueError("strategy='bon' needs rewards, got None")
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        if history is not None:
            points = torch.full_like(rewards, torch.nan)
            points[counted] = history.quantiles(rewards[counted])
        else:
            points = estimators.within_prompt_quantiles(rewards, scored)
        weight = test = BestOfN(n).rl_weight
        p_hat = estimators.empirical(correct[rated], scored[rated])
    else:
        points = _estimate_p(p_estimator, correct, scored, rated, logp_sum, lengths)
        if strategy == PASS:
            operator = PassAtN(n)
            weight = operator.log_rl_weight if form == "log" else operator.rl_weight
            test = operator.rl_weight
        else:
            operator = MajorityVote(n, None if k == "dynamic" else k)
            if k == "dynamic":
                ks = _dynamic_ks(answer_keys, correct, scored, rated, n)
            else:
                ks = [operator.threshold] * groups
            k_per_prompt = torch.tensor(ks)
            k_points = k_per_prompt.repeat_interleave(m) if per_sample else k_per_prompt
            k_points = k_points[counted.flatten()] if per_sample else k_points[rated]
            weight = _majority_weight_fn(operator, k_points, form)
            test = _majority_weight_fn(operator, k_points, "raw")
        if per_sample:
            p_hat = points[counted]
            floor_frac = float((p_hat <= P_FLOOR).double().mean()) if p_hat.numel() else None
        else:
            p_hat = points[rated]
    # the points that count: one per rated prompt, or one per counted rollout
    where = counted if per_sample else rated
    flat_points = points[where]
    raw = weight(flat_points)
    scattered = torch.zeros(where.shape, dtype=torch.float64).masked_scatter(where, raw)
    _check_finite(scattered, "CAT weight", prompts, where)
    if clip is not None:
        raw = raw.clamp(max=clip)
    alignment = _alignment(_clipped(weight, clip), test, flat_points)
    if normalize:
        raw = _normalise(raw, per_prompt=not per_sample)
    weights = torch.zeros(where.shape, dtype=torch.float64).masked_scatter(where, raw)
    if not per_sample:  # a prompt's weight on each of its scored rollouts
        weights = weights.unsqueeze(1).expand(groups, m) * scored
    return CATWeights(weights.contiguous(), counted, p_hat, k_per_prompt, alignment, floor_frac)


def _estimate_p(p_estimator, correct, scored, rated, logp_sum, lengths) -> torch.Tensor:
    """Per-prompt p̂ of shape (prompts,), NaN for prompts without a scored rollout, or per-sample p̂ (prompts, m)."""
    if p_estimator in PER_PROMPT_ESTIMATORS:
        estimate = estimators.empirical if p_estimator == "empirical" else estimators.laplace
        out = torch.full((correct.shape[0],), torch.nan, dtype=torch.float64)
        out[rated] = estimate(correct[rated], scored[rated])
        return out
    if p_estimator not in PER_SAMPLE_ESTIMATORS:
        known = PER_PROMPT_ESTIMATORS + PER_SAMPLE_ESTIMATORS
        raise ValueError(f"p_estimator must be one of {known}, got {p_estimator!r}")
    if logp_sum is None:
        raise ValueError(f"p_estimator={p_estimator!r} needs the old policy's summed log-probabilities, got None")
    if p_estimator == "sequence":
        return estimators.sequence(logp_sum)
    if lengths is None:
        raise ValueError("p_estimator='length_normalized' needs completion lengths, got None")
    # a rollout with no completion tokens has no p̂; length 1 keeps the estimator defined, its weight is 0 anyway
    return estimators.length_normalized(logp_sum, torch.as_tensor(lengths).clamp(min=1))


def _dynamic_ks(answer_keys, correct, scored, rated, n) -> list[int]:
    """Each prompt's dynamic threshold from its scored rollouts (App. K.2); ⌊n/2⌋+1 for a prompt with none."""
    if answer_keys is None:
        raise ValueError("k='dynamic' needs answer_keys, got None")
    if len(answer_keys) != correct.shape[0]:
        raise ValueError(f"answer_keys must hold one list per prompt, got {len(answer_keys)} for {correct.shape[0]}")
    ks = []
    for keys, row, row_scored, has_score in zip(answer_keys, correct, scored, rated):
        flags = row[row_scored].bool().tolist()
        if len(keys) != len(flags):
            raise ValueError(f"answer_keys must hold one key per scored rollout, got {len(keys)} for {len(flags)}")
        ks.append(estimators.dynamic_majority_k(keys, flags, n) if has_score else n // 2 + 1)
    return ks
