"""Segment rewards for PoT: a segment's context goes in, one scalar per request comes out.

Every reward implements ``__call__(batch: SegmentBatch) -> (reward (b,), components {name: (b,)})`` and adds the
tokens its own forward passes cost to ``batch.forward_tokens``. Reward forwards run under the request's current
adapter (``batch.slots``), with no gradient. A row is one continuation; when every segment is sampled G times the
G continuations of a request are consecutive rows (``batch.group_size``).
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VERIFY_PROMPT = "\n\nVerification: Is the above step correct? Answer YES or NO.\n"
CONCLUSION = re.compile(r"(?:therefore|thus|hence|so|=)\s*([^\n.]+)", re.IGNORECASE)


@dataclass
class SegmentBatch:
    """What a reward sees for each request row at one update."""

    model: torch.nn.Module
    tokenizer: object
    bank: object
    slots: torch.Tensor
    request_keys: list[int]
    prompts: list[str]
    earlier_texts: list[str]
    segment_texts: list[str]
    segment_ids: list[list[int]]
    segment_logprob: torch.Tensor
    confidence_history: list[list[float]]
    update: int
    max_updates: int
    forward_tokens: list[int]
    group_size: int = 1


def batched_logits(model, bank, slots: torch.Tensor, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Logits (len_i, V) of each token list, run as one left-padded batch with the rows' adapter slots."""
    width = max(len(s) for s in sequences)
    device = next(model.parameters()).device
    ids = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, device=device)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad(), bank.use(slots):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.float()
    return [logits[row, width - len(seq):] for row, seq in enumerate(sequences)]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def standardised_confidence(history: list[float]) -> float:
    """tanh of the latest mean log-prob's z-score within this request's own history (0 until two segments exist).

    A fixed map such as (logp + 5) / 5 saturates at 1 for instruct models, whose mean log-probs sit near 0, so the
    confidence is judged relative to the same query's earlier segments instead.
    """
    if len(history) < 2:
        return 0.0
    std = statistics.stdev(history)  # exact-rational internally: a constant history gives exactly 0
    return math.tanh((history[-1] - statistics.fmean(history)) / std) if std > 0 else 0.0


