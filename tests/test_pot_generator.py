"""PoTGenerator end to end on the tiny GQA Llama: equivalences that fail if caching, batching or updates are wrong."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

from evaluation.config import SamplingConfig
from evaluation.sampling import prompt_seed, sample
from pot import PoTConfig, PoTGenerator, RandomReward
from pot.adapters import SlotAdapterBank
from pot.generator import request_seed

PROMPTS = ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n", "Q: say hi\nA:"]


class ConstantReward:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, batch):
        scores = torch.full((len(batch.prompts),), self.value)
        return scores, {"constant": scores}


class NaNForPrompt:
    def __init__(self, bad_prompt: str) -> None:
        self.bad_prompt = bad_prompt

    def __call__(self, batch):
        scores = torch.tensor([math.nan if p == self.bad_prompt else 0.5 for p in batch.prompts])
        return scores, {"constant": scores}


class PreferContinuation:
    """Reward 1 for continuation ``preferred`` of every group, 0 for the others; remembers what it scored."""

    def __init__(self, preferred: int) -> None:
        self.preferred, self.seen = preferred, []

    def __call__(self, batch):
        self.seen.append([list(ids) for ids in batch.segment_ids])
        scores = torch.tensor([float(row % batch.group_size == self.preferred) for row in range(len(batch.prompts))])
        return scores, {"preferred": scores}


class NaNBackward(torch.autograd.Function):
    """Identity forward; the backward returns NaN on the marked batch rows (a numerical fault in one request)."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return grad.masked_fill(rows.view(-1, *[1] * (grad.dim() - 1)), math.nan), None


def _encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _mean_logp(model, tok, prompt: str, segment_ids: list[int]) -> torch.Tensor:
    prompt_ids = _encode(tok, prompt)
    logits = model(input_ids=torch.tensor([prompt_ids + segment_ids])).logits[0, len(prompt_ids) - 1:-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(segment_ids)[:, None]).mean()


@pytest.mark.parametrize("min_new_tokens", [0, 20])
def test_no_updates_greedy_equals_hf_generate(tiny, min_new_tokens):
    model, tok = tiny
    gen = PoTGenerator(model, tok, PoTConfig(max_updates=0, segment_tokens=7))
    ours = gen.generate(PROMPTS, max_new_tokens=20, min_new_tokens=min_new_tokens)
    for prompt, result in zip(PROMPTS, ours):
        ids = torch.tensor([_encode(tok, prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                             min_new_tokens=min_new_tokens, do_sample=False)
        assert result.token_ids == ref[0, ids.shape[1]:].tolist()
        assert not result.failed and result.trace.updates == []
    assert min_new_tokens == 0 or all(len(r.token_ids) == 20 for r in ours)


def test_no_updates_sampling_equals_uncached_reference_sampler(tiny):
    """Reference: no cache, one uniform u per step from the sampler's per-prompt stream, token = the first index
    whose cumulative warped probability reaches u (inverse CDF)."""
    model, tok = tiny
    cfg = PoTConfig(max_updates=0, segment_tokens=5, temperature=0.8, top_p=0.9, seed=3)
    ours = PoTGenerator(model, tok, cfg).generate(PROMPTS, max_new_tokens=15)
    for prompt, result in zip(PROMPTS, ours):
        rng = torch.Generator().manual_seed(prompt_seed(3, prompt))
        ids = _encode(tok, prompt)
        out = []
        with torch.no_grad():
            for _ in range(15):
                logits = model(input_ids=torch.tensor([ids + out])).logits[:, -1].float()
                probs = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.8)(None, logits)).softmax(-1)[0]
                u = float(torch.rand(1, generator=rng, dtype=torch.float64))
                cdf = probs.double().cumsum(0)
                out.append(int((cdf < u * float(cdf[-1])).sum()))
                if out[-1] == tok.eos_token_id:
                    break
        assert result.token_ids == out


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.8)])
def test_no_updates_equals_the_evaluation_sampler(tiny, temperature, top_p):
    """PoT draws with the sampler's seeds and picker: without updates it samples exactly what ``sample`` does."""
    model, tok = tiny
    cfg = PoTConfig(max_updates=0, segment_tokens=4, temperature=temperature, top_p=top_p, seed=11)
    ours = PoTGenerator(model, tok, cfg).generate(PROMPTS, max_new_tokens=14)
    theirs = sample(model, tok, PROMPTS, SamplingConfig(n=1, max_new_tokens=14, temperature=temperature,
                                                         top_p=top_p, seed=11, prompts_per_batch=len(PROMPTS)))
    assert [r.token_ids for r in ours] == [list(pool[0].token_ids) for pool in theirs]


