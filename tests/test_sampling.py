"""The shared-prefill sampler against model.generate, teacher forcing and the exact next-token distribution."""

import math

import pytest
import torch

from evaluation.config import SamplingConfig
from evaluation.sampling import sample

PROMPTS = ["<|im_start|>user\n12+7<|im_end|>\n<|im_start|>assistant\n", "hi there, a longer prompt"]


@pytest.fixture
def model_tok(tiny):
    model, tok = tiny
    return model.eval(), tok


def test_greedy_matches_generate(model_tok):
    model, tok = model_tok
    pools = sample(model, tok, PROMPTS, SamplingConfig(n=3, max_new_tokens=24, temperature=0))
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=24, do_sample=False)[:, enc["input_ids"].shape[1]:]
    for pool, row in zip(pools, ref.tolist()):
        expected = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        assert all(s.token_ids == expected for s in pool)


def test_statistics_match_teacher_forcing(model_tok):
    model, tok = model_tok
    pool = sample(model, tok, PROMPTS[:1], SamplingConfig(n=2, max_new_tokens=12, temperature=1.3, seed=5))[0]
    prompt_ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for s in pool:
        ids = torch.tensor([prompt_ids + s.token_ids])
        with torch.no_grad():
            log_p = model(ids).logits[0, len(prompt_ids) - 1 : -1].double().log_softmax(-1)
        token_lp = log_p.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        assert s.logprob_sum == pytest.approx(float(token_lp.sum()), abs=1e-4)
        assert s.logprob_mean == pytest.approx(float(token_lp.mean()), abs=1e-5)
        assert s.entropy_mean == pytest.approx(float(-(log_p.exp() * log_p).sum(-1).mean()), abs=1e-5)
        kl_uniform = -math.log(log_p.shape[-1]) - log_p.mean(-1)
        assert s.self_certainty == pytest.approx(float(kl_uniform.mean()), abs=1e-5)