class SelfReward:
    """A label-free segment reward: w_c·confidence + w_h·coherence + w_v·verification, all in [-1, 1].

    - coherence: (3 − CE) / 3 clipped to [-1, 1], CE of earlier conclusions (text after therefore/thus/so/=) given
      the current segment; 0 when there is none yet;
    - verification: P(YES) − P(NO) renormalised over the two tokens after ``VERIFY_PROMPT``; the ids are the
      first tokens of "YES" and "NO" in this tokenizer;
    - schedule: the confidence weight moves linearly to verification over the updates,
      w_c(u) = w_c·(1 − u/(U−1)), w_v(u) = w_v + w_c·u/(U−1), because confidence is most informative early and
      rewards confidently wrong continuations late.
    """

    def __init__(self, tokenizer, weights: tuple[float, float, float] = (0.2, 0.3, 0.5)) -> None:
        self.weights = weights
        yes, no = _encode(tokenizer, "YES"), _encode(tokenizer, "NO")
        if not yes or not no or yes[0] == no[0]:
            raise ValueError(f"tokenizer cannot tell 'YES' {yes!r} from 'NO' {no!r} by their first token")
        self.yes_id, self.no_id = yes[0], no[0]

    def scheduled_weights(self, update: int, max_updates: int) -> tuple[float, float, float]:
        w_conf, w_coh, w_ver = self.weights
        shift = update / (max_updates - 1) if max_updates > 1 else 0.0
        return w_conf * (1 - shift), w_coh, w_ver + w_conf * shift

    def coherence(self, batch: SegmentBatch) -> torch.Tensor:
        scores = torch.zeros(len(batch.prompts))
        rows, sequences, lengths = [], [], []
        for row, (earlier, segment) in enumerate(zip(batch.earlier_texts, batch.segment_texts)):
            conclusions = " ".join(m.strip() for m in CONCLUSION.findall(earlier) if m.strip())
            seg_ids, con_ids = _encode(batch.tokenizer, segment), _encode(batch.tokenizer, " " + conclusions)
            if conclusions and seg_ids:
                rows.append(row)
                sequences.append(seg_ids + con_ids)
                lengths.append(len(con_ids))
        if rows:
            logits = batched_logits(batch.model, batch.bank, batch.slots[rows], sequences)
            for row, seq, n, lg in zip(rows, sequences, lengths, logits):
                ce = F.cross_entropy(lg[-n - 1:-1], torch.tensor(seq[-n:], device=lg.device)).item()
                scores[row] = max(-1.0, min(1.0, (3.0 - ce) / 3.0))
                batch.forward_tokens[row] += len(seq)
        return scores

    def verification(self, batch: SegmentBatch) -> torch.Tensor:
        texts = [p + e + s + VERIFY_PROMPT for p, e, s in zip(batch.prompts, batch.earlier_texts, batch.segment_texts)]
        sequences = [_encode(batch.tokenizer, t) for t in texts]
        logits = batched_logits(batch.model, batch.bank, batch.slots, sequences)
        for row, seq in enumerate(sequences):
            batch.forward_tokens[row] += len(seq)
        pair = torch.stack([lg[-1, [self.yes_id, self.no_id]] for lg in logits]).softmax(-1)
        return (pair[:, 0] - pair[:, 1]).cpu()

    def __call__(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        confidence = torch.tensor([standardised_confidence(h) for h in batch.confidence_history])
        parts = {"confidence": confidence, "coherence": self.coherence(batch), "verification": self.verification(batch)}
        w_conf, w_coh, w_ver = self.scheduled_weights(batch.update, batch.max_updates)
        total = w_conf * parts["confidence"] + w_coh * parts["coherence"] + w_ver * parts["verification"]
        return total, parts


class VerifierReward:
    """UPPER BOUND, not label-free: the task's checker on the interim text, ``check(prompt_index, text) -> float``.

    It sees the ground truth, so results with it bound what a perfect process reward could give; never report it
    as a self-improvement result.
    """

    def __init__(self, check: Callable[[int, str], float]) -> None:
        self.check = check

    def __call__(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        texts = [e + s for e, s in zip(batch.earlier_texts, batch.segment_texts)]
        scores = torch.tensor([float(self.check(i, t)) for i, t in zip(batch.request_keys, texts)])
        return scores, {"verifier": scores}


def agreement_scores(keys: Sequence[Hashable | None], group_size: int) -> torch.Tensor:
    """Per row: 1.0 if its key is the plurality key of its group (``group_size`` consecutive rows), else 0.0.

    None (unparsed) casts no vote and scores 0; ties go to the key seen first (``Counter.most_common``); a group with
    no parsed key scores 0 everywhere. (The evaluation's maj@k shares ties instead: there the vote is an estimate
    over subsets, here one winner is needed per group.)"""
    scores = torch.zeros(len(keys))
    for start in range(0, len(keys), group_size):
        group = keys[start:start + group_size]
        votes = Counter(key for key in group if key is not None)
        if votes:
            winner = votes.most_common(1)[0][0]
            for offset, key in enumerate(group):
                scores[start + offset] = float(key is not None and key == winner)
    return scores


def seeded_uniform(key: str) -> float:
    """A uniform draw in [0, 1) fixed by ``key`` alone (CRC-32 seed), so a batch gives what separate runs give."""
    return torch.rand((), generator=torch.Generator().manual_seed(zlib.crc32(key.encode()))).item()


class MajorityReward:
    """Label-free agreement (TTRL-style, per instance): 1 if a continuation's interim answer equals the majority
    answer of its request's G continuations, else 0.

    ``answer_fn(text) -> hashable | None`` reads the interim answer from the text so far (earlier reasoning plus the
    continuation), e.g. ``task.answer_key``; None (unparsed) casts no vote and scores 0. Ties go to the answer seen
    first; a group without any parsed answer scores 0 everywhere (``agreement_scores``).
    """

    def __init__(self, answer_fn: Callable[[str], Hashable | None]) -> None:
        if not callable(answer_fn):
            raise TypeError(f"answer_fn must be callable text -> hashable | None, got {answer_fn!r}")
        self.answer_fn = answer_fn

    def __call__(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch.group_size
        if size < 2 or len(batch.prompts) % size:
            raise ValueError(f"majority reward needs groups of >= 2 continuations, got group_size {size} "
                             f"for {len(batch.prompts)} rows")
        scores = agreement_scores([self.answer_fn(e + s) for e, s in zip(batch.earlier_texts, batch.segment_texts)],
                                  size)
        return scores, {"majority": scores}


class RandomReward:
    """Control: uniform in [-1, 1] (the scale of the self reward), seeded by (seed, update, continuation index,
    prompt) so a batch equals separate runs and the continuations of a group differ."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = torch.tensor([
            seeded_uniform(f"{self.seed}:{batch.update}:{row % batch.group_size}:{prompt}") * 2 - 1
            for row, prompt in enumerate(batch.prompts)])
        return scores, {"random": scores}