@pytest.mark.parametrize(("temperature", "baseline"), [(0.0, "ema"), (1.0, "ema"), (1.0, "group")])
def test_batch_equals_separate_runs_with_updates(tiny, temperature, baseline):
    model, tok = tiny
    cfg = PoTConfig(max_updates=3, segment_tokens=6, temperature=temperature, lr=0.05, rank=4, layer_stride=2,
                    baseline=baseline, group_size=2)
    gen = PoTGenerator(model, tok, cfg)
    batched = gen.generate(PROMPTS, max_new_tokens=24)
    for prompt, together in zip(PROMPTS, batched):
        (alone,) = gen.generate([prompt], max_new_tokens=24)
        assert together.token_ids == alone.token_ids
        assert [u.group_rewards for u in together.trace.updates] == [
            pytest.approx(u.group_rewards, abs=1e-5) for u in alone.trace.updates]
    # an update follows every segment after which the request is still running (EOS or budget end it)
    assert [len(r.trace.updates) for r in batched] == [min(3, math.ceil(len(r.token_ids) / 6) - 1) for r in batched]
    assert any(u.adapter_norm > 0 for r in batched for u in r.trace.updates)


def test_base_weights_identical_and_state_reset_between_queries(tiny):
    model, tok = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = PoTGenerator(model, tok, PoTConfig(max_updates=4, segment_tokens=5, lr=0.05, rank=4))
    first = gen.generate(PROMPTS[:1], max_new_tokens=25)[0]
    gen.generate(PROMPTS[1:], max_new_tokens=25)
    again = gen.generate(PROMPTS[:1], max_new_tokens=25)[0]
    assert again.token_ids == first.token_ids
    assert [u.grad_norm for u in again.trace.updates] == pytest.approx([u.grad_norm for u in first.trace.updates])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # the base model is not even given gradients
    plain = PoTGenerator(model, tok, PoTConfig(max_updates=0)).generate(PROMPTS[:1], max_new_tokens=25)[0]
    assert plain.token_ids != first.token_ids or first.trace.updates[-1].adapter_norm == 0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reward_sign_moves_segment_logprob(tiny, sign):
    model, tok = tiny
    cfg = PoTConfig(max_updates=1, segment_tokens=8, lr=0.02, rank=4, layer_stride=1)
    gen = PoTGenerator(model, tok, cfg, reward=ConstantReward(sign))
    (result,) = gen.generate(PROMPTS[:1], max_new_tokens=12)
    assert result.trace.updates[0].advantage == sign
    with torch.no_grad():
        base = _mean_logp(model, tok, PROMPTS[0], result.token_ids[:8])
        with gen.bank.use(torch.tensor([0])):
            updated = _mean_logp(model, tok, PROMPTS[0], result.token_ids[:8])
    assert sign * (updated - base) > 1e-4


