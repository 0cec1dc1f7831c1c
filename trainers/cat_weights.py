"""Turn one step's gathered rollout results into per-sample CAT weights; every formula lives in ``cat``.

Rows are prompts (GRPO groups), columns their m rollouts. Per-prompt strategies (pass@N, majority vote with a
group-level p̂) give one weight per prompt, normalised to mean 1 over prompts and then broadcast to the rollouts
(CAT App. B); per-sample estimators (sequence, length-normalised p̂) and best-of-N rank weights are normalised per
sample.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from cat import estimators, objectives
from cat.alignment import alignment_coefficient
from cat.operators import BestOfN, MajorityVote, PassAtN

WeightFn = Callable[[torch.Tensor], torch.Tensor]

STRATEGIES = ("none", "passn", "majority", "best_of_n")
PER_PROMPT_ESTIMATORS = ("empirical", "laplace")
PER_SAMPLE_ESTIMATORS = ("sequence", "length_normalized")


@dataclass(frozen=True)
class CATWeights:
    """Per-sample weights (prompts, rollouts) plus, for logging, the per-prompt p̂ and thresholds k behind them and
    the alignment coefficient of the training weight with the test strategy (None where it is undefined)."""

    weights: torch.Tensor
    p_hat: torch.Tensor
    k: torch.Tensor | None
    alignment: float | None


def _estimate_p(
    p_estimator: str, correct: torch.Tensor, logp_sum: torch.Tensor | None, lengths: torch.Tensor | None
) -> torch.Tensor:
    if p_estimator == "empirical":
        return estimators.empirical(correct)
    if p_estimator == "laplace":
        return estimators.laplace(correct)
    if logp_sum is None:
        raise ValueError(f"p_estimator={p_estimator!r} needs the old policy's summed log-probabilities, got None")
    if p_estimator == "sequence":
        return estimators.sequence(logp_sum)
    if lengths is None:
        raise ValueError("p_estimator='length_normalized' needs completion lengths, got None")
    return estimators.length_normalized(logp_sum, lengths)


def _check_finite(values: torch.Tensor | None, what: str, prompts: Sequence[str] | None) -> None:
    """Stop the step on NaN/inf, naming the prompt: a silent NaN weight would poison the whole update."""
    if values is None:
        return
    values = torch.as_tensor(values)
    bad_rows = (~torch.isfinite(values.reshape(values.shape[0], -1))).any(dim=1)
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
            out[chosen] = operator.rl_weight(p[chosen], form=form, k=int(k))
        return out

    return weight


def _clipped(weight: WeightFn, clip: float | None) -> WeightFn:
    return weight if clip is None else (lambda p: weight(p).clamp(max=clip))


def _alignment(train: WeightFn, test: WeightFn, points: torch.Tensor) -> float | None:
    """Cosine of the training and test weight curves over this batch's points; None where either is zero everywhere."""
    if not bool((train(points) > 0).any()) or not bool((test(points) > 0).any()):
        return None
    return alignment_coefficient(train, test, p=points).coefficient


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
) -> CATWeights:
    """CAT weight for each rollout of each prompt.

    passn: w = f′(p̂) ("raw") or p̂·f′/f ("log") with f(p) = 1 − (1−p)^n (CAT §5).
    majority: f(p) = P[Bin(n, p) ≥ k]; ``k="dynamic"`` takes each prompt's k from its answer clusters (App. K.2).
    best_of_n: w = n·q^(n−1) with q the reward quantile, within the prompt or, with ``history``, against the last
    rewards of earlier steps (App. B.2.3). ``clip`` caps raw weights before normalisation (App. J).
    The alignment is ``cat.alignment``'s cosine between the training weight (form and clip as configured) and the
    test strategy's f′ (n·q^(n−1) for best-of-N), over this batch's p̂ (or q) values.
    """
    correct = torch.as_tensor(correct, dtype=torch.float64)
    if correct.dim() != 2:
        raise ValueError(f"correct must be a (prompts, rollouts) matrix, got shape {tuple(correct.shape)}")
    groups, m = correct.shape
    if strategy == "none":
        return CATWeights(torch.ones(groups, m, dtype=torch.float64), estimators.empirical(correct), None, None)
    _check_finite(rewards, "rewards", prompts)
    _check_finite(logp_sum, "logp_sum", prompts)
    k_per_prompt = None
    if strategy == "best_of_n":
        if rewards is None:
            raise ValueError("strategy='best_of_n' needs rewards, got None")
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        if history is not None:
            points = history.quantiles(rewards.flatten()).reshape(groups, m)
        else:
            points = estimators.within_prompt_quantiles(rewards)
        weight = test = partial(BestOfN(n).rl_weight, form="raw")
        p_hat = estimators.empirical(correct)
    else:
        points = _estimate_p(p_estimator, correct, logp_sum, lengths)
        p_hat = points if points.dim() == 1 else points.mean(dim=1)
        if strategy == "passn":
            weight = partial(PassAtN(n).rl_weight, form=form)
            test = partial(PassAtN(n).rl_weight, form="raw")
        elif strategy == "majority":
            operator = MajorityVote(n, None if k == "dynamic" else k)
            if k == "dynamic":
                if answer_keys is None:
                    raise ValueError("k='dynamic' needs answer_keys, got None")
                ks = [estimators.dynamic_majority_k(keys, row.bool().tolist(), n) for keys, row in zip(answer_keys, correct)]
            else:
                ks = [operator.threshold] * groups
            k_per_prompt = torch.tensor(ks)
            k_points = k_per_prompt.repeat_interleave(points.numel() // groups)
            weight = _majority_weight_fn(operator, k_points, form)
            test = _majority_weight_fn(operator, k_points, "raw")
        else:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    flat_points = points.flatten()
    raw = weight(flat_points).view(points.shape)
    _check_finite(raw, "CAT weight", prompts)
    if clip is not None:
        raw = raw.clamp(max=clip)
    alignment = _alignment(_clipped(weight, clip), test, flat_points)
    per_prompt = raw.dim() == 1
    # All-zero weights (every prompt solved, pass@N raw form) leave nothing to rescale; TRL's advantages are 0 there.
    if normalize and bool((raw > 0).any()):
        raw = objectives.normalize_prompt_weights(raw) if per_prompt else objectives.normalize_sample_weights(raw)
    weights = raw.unsqueeze(1).expand(groups, m) if per_prompt else raw
    return CATWeights(weights.contiguous(), p_hat, k_per_prompt, alignment)
