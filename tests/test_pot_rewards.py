"""Reward components against independent computations (statistics module, unbatched forwards)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pot.adapters import SlotAdapterBank
from pot.rewards import (VERIFY_PROMPT, MajorityReward, RandomReward, SegmentBatch, SelfReward, VerifierReward,
                         standardised_confidence)


def _batch(model, tok, bank, *, prompts, earlier, segments, history, update=0, max_updates=4, group_size=1):
    return SegmentBatch(
        model=model, tokenizer=tok, bank=bank, slots=torch.arange(len(prompts)), request_keys=list(range(len(prompts))),
        prompts=prompts, earlier_texts=earlier, segment_texts=segments, segment_ids=[[] for _ in segments],
        segment_logprob=torch.zeros(len(prompts)),
        confidence_history=history, update=update, max_updates=max_updates, forward_tokens=[0] * len(prompts),
        group_size=group_size,
    )


def _last_number(text: str):
    numbers = re.findall(r"-?\d+", text)
    return int(numbers[-1]) if numbers else None


def test_majority_reward_on_hand_built_groups():
    """Four requests x three continuations: a clear majority, unparsed rows, nothing parsed, a 1-1 tie."""
    earlier = ["so x = 4 and"] * 3 + ["we have"] * 3 + ["hmm"] * 3 + ["start"] * 3
    segments = [" x = 42", " it is 42.", " 7",        # 42 wins 2:1
                " no idea", " 5", " still thinking",  # one vote: 5; unparsed rows score 0
                " a", " b", " c",                     # no vote at all
                " 1", " 2", " no"]                    # tie 1:1, the first seen (1) wins
    batch = _batch(None, None, None, prompts=["p"] * 12, earlier=earlier, segments=segments, history=[[]] * 12,
                   group_size=3)
    scores, parts = MajorityReward(_last_number)(batch)
    assert scores.tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert torch.equal(parts["majority"], scores)
    # the answer is read from the text so far: a continuation without a number keeps the earlier answer 4
    scores, _ = MajorityReward(_last_number)(_batch(None, None, None, prompts=["p"] * 2, earlier=["so 4"] * 2,
                                                   segments=[" ok", " 4"], history=[[]] * 2, group_size=2))
    assert scores.tolist() == [1, 1]


def test_majority_reward_rejects_bad_input():
    batch = _batch(None, None, None, prompts=["p"] * 3, earlier=[""] * 3, segments=["1"] * 3, history=[[]] * 3)
    with pytest.raises(ValueError, match="group_size 1"):
        MajorityReward(_last_number)(batch)
    with pytest.raises(TypeError, match="answer_fn"):
        MajorityReward("not callable")


@given(st.lists(st.integers(-20_000, 0).map(lambda milli: milli / 1000), min_size=2, max_size=12))
@settings(max_examples=60, deadline=None)
def test_standardised_confidence_is_tanh_of_zscore(history):
    exact = [Fraction(h) for h in history]
    mean = sum(exact) / len(exact)
    variance = sum((h - mean) ** 2 for h in exact) / (len(exact) - 1)
    expected = 0.0 if variance == 0 else math.tanh((exact[-1] - mean) / math.sqrt(variance))
    assert standardised_confidence(history) == pytest.approx(expected, abs=1e-9)


def test_confidence_zero_before_two_segments():
    assert standardised_confidence([]) == 0.0 and standardised_confidence([-3.0]) == 0.0


def test_schedule_moves_confidence_weight_to_verification(tiny):
    _, tok = tiny
    reward = SelfReward(tok, (0.2, 0.3, 0.5))
    assert reward.scheduled_weights(0, 5) == pytest.approx((0.2, 0.3, 0.5))
    assert reward.scheduled_weights(2, 5) == pytest.approx((0.1, 0.3, 0.6))
    assert reward.scheduled_weights(4, 5) == pytest.approx((0.0, 0.3, 0.7))


def test_self_reward_components_match_unbatched_references(tiny):
    model, tok = tiny
    bank = SlotAdapterBank(model, 2, rank=4, layer_stride=1)
    with torch.no_grad():
        for t in bank.adapted:
            t.B.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    prompts = ["Q: 2+2?\n", "Q: longer question here?\n"]
    earlier = ["so x = 4. then", "no conclusion yet"]
    segments = [" we check it", " thinking more"]
    history = [[-2.0, -1.0, -1.5], [-3.0]]
    reward = SelfReward(tok)
    batch = _batch(model, tok, bank, prompts=prompts, earlier=earlier, segments=segments, history=history)
    total, parts = reward(batch)

    def logits_alone(text, slot):
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), bank.use(torch.tensor([slot])):
            return ids[0], model(input_ids=ids).logits[0]

    for row in range(2):
        _, lg = logits_alone(prompts[row] + earlier[row] + segments[row] + VERIFY_PROMPT, row)
        p_yes, p_no = lg[-1, [tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N")]].softmax(-1)
        assert parts["verification"][row].item() == pytest.approx((p_yes - p_no).item(), abs=1e-5)
    # row 0: the conclusion is "x = 4" (after "so", up to the full stop), scored given the current segment
    seg_ids, lg = logits_alone(segments[0] + " x = 4", 0)
    n = len(tok(" x = 4", add_special_tokens=False)["input_ids"])
    ce = F.cross_entropy(lg[-n - 1:-1], seg_ids[-n:]).item()
    assert parts["coherence"][0].item() == pytest.approx(max(-1.0, min(1.0, (3 - ce) / 3)), abs=1e-5)
    assert parts["coherence"][1].item() == 0.0
    assert parts["confidence"].tolist() == pytest.approx([standardised_confidence(h) for h in history])
    expected = 0.2 * parts["confidence"] + 0.3 * parts["coherence"] + 0.5 * parts["verification"]
    torch.testing.assert_close(total, expected)
    verify_lengths = [len(tok(p + e + s + VERIFY_PROMPT, add_special_tokens=False)["input_ids"])
                      for p, e, s in zip(prompts, earlier, segments)]
    assert batch.forward_tokens == [verify_lengths[0] + len(seg_ids), verify_lengths[1]]


def test_self_reward_rejects_tokenizer_without_yes_no(tiny):
    _, tok = tiny

    class Blind:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7]}

    with pytest.raises(ValueError, match="YES"):
        SelfReward(Blind())
    assert SelfReward(tok).yes_id != SelfReward(tok).no_id


def test_verifier_and_random_rewards(tiny):
    model, tok = tiny
    bank = SlotAdapterBank(model, 2, rank=4)
    seen = []

    def check(index, text):
        seen.append((index, text))
        return 1.0 if "42" in text else 0.0

    batch = _batch(model, tok, bank, prompts=["a", "b"], earlier=["so 4", "x"], segments=["2", "y"],
                   history=[[], []])
    scores, _ = VerifierReward(check)(batch)
    assert scores.tolist() == [1.0, 0.0] and seen == [(0, "so 42"), (1, "xy")]
    first, _ = RandomReward(seed=1)(batch)
    single, _ = RandomReward(seed=1)(_batch(model, tok, bank, prompts=["b"], earlier=["x"], segments=["y"],
                                            history=[[]]))
    assert first[1] == single[0] and (first.abs() <= 1).all() and first[0] != first[1]
    batch.update = 1
    assert not torch.equal(RandomReward(seed=1)(batch)[0], first)
    group = _batch(model, tok, bank, prompts=["a", "a"], earlier=["", ""], segments=["x", "y"], history=[[], []],
                   group_size=2)
    siblings, _ = RandomReward(seed=1)(group)
    assert siblings[0] == first[0] and siblings[0] != siblings[1]  # continuations of one group get different draws