def test_group_baseline_raises_the_preferred_continuation(tiny):
    model, tok = tiny
    cfg = PoTConfig(baseline="group", group_size=3, temperature=1.0, max_updates=1, segment_tokens=8, lr=0.02,
                    rank=4, layer_stride=1, seed=1, max_relative_norm=1.0)
    reward = PreferContinuation(preferred=1)
    gen = PoTGenerator(model, tok, cfg, reward=reward)
    (result,) = gen.generate(PROMPTS[:1], max_new_tokens=10)
    (update,) = result.trace.updates
    assert update.group_rewards == [0.0, 1.0, 0.0] and update.advantage == pytest.approx(-1 / 3)
    (continuations,) = reward.seen
    assert len(set(map(tuple, continuations))) == 3  # sampled, not copies
    assert result.token_ids[:8] == continuations[0]  # the first continuation is the one kept
    assert result.trace.backward_tokens == sum(map(len, continuations)) == update.backward_tokens
    assert result.trace.generated_tokens == sum(map(len, continuations)) + len(result.token_ids) - 8
    with torch.no_grad():
        base = [_mean_logp(model, tok, PROMPTS[0], c) for c in continuations]
        with gen.bank.use(torch.tensor([0])):
            updated = [_mean_logp(model, tok, PROMPTS[0], c) for c in continuations]
    change = [float(u - b) for u, b in zip(updated, base)]
    assert change[1] > 1e-4 and change[1] > max(change[0], change[2])

    # exact first step: reference gradient of −Σ_g (r_g − mean r)/G · mean_t log π(y_gt) on a fresh bank with the
    # same A, through the segment only (the prompt's K/V come from a no-grad prefill: the gradient window), then Adam's
    # bias-corrected first step −lr·g/(|g| + eps) after the per-slot clip (B starts at 0, so A's gradient is 0)
    gen.bank.remove()
    ref = SlotAdapterBank(model, 1, rank=4, layer_stride=1)
    ref.reset(torch.tensor([0]), [request_seed(cfg.seed, PROMPTS[0])])
    params = ref.parameters_list()
    for p in params:
        p.requires_grad_(True)
    prompt_ids = _encode(tok, PROMPTS[0])

    def window_mean_logp(segment):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([prompt_ids[:-1]]), past_key_values=cache)
        logits = model(input_ids=torch.tensor([prompt_ids[-1:] + segment[:-1]]), past_key_values=cache).logits[0]
        return logits.log_softmax(-1).gather(-1, torch.tensor(segment)[:, None]).mean()

    with ref.use(torch.tensor([0])):
        loss = -sum((r - 1 / 3) / 3 * window_mean_logp(c) for r, c in zip([0, 1, 0], continuations))
    grads = torch.autograd.grad(loss, params)
    clip = min(1.0, cfg.max_grad_norm / (math.sqrt(sum(float(g.square().sum()) for g in grads)) + 1e-6))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= cfg.lr * (g * clip) / ((g * clip).abs() + cfg.eps)
        limits = [cfg.max_relative_norm * float(t.module.weight.norm()) for t in ref.adapted]
        dense = [float((ref.scaling * t.A[0] @ t.B[0]).norm()) for t in ref.adapted]
        assert all(d < limit for d, limit in zip(dense, limits))  # no cap: the step is all
    assert update.capped_targets == 0 and result.trace.capped_updates == 0
    for ours, theirs in zip(gen.bank.parameters_list(), params):
        torch.testing.assert_close(ours.detach()[0], theirs.detach()[0], rtol=1e-4, atol=1e-6)


def test_majority_reward_end_to_end(tiny):
    from pot import MajorityReward

    model, tok = tiny
    cfg = PoTConfig(reward="majority", group_size=4, temperature=1.0, max_updates=2, segment_tokens=5, lr=0.05,
                    rank=4)
    seen = []

    def last_char(text):
        seen.append(text)
        return text[-1] if text else None

    (result,) = PoTGenerator(model, tok, cfg, reward=MajorityReward(last_char)).generate(PROMPTS[:1], 16)
    assert len(result.trace.updates) == 2 and len(seen) == 8
    for update, texts in zip(result.trace.updates, (seen[:4], seen[4:])):
        answers = [t[-1] for t in texts]
        top = max(answers.count(a) for a in answers)
        first_top = next(a for a in answers if answers.count(a) == top)
        assert update.group_rewards == [float(a == first_top) for a in answers]
    first = result.trace.updates[0]
    assert first.advantage == first.reward  # EMA baseline starts at 0; only the kept continuation is used