def _top_p_reference(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-probable set whose mass reaches top_p, renormalised."""
    order = probs.argsort(descending=True)
    kept, mass = [], 0.0
    for i in order.tolist():
        kept.append(i)
        mass += float(probs[i])
        if mass >= top_p:
            break
    out = torch.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def test_first_token_distribution(model_tok):
    model, tok = model_tok
    temperature, top_p, n = 0.25, 0.7, 6000  # a random model's logits are flat: sharpen them
    pool = sample(model, tok, PROMPTS[:1], SamplingConfig(n=n, max_new_tokens=1, temperature=temperature,
                                                          top_p=top_p, seed=1))[0]
    with torch.no_grad():
        logits = model(tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)["input_ids"]).logits[0, -1]
    expected = _top_p_reference((logits.double() / temperature).softmax(-1), top_p)
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in pool]), minlength=expected.numel()).double()
    assert counts[expected == 0].sum() == 0
    support = expected > 0
    chi2 = float(((counts[support] - n * expected[support]) ** 2 / (n * expected[support])).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # Pearson χ²: mean dof, sd √(2·dof)


def test_seeded_and_independent_of_batch_and_row_removal(model_tok):
    model, tok = model_tok
    cfg = dict(n=6, max_new_tokens=80, temperature=1.5, seed=3)
    removed = sample(model, tok, PROMPTS, SamplingConfig(**cfg))
    kept = sample(model, tok, PROMPTS, SamplingConfig(**cfg, remove_finished=False))
    alone = sample(model, tok, PROMPTS[:1], SamplingConfig(**cfg))
    other_seed = sample(model, tok, PROMPTS, SamplingConfig(**{**cfg, "seed": 4}))
    finished = [s.finished for pool in removed for s in pool]
    assert any(finished) and not all(finished)  # removal actually happened mid-batch
    tokens = lambda pools: [[s.token_ids for s in pool] for pool in pools]  # noqa: E731
    assert tokens(removed) == tokens(kept)
    assert tokens(alone)[0] == tokens(removed)[0]
    assert tokens(other_seed) != tokens(removed)
    assert len({tuple(s) for s in tokens(removed)[0]}) > 1  # the n samples of a prompt differ


@pytest.mark.parametrize("temperature, top_p", [(0, 1.0), (1.5, 0.9)])
def test_static_cache_gives_the_dynamic_samples(model_tok, temperature, top_p):
    model, tok = model_tok
    cfg = dict(n=4, max_new_tokens=40, temperature=temperature, top_p=top_p, seed=2)
    dynamic = sample(model, tok, PROMPTS, SamplingConfig(**cfg))
    static = sample(model, tok, PROMPTS, SamplingConfig(**cfg, cache="static"))
    if temperature:
        finished = [s.finished for pool in static for s in pool]
        assert any(finished) and not all(finished)  # rows finished mid-batch and kept decoding, ignored
    for pool_d, pool_s in zip(dynamic, static):
        for d, s in zip(pool_d, pool_s):
            assert s.token_ids == d.token_ids and s.finished == d.finished and s.text == d.text
            for stat in ("logprob_sum", "logprob_mean", "entropy_mean", "self_certainty"):
                assert getattr(s, stat) == pytest.approx(getattr(d, stat), abs=1e-4)


@pytest.mark.gpu
def test_compiled_static_cache_on_cuda_matches_eager(model_tok):
    model, tok = model_tok
    model = model.cuda()
    cfg = dict(n=8, max_new_tokens=32, temperature=0, cache="static")
    eager = sample(model, tok, PROMPTS, SamplingConfig(**cfg))
    compiled = sample(model, tok, PROMPTS, SamplingConfig(**cfg, compile=True))
    assert [[s.token_ids for s in pool] for pool in compiled] == [[s.token_ids for s in pool] for pool in eager]


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(max_new_tokens=-1), dict(temperature=-0.5), dict(top_p=0.0),
                                    dict(backend="tgi"), dict(cache="paged"), dict(compile=True)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_compile_refused_off_cuda(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="sampling.compile needs a model on CUDA, got device cpu"):
        sample(model, tok, PROMPTS, SamplingConfig(cache="static", compile=True))


def test_bad_prompts_and_missing_vllm(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="prompts"):
        sample(model, tok, [], SamplingConfig())
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="vllm"):
            sample(model, tok, PROMPTS, SamplingConfig(backend="vllm"))


def _expected_stop(tok, reference, stops):
    """Brute force over the unstopped sample: the first prefix whose text holds a stop string ends the sample there,
    its text cut before the stop string that ends first; ``None`` if no prefix (up to EOS) holds one."""
    for j in range(1, len(reference.token_ids) + 1):
        text = tok.decode(reference.token_ids[:j], skip_special_tokens=True)
        found = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
        if found:
            stop = min(found)[2]
            return reference.token_ids[:j], text[: text.find(stop)], stop
    return None


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_stop_strings_end_samples_where_their_text_first_holds_one(model_tok, cache):
    model, tok = model_tok
    stops = ("7", "\n", "ab")  # none of them inside a special token's text
    cfg = dict(n=8, max_new_tokens=40, temperature=1.5, seed=5, cache=cache)
    free = sample(model, tok, PROMPTS, SamplingConfig(**cfg))
    stopped = sample(model, tok, PROMPTS, SamplingConfig(**cfg, stop=stops))
    outcomes = []
    for pool_free, pool_stopped in zip(free, stopped):
        for reference, s in zip(pool_free, pool_stopped):
            expected = _expected_stop(tok, reference, stops)
            outcomes.append(expected is not None)
            if expected is None:
                assert (s.token_ids, s.text, s.finished, s.stop) == (
                    reference.token_ids, reference.text, reference.finished, None)
            else:
                tokens, text, stop = expected
                assert (s.token_ids, s.text, s.finished, s.stop) == (tokens, text, True, stop)
    assert any(outcomes) and not all(outcomes)  # some samples were cut, others ran on


def test_stop_strings_are_checked():
    with pytest.raises(ValueError, match=r"sampling.stop must be a list of non-empty strings, got '\\n'"):
        SamplingConfig(stop="\n")
    with pytest.raises(ValueError, match="sampling.stop must be a list of non-empty strings"):
        SamplingConfig(stop=["", "x"])