def test_nan_reward_fails_only_that_request(tiny):
    model, tok = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PoTConfig(max_updates=3, segment_tokens=5, lr=0.05, rank=4)
    bad, good = PROMPTS
    both = PoTGenerator(model, tok, cfg, reward=NaNForPrompt(bad)).generate([bad, good], max_new_tokens=20)
    (alone,) = PoTGenerator(model, tok, cfg, reward=NaNForPrompt(bad)).generate([good], max_new_tokens=20)
    assert both[0].failed and "non-finite reward" in both[0].trace.failure
    assert len(both[0].token_ids) == 5
    assert not both[1].failed and both[1].token_ids == alone.token_ids
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_nan_gradient_fails_only_that_request(tiny):
    model, tok = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PoTConfig(max_updates=3, segment_tokens=5, lr=0.05, rank=4)
    bad, good = PROMPTS
    gen = PoTGenerator(model, tok, cfg, reward=ConstantReward(1.0))

    def poison_slot_zero(module, inputs, output):  # slot 0 holds the first prompt of the wave
        if torch.is_grad_enabled() and gen.bank.active_slots is not None:
            return NaNBackward.apply(output, gen.bank.active_slots == 0)
        return None

    handle = model.model.norm.register_forward_hook(poison_slot_zero)
    try:
        both = gen.generate([bad, good], max_new_tokens=20)
        bad_adapter = [t.B[0].clone() for t in gen.bank.adapted]
    finally:
        handle.remove()
    (alone,) = PoTGenerator(model, tok, cfg, reward=ConstantReward(1.0)).generate([good], max_new_tokens=20)
    assert both[0].failed and "non-finite gradient" in both[0].trace.failure
    assert len(both[0].token_ids) == 5 and math.isnan(both[0].trace.updates[0].grad_norm)
    assert all(b.abs().sum() == 0 for b in bad_adapter)  # the failed step was not applied
    assert not both[1].failed and both[1].token_ids == alone.token_ids
    assert [u.grad_norm for u in both[1].trace.updates] == pytest.approx([u.grad_norm for u in alone.trace.updates])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _cached_next_logits(model, bank, slots, ids, *, update_between: bool):
    """Prefill all but the last token, optionally change the adapter, then decode the last token from the cache."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), bank.use(slots):
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
        if update_between:
            for t in bank.adapted:
                t.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
        cached = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    return cached, full


def test_reprefill_is_exact_and_stale_cache_is_not(tiny):
    model, tok = tiny
    ids = torch.tensor([_encode(tok, "some context here")])
    for targets in ("q", "qv"):
        bank = SlotAdapterBank(model, 1, rank=4, layer_stride=2, targets=targets)
        with torch.no_grad():
            for t in bank.adapted:
                t.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
        cached, full = _cached_next_logits(model, bank, torch.tensor([0]), ids, update_between=False)
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)  # cache built under the current adapter
        assert (full - model(input_ids=ids).logits[:, -1]).abs().max() > 1e-3  # ... which is not a no-op
        stale, full = _cached_next_logits(model, bank, torch.tensor([0]), ids, update_between=True)
        assert (stale - full).abs().max() > 1e-3  # layer 0's q adapter changes layers 1-3's K/V too
        bank.remove()


def test_q_only_cache_exact_when_adapter_is_on_last_attention_layer():
    from core.tiny_llama import tiny_llama

    model, tok = tiny_llama(num_layers=1)
    ids = torch.tensor([_encode(tok, "some context here")])
    q_bank = SlotAdapterBank(model, 1, rank=4, targets="q")
    cached, full = _cached_next_logits(model, q_bank, torch.tensor([0]), ids, update_between=True)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    q_bank.remove()
    qv_bank = SlotAdapterBank(model, 1, rank=4, targets="qv")
    stale, full = _cached_next_logits(model, qv_bank, torch.tensor([0]), ids, update_between=True)
    assert (stale - full).abs().max() > 1e-3
    qv_bank.remove()
    # so in the generator, keeping the cache (stale_kv) gives exactly the re-prefill output for q-only on layer 0
    cfg = dict(targets="q", layer_stride=1, max_updates=3, segment_tokens=4, lr=0.2, rank=4)
    fresh = PoTGenerator(model, tok, PoTConfig(**cfg), reward=ConstantReward(1.0)).generate(PROMPTS, 16)
    stale = PoTGenerator(model, tok, PoTConfig(stale_kv=True, **cfg), reward=ConstantReward(1.0)).generate(PROMPTS, 16)
    assert [f.token_ids for f in fresh] == [s.token_ids for s in stale]
    assert all(u.adapter_norm > 0 for r in fresh for u in r.trace.updates)
    assert [f.trace.forward_tokens for f in fresh] == [s.trace.forward_tokens for s in stale]
    assert all(f.trace.reprefill_tokens > 0 for f in fresh) and all(s.trace.reprefill_tokens == 0 for s in stale)


def test_stale_kv_changes_generation_and_counts(tiny):
    model, tok = tiny
    cfg = dict(max_updates=4, segment_tokens=4, lr=0.2, rank=4, layer_stride=1, max_relative_norm=1.0)
    fresh = PoTGenerator(model, tok, PoTConfig(**cfg), reward=ConstantReward(1.0)).generate(PROMPTS, 24)
    stale = PoTGenerator(model, tok, PoTConfig(stale_kv=True, **cfg), reward=ConstantReward(1.0)).generate(PROMPTS, 24)
    assert any(f.token_ids != s.token_ids for f, s in zip(fresh, stale))
    for prompt, result in zip(PROMPTS * 2, fresh + stale):
        trace = result.trace
        assert trace.generated_tokens == len(result.token_ids)
        assert trace.backward_tokens == 4 * len(trace.updates)
        n = trace.num_parameters
        assert trace.estimated_flops == 2 * n * (trace.forward_tokens + trace.reprefill_tokens + trace.backward_tokens)
        assert trace.forward_tokens >= len(_encode(tok, prompt)) - 1 + trace.generated_tokens + trace.backward_tokens
    for prompt, r in zip(PROMPTS, fresh):  # after update u, the context re-run: the prompt and 4·(u + 1) tokens
        rebuilt = [len(_encode(tok, prompt)) - 1 + 4 * (u.update + 1) for u in r.trace.updates]
        assert r.trace.reprefill_tokens == sum(rebuilt) > 0
    assert all(r.trace.reprefill_tokens == 0 for r in stale)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rank": 0}, "rank"), ({"layer_stride": 0}, "layer_stride"), ({"targets": "k"}, "targets"),
     ({"reward": "vibes"}, "reward"), ({"top_p": 0.0}, "top_p"), ({"temperature": -1.0}, "temperature"),
     ({"max_updates": -1}, "max_updates"), ({"baseline": "median"}, "baseline"), ({"group_size": 1}, "group_size"),
     ({"window": "prompt"}, "window"), ({"max_relative_norm": 0.0}, "max_relative_norm"),
     ({"baseline": "group", "temperature": 0.0}, "temperature > 0"),
     ({"reward": "majority", "temperature": 0.0}, "temperature > 0")],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        PoTConfig(**kwargs)
    assert f"got {list(kwargs.values())[-1]!r}" in str(error.value)  # the offending value is named too


def test_bad_inputs_rejected_before_generation(tiny):
    model, tok = tiny
    gen = PoTGenerator(model, tok, PoTConfig(max_updates=1))
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        gen.generate(["ok", ""], max_new_tokens=5)
    with pytest.raises(ValueError, match=r"prompts must be a non-empty list of strings, got \[\]"):
        gen.generate([], max_new_tokens=5)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        gen.generate(["ok"], max_new_tokens=0)
    with pytest.raises(ValueError, match=r"min_new_tokens must be an integer in \[0, max_new_tokens=5\], got 6"):
        gen.generate(["ok"], max_new_tokens=5, min_new_tokens=6)
    with pytest.raises(ValueError, match="'Sequential' has no attention module"):
        PoTGenerator(torch.nn.Sequential(torch.nn.Linear(2, 2)), tok)
    with pytest.raises(ValueError, match="MajorityReward"):
        PoTGenerator(model, tok, PoTConfig(reward="majority", temperature=1.0))
    with pytest.raises(ValueError, match="VerifierReward"):
        PoTGenerator(model, tok, PoTConfig(reward="verifier"))
    from pot import MajorityReward

    with pytest.raises(ValueError, match="baseline='ema'"):
        PoTGenerator(model, tok, PoTConfig(), reward=MajorityReward(str))


def test_four_bit_base_gets_adapter_gradients(tiny, tmp_path: Path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, tok = tiny
    model.save_pretrained(tmp_path)
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    gen = PoTGenerator(quantized, tok, PoTConfig(max_updates=2, segment_tokens=4, rank=4, layer_stride=1),
                       reward=ConstantReward(1.0))
    (result,) = gen.generate(PROMPTS[:1], max_new_tokens=12)
    assert [u.grad_norm > 0 for u in result.trace.updates] == [True, True]
    assert result.trace.updates[-1].adapter_norm > 0


@pytest.mark.slow
def test_smollm2_short_run(smollm2):
    model, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False,
                                     add_generation_prompt=True)
    gen = PoTGenerator(model, tok, PoTConfig(max_updates=1, segment_tokens=6, rank=4))
    (result,) = gen.generate([prompt], max_new_tokens=10)
    assert not result.failed and len(result.trace.updates) >= 1
    assert all(math.isfinite(u.reward) and u.grad_norm >= 0 for u in result.trace.updates)
    assert result.trace.backward_tokens == 6 * len(result.trace.updates)


def test_a_gated_off_request_is_plain_generation(tiny):
    """``gate=``: any object whose ``decide(model, tokenizer, prompts)`` returns one bool per prompt; a request it
    turns off is generated as with no updates at all."""

    class GateOff:
        def decide(self, model, tokenizer, prompts):
            return [False] * len(prompts)

    model, tok = tiny
    cfg = PoTConfig(max_updates=3, segment_tokens=5, lr=0.05)
    gated = PoTGenerator(model, tok, cfg, gate=GateOff()).generate(PROMPTS, max_new_tokens=15)
    plain = PoTGenerator(model, tok, PoTConfig(max_updates=0, segment_tokens=5)).generate(PROMPTS, max_new_tokens=15)
    assert [g.token_ids for g in gated] == [p.token_ids for p in plain]
    assert all(g.trace.gated_off and not g.trace.updates for g in gated)


def test_pot_on_an_unmerged_peft_adapter_equals_pot_on_the_merged_model(tiny):
    """A trained arm is evaluated with its LoRA unmerged (merging into bf16 weights would round the update away): the
    slot hooks then sit on peft's wrapped q/v projections and must see exactly what the merged fp32 model computes."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(copy.deepcopy(model), lora).eval()
    merged = copy.deepcopy(wrapped).merge_and_unload().eval()
    runs = []
    for m in (wrapped, merged):
        generator = PoTGenerator(m, tok, PoTConfig(max_updates=3, segment_tokens=3, temperature=1.0, seed=5))
        try:
            results = generator.generate(["What is 3 + 4?", "What is 12 + 7? Answer"], 12)
        finally:
            generator.bank.remove()
        runs.append([(r.text, [u.adapter_norm for u in r.trace.updates]) for r in results])
    assert all(len(norms) == 3 for _, norms in runs[0])  # the updates happened
    assert [t for t, _ in runs[0]] == [t for t, _ in runs[1]]
    for (_, a), (_, b) in zip(*runs):
        assert a == pytest.approx(b, rel=1e-4)


class GateOff:
    """Gates off the listed prompts (plain generation for them), every other prompt adapts."""

    def __init__(self, *prompts: str) -> None:
        self.off = set(prompts)

    def decide(self, model, tokenizer, prompts):
        return [p not in self.off for p in prompts]


def _raise_logit(model, token_id: int, amount: float):
    """A model that emits ``token_id`` more often: ``amount`` is added to its logit (a forward hook on lm_head)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token_id] = amount
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias.to(output))


def test_group_sampling_with_a_zero_effect_update_reproduces_the_plain_run(tiny):
    """Equal rewards give zero group advantages, so B stays exactly 0: the kept text must be the plain run's."""
    model, tok = tiny
    common = dict(temperature=1.0, top_p=0.9, segment_tokens=5, seed=7)
    plain = PoTGenerator(model, tok, PoTConfig(max_updates=0, **common)).generate(PROMPTS, max_new_tokens=20)
    cfg = PoTConfig(baseline="group", group_size=3, max_updates=3, lr=0.05, **common)
    grouped = PoTGenerator(model, tok, cfg, reward=ConstantReward(0.5)).generate(PROMPTS, max_new_tokens=20)
    assert all(g.trace.updates for g in grouped)
    assert all(u.adapter_norm == 0 and u.advantage == 0 for g in grouped for u in g.trace.updates)
    assert all(g.trace.generated_tokens > len(g.token_ids) for g in grouped)  # siblings were sampled
    assert [g.token_ids for g in grouped] == [p.token_ids for p in plain]
    assert [g.text for g in grouped] == [p.text for p in plain]


@pytest.mark.parametrize(("window", "stale_kv"), [("segment", False), ("context", True)])
def test_batch_compute_totals_equal_separate_runs(tiny, window, stale_kv):
    """Rows end at different times (a frequent EOS) and one request is gated off (never learns): a request's
    forward/backward/generated totals must not depend on what else shares its batch."""
    model, tok = tiny
    handle = _raise_logit(model, tok.eos_token_id, 2.5)
    prompts = [PROMPTS[0], PROMPTS[1], "Q: 7*6?\nA:"]
    cfg = PoTConfig(baseline="group", group_size=2, temperature=1.0, max_updates=3, segment_tokens=4, lr=0.05,
                    rank=4, seed=6, window=window, stale_kv=stale_kv)
    try:
        gen = PoTGenerator(model, tok, cfg, reward=RandomReward(0), gate=GateOff(prompts[1]))
        batched = gen.generate(prompts, max_new_tokens=20)
        alone = [gen.generate([p], max_new_tokens=20)[0] for p in prompts]
    finally:
        handle.remove()
    assert len({len(r.token_ids) for r in batched}) > 1  # the rows finished at different steps
    assert any(r.token_ids[-1] == tok.eos_token_id and len(r.token_ids) < 20 for r in batched)
    assert batched[1].trace.gated_off and sum(len(r.trace.updates) for r in batched) > 0
    for together, single in zip(batched, alone):
        assert together.token_ids == single.token_ids
        for key in ("forward_tokens", "reprefill_tokens", "backward_tokens", "generated_tokens", "estimated_flops"):
            assert getattr(together.trace, key) == getattr(single.trace, key), key
    # the plain request: its prefill and one forward per token it generated, nothing else
    assert batched[1].trace.forward_tokens == len(_encode(tok, prompts[1])) - 1 + len(batched[1].token_ids)
    assert batched[1].trace.backward_tokens == 0


@pytest.mark.parametrize("min_new_tokens", [0, 12])
def test_stops_at_every_generation_config_eos(tiny, min_new_tokens):
    """A Llama-3-style generation config lists several end ids: PoT stops at any of them, like transformers and
    the sampler."""
    from evaluation.sampling import eos_token_ids

    model, tok = tiny
    ids = torch.tensor([_encode(tok, PROMPTS[1])])
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)[0, 1:]
    generated = greedy[ids.shape[1] - 1:].tolist()
    other_end = next(t for i, t in enumerate(generated) if i >= 2 and t not in generated[:i])
    model.generation_config.eos_token_id = [tok.eos_token_id, other_end]
    assert eos_token_ids(model, tok) == sorted({tok.eos_token_id, other_end})
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=min_new_tokens,
                         do_sample=False)[0, ids.shape[1]:].tolist()
    (plain,) = PoTGenerator(model, tok, PoTConfig(max_updates=0, segment_tokens=5)).generate(
        [PROMPTS[1]], max_new_tokens=12, min_new_tokens=min_new_tokens)
    assert plain.token_ids == ref
    assert len(ref) == 12 if min_new_tokens else ref[-1] == other_end and len(ref) < 12
    cfg = PoTConfig(max_updates=3, segment_tokens=3, temperature=1.0, lr=0.05, seed=1)
    handle = _raise_logit(model, other_end, 3.0)
    try:
        learned = PoTGenerator(model, tok, cfg).generate(PROMPTS, max_new_tokens=30, min_new_tokens=min_new_tokens)
    finally:
        handle.remove()
    for r in learned:
        assert all(t not in (tok.eos_token_id, other_end) for t in r.token_ids[max(min_new_tokens, 1) - 1:-1])
        assert len(r.token_ids) == 30 or r.token_ids[-1] in (tok.eos_token_id, other_end)
    assert any(r.token_ids[-1] == other_end for r in learned)


def test_rewards_see_texts_decoded_as_the_sampler_decodes(tiny):
    """Sibling continuations (and earlier text) reach the reward decoded with skip_special_tokens=True."""
    from pot import MajorityReward

    model, tok = tiny
    special = tok.convert_tokens_to_ids("<|im_start|>")
    seen = []

    class Recording(MajorityReward):
        def __call__(self, batch):
            seen.append((batch.update, [list(s) for s in batch.segment_ids], list(batch.segment_texts),
                         list(batch.earlier_texts)))
            return super().__call__(batch)

    cfg = PoTConfig(reward="majority", baseline="group", group_size=3, temperature=1.0, max_updates=3,
                    segment_tokens=6, lr=0.05, seed=4)
    handle = _raise_logit(model, special, 3.0)
    try:
        (result,) = PoTGenerator(model, tok, cfg, reward=Recording(lambda t: t[-1:] or None)).generate(
            PROMPTS[1:], max_new_tokens=24)
    finally:
        handle.remove()
    assert len(seen) == 3 and any(special in ids for _, rows, _, _ in seen for ids in rows)
    for update, rows, texts, earlier in seen:
        assert texts == [tok.decode(ids, skip_special_tokens=True) for ids in rows]
        assert earlier == [tok.decode(result.token_ids[:6 * update], skip_special_tokens=True)] * 3
    assert all("<|im_start|>" not in t for _, _, texts, earlier in seen for t in texts + earlier)
    assert result.text == tok.decode(result.token_ids, skip_special_tokens=True)


def test_context_window_step_uses_the_full_sequence_gradient(tiny):
    """window="context": the first step equals Adam's step on the autograd gradient of −mean_t log π(y_t | prompt,
    y_<t) with the adapter on every position; window="segment" on the gradient with the prompt's K/V held fixed."""
    model, tok = tiny
    segment = 6
    cfg = dict(max_updates=1, segment_tokens=segment, rank=4, layer_stride=1, lr=1.0, eps=1.0, max_grad_norm=1e9,
               max_relative_norm=1e9, seed=3)
    runs = {}
    for window in ("context", "segment"):
        gen = PoTGenerator(model, tok, PoTConfig(window=window, **cfg), reward=ConstantReward(1.0))
        (result,) = gen.generate(PROMPTS[:1], max_new_tokens=segment + 2)
        runs[window] = (result, [p.detach()[0].clone() for p in gen.bank.parameters_list()])
        gen.bank.remove()
    assert runs["context"][0].token_ids[:segment] == runs["segment"][0].token_ids[:segment]
    ids = runs["context"][0].token_ids[:segment]
    prompt_ids = _encode(tok, PROMPTS[0])

    def stepped(full: bool):
        ref = SlotAdapterBank(model, 1, rank=4, layer_stride=1)
        ref.reset(torch.tensor([0]), [request_seed(3, PROMPTS[0])])
        params = ref.parameters_list()
        for p in params:
            p.requires_grad_(True)
        with ref.use(torch.tensor([0])):
            if full:
                logits = model(input_ids=torch.tensor([prompt_ids + ids[:-1]])).logits[0, len(prompt_ids) - 1:]
            else:
                cache = DynamicCache(config=model.config)
                with torch.no_grad():
                    model(input_ids=torch.tensor([prompt_ids[:-1]]), past_key_values=cache)
                logits = model(input_ids=torch.tensor([prompt_ids[-1:] + ids[:-1]]), past_key_values=cache).logits[0]
            loss = -logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).mean()
        grads = torch.autograd.grad(loss, params)
        ref.remove()
        # Adam's first step with eps = lr = 1: −g / (|g| + 1), close to linear in g for these small gradients
        return [(p - g / (g.abs() + 1.0)).detach()[0] for p, g in zip(params, grads)]

    full, windowed = stepped(True), stepped(False)
    gap = max(float((a - b).abs().max()) for a, b in zip(full, windowed))
    assert gap > 1e-3 * max(float(a.abs().max()) for a in full)  # the two gradients differ
    for name, expected in (("context", full), ("segment", windowed)):
        for ours, theirs in zip(runs[name][1], expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    assert runs["context"][0].trace.backward_tokens == len(prompt_ids) - 1 + segment
    assert runs["segment"][0].trace.backward_tokens == segment


def test_relative_cap_binds_and_is_counted(tiny):
    model, tok = tiny
    rho = 1e-3
    cfg = PoTConfig(max_updates=3, segment_tokens=4, lr=0.2, rank=4, layer_stride=2, max_relative_norm=rho)
    gen = PoTGenerator(model, tok, cfg, reward=ConstantReward(1.0))
    (result,) = gen.generate(PROMPTS[:1], max_new_tokens=16)
    assert len(result.trace.updates) == 3 and result.trace.capped_updates == 3
    assert all(u.capped_targets == len(gen.bank.adapted) for u in result.trace.updates)
    with torch.no_grad():
        for t in gen.bank.adapted:
            ratio = float((gen.bank.scaling * t.A[0] @ t.B[0]).norm() / t.module.weight.norm())
            assert ratio == pytest.approx(rho, rel=1e-4)
    total = math.sqrt(sum((rho * float(t.module.weight.norm())) ** 2 for t in gen.bank.adapted))
    assert result.trace.updates[-1].adapter_norm == pytest.approx(total, rel=1e-4)
