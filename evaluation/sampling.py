"""Batched n-samples-per-prompt sampler with a shared prefill and removal of finished rows.

Each prompt is prefilled ONCE; its KV cache is expanded to n rows with ``DynamicCache.batch_repeat_interleave`` and
decoded with temperature / top-p (transformers' ``TemperatureLogitsWarper`` / ``TopPLogitsWarper``). A row that emits
EOS is dropped from the live batch with ``DynamicCache.batch_select_indices`` so early finishers cost nothing.

Reproducibility: every prompt owns a ``torch.Generator`` seeded from ``(seed, prompt)``; at each step it draws one
uniform per sample of that prompt (finished or not) and the token is the inverse-CDF pick
``searchsorted(cumsum(p), u)``. The draws therefore depend only on the prompt and the seed, not on which other prompts
share the batch or which rows were already removed — removal and resumption give the same samples.

Stop sequences (``stop``): a sample also ends at the first generated token that completes one of these strings, as
transformers' ``StopStringCriteria`` decides over the generated tokens (tokens that overhang either end of the string
count, so "\n\nQ" completes "\n\n"). Its text is cut before the stop string (vLLM's default,
``include_stop_str_in_output=False``), its tokens keep the one that completed it (that compute was spent), and
``Sample.stop`` records which string ended it.

With ``cache="static"`` the n-fold prefill is copied into a ``transformers.StaticCache`` of fixed shape (prompt +
``max_new_tokens`` positions) and every decode step has the same tensor shapes, so ``compile=True`` (CUDA only) can
run it through ``model.get_compiled_call`` (inductor, ``reduce-overhead`` CUDA graphs, as ``generate`` does) and fuse
the vocabulary-wide pick and statistics with ``torch.compile(fullgraph=True)``. Rows
stay in that batch after EOS (a static shape is the point); their draws and statistics are ignored, the host checks
for "all finished" every ``STATIC_SYNC_EVERY`` steps only, and the samples equal the dynamic path's.

Per sample we record, under the model's raw (temperature 1, unwarped) next-token distribution p_t:
log p_t(y_t) summed and averaged, the token entropy H(p_t) = −Σ_j p_tj log p_tj, and self-certainty
KL(U ‖ p_t) = −log V − (1/V) Σ_j log p_tj (Kang et al. 2025, "Scalable Best-of-N Selection via Self-Certainty"),
both averaged over the generated tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StaticCache, StopStringCriteria, TemperatureLogitsWarper, TopPLogitsWarper

from evaluation.config import SamplingConfig

STATIC_SYNC_EVERY = 8  # decode steps between host checks of "every row finished" on the static path


@dataclass
class Sample:
    """One completion and the token statistics the verifier-free scorers need."""

    token_ids: list[int]
    text: str
    logprob_sum: float
    logprob_mean: float
    entropy_mean: float
    self_certainty: float
    finished: bool  # emitted EOS or completed a stop string before max_new_tokens
    stop: str | None = None  # the stop string that ended it (None: EOS or the token limit)


@dataclass
class VLLMModel:
    """A ``vllm.LLM`` and the LoRA adapter every request samples with (``vllm.lora.request.LoRARequest``; None:
    the base model)."""

    llm: Any
    lora_request: Any = None


def prompt_seed(seed: int, prompt: str) -> int:
    """A stable 63-bit seed for ``prompt`` (independent of batch composition and of Python's hash salt)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def eos_token_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def sample(model, tokenizer, prompts: list[str], config: SamplingConfig) -> list[list[Sample]]:
    """``config.n`` samples for each already-templated prompt string, in prompt order."""
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of str, got {prompts!r:.80}")
    if config.backend == "vllm":
        return _sample_vllm(model, prompts, config)
    if config.compile and model.device.type != "cuda":
        raise ValueError(f"sampling.compile needs a model on CUDA, got device {model.device}")
    sample_batch = _sample_batch_static if config.cache == "static" else _sample_batch
    out: list[list[Sample]] = []
    for start in range(0, len(prompts), config.prompts_per_batch):
        out += sample_batch(model, tokenizer, prompts[start : start + config.prompts_per_batch], config)
    return out


def _prefill(model, tokenizer, prompts: list[str], cfg: SamplingConfig):
    """One forward over the prompts; returns next-token logits, attention mask and cache, each repeated n-fold."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    mask = enc["attention_mask"]
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True).logits[:, -1].float()
    cache.batch_repeat_interleave(cfg.n)
    return logits.repeat_interleave(cfg.n, 0), mask.repeat_interleave(cfg.n, 0), cache


def logit_warpers(temperature: float, top_p: float) -> list:
    """transformers' temperature and top-p warpers for these settings; none for greedy (temperature 0)."""
    if temperature == 0:
        return []
    return [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])


def pick_tokens(logits: torch.Tensor, uniforms: torch.Tensor, warpers: list) -> torch.Tensor:
    """One token per row: argmax without warpers, else the inverse CDF of the warped distribution at the row's
    uniform draw in [0, 1) (so a row's token depends on its own draw only, whatever the batch)."""
    if not warpers:
        return logits.argmax(-1)
    scores = logits
    for warp in warpers:
        scores = warp(None, scores)
    cdf = scores.softmax(-1).double().cumsum(-1)
    u = uniforms.to(cdf.device, torch.float64).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_max(logits.shape[-1] - 1)


class _Picker:
    """Turns next-token logits and per-row uniforms into tokens (inverse CDF of the warped distribution)."""

    def __init__(self, model, tokenizer, prompts: list[str], cfg: SamplingConfig):
        device = model.device
        self.n = cfg.n
        self.generators = [torch.Generator(device=device).manual_seed(prompt_seed(cfg.seed, p)) for p in prompts]
        self.eos = torch.tensor(eos_token_ids(model, tokenizer), device=device)
        self.stop = StopStringCriteria(tokenizer, list(cfg.stop)) if cfg.stop else None
        self.warpers = logit_warpers(cfg.temperature, cfg.top_p)

    def stopped(self, generated: torch.Tensor) -> torch.Tensor:
        """Rows whose last generated token completes a stop string (``generated``: each row's tokens so far)."""
        if self.stop is None:
            return torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        return self.stop(generated, None).to(generated.device)

    def uniforms(self) -> torch.Tensor:
        """One draw per row of every prompt (finished or not), so draws never depend on which rows are live."""
        return torch.cat([torch.rand(self.n, generator=g, device=g.device, dtype=torch.float64)
                          for g in self.generators])

    def pick_with_statistics(self, logits: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The picked tokens and their (3, rows) statistics (see ``_token_statistics``): one fusable step."""
        picked = self.pick(logits, uniforms)
        return picked, torch.stack(_token_statistics(logits, picked))

    def pick(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return pick_tokens(logits, uniforms, self.warpers)


def _token_statistics(logits: torch.Tensor, picked: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log p(picked), entropy H(p) and self-certainty KL(U ‖ p) of each row's raw distribution, in float64."""
    log_p = logits.log_softmax(-1)
    chosen = log_p.gather(-1, picked[:, None]).squeeze(-1).double()
    entropy = -(log_p.exp() * log_p).sum(-1).double()
    certainty = (-math.log(logits.shape[-1]) - log_p.mean(-1)).double()
    return chosen, entropy, certainty


@torch.no_grad()
def _sample_batch(model, tokenizer, prompts: list[str], cfg: SamplingConfig) -> list[list[Sample]]:
    device = model.device
    logits, mask, cache = _prefill(model, tokenizer, prompts, cfg)
    picker = _Picker(model, tokenizer, prompts, cfg)
    n, rows = cfg.n, len(prompts) * cfg.n
    live = torch.arange(rows, device=device)  # original row index of each live row
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logp_sum, entropy_sum, certainty_sum = (torch.zeros(rows, dtype=torch.float64, device=device) for _ in range(3))
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    # every live row has generated the same number of tokens: one (live rows, step) block holds them all
    generated = torch.zeros(rows, cfg.max_new_tokens, dtype=torch.long, device=device) if cfg.stop else None
    by_stop = torch.zeros(rows, dtype=torch.bool, device=device)  # ended by a stop string (not EOS)
    for step in range(cfg.max_new_tokens):
        picked = picker.pick(logits, picker.uniforms()[live])
        record = ~done[live]
        rows_now = live[record]
        chosen, entropy, certainty = _token_statistics(logits[record], picked[record])
        logp_sum[rows_now] += chosen
        entropy_sum[rows_now] += entropy
        certainty_sum[rows_now] += certainty
        for row, token in zip(rows_now.tolist(), picked[record].tolist()):
            tokens[row].append(token)
        hit_eos = torch.isin(picked, picker.eos) & record
        if generated is not None:
            generated[live, step] = picked
            hit_stop = picker.stopped(generated[live, : step + 1]) & record & ~hit_eos
            by_stop[live[hit_stop]] = True
            hit_eos |= hit_stop
        finished[live[hit_eos]] = True
        done[live[hit_eos]] = True
        if bool(done.all()):
            break
        if cfg.remove_finished and bool(hit_eos.any()):
            keep = (~hit_eos).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live, mask, picked = live[keep], mask[keep], picked[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        logits = model(input_ids=picked[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()
    return [[_make_sample(tokenizer, tokens[r], logp_sum[r], entropy_sum[r], certainty_sum[r], finished[r],
                          cfg.stop if by_stop[r] else ())
             for r in range(p * n, (p + 1) * n)] for p in range(len(prompts))]


@torch.no_grad()
def _sample_batch_static(model, tokenizer, prompts: list[str], cfg: SamplingConfig) -> list[list[Sample]]:
    device = model.device
    logits, mask, prefilled = _prefill(model, tokenizer, prompts, cfg)
    picker = _Picker(model, tokenizer, prompts, cfg)
    rows, prompt_length = mask.shape
    cache = StaticCache(config=model.config, max_cache_len=prompt_length + cfg.max_new_tokens)
    for layer, source in zip(cache.layers, prefilled.layers):
        layer.update(source.keys, source.values)  # allocates the static tensors and writes the prompt positions
    del prefilled
    # positions past the current step are hidden by the causal mask, so one fixed-shape mask serves every step
    mask = torch.cat([mask, mask.new_ones(rows, cfg.max_new_tokens)], dim=-1)
    next_position = mask[:, :prompt_length].sum(-1, keepdim=True)
    forward = model.get_compiled_call(None) if cfg.compile else model
    # the vocabulary-wide sampling and statistics ops dominate a small model's step unless fused
    pick = torch.compile(picker.pick_with_statistics, fullgraph=True) if cfg.compile else picker.pick_with_statistics
    tokens = torch.zeros(rows, cfg.max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    sums = torch.zeros(3, rows, dtype=torch.float64, device=device)  # log p, entropy, self-certainty
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    by_stop = torch.zeros(rows, dtype=torch.bool, device=device)  # ended by a stop string (not EOS)
    for step in range(cfg.max_new_tokens):
        picked, statistics = pick(logits, picker.uniforms())
        active = ~done
        sums += statistics * active
        tokens[:, step] = picked
        lengths += active
        hit_eos = torch.isin(picked, picker.eos)
        if picker.stop is not None:
            hit_stop = picker.stopped(tokens[:, : step + 1]) & active & ~hit_eos
            by_stop |= hit_stop
            done |= hit_stop
        done |= hit_eos
        if step + 1 == cfg.max_new_tokens or ((step + 1) % STATIC_SYNC_EVERY == 0 and bool(done.all())):
            break
        # CUDA-graph outputs are overwritten by the next replay: keep a copy
        logits = forward(input_ids=picked[:, None], attention_mask=mask, position_ids=next_position + step,
                         past_key_values=cache, use_cache=True).logits[:, -1].float().clone()
    tokens, lengths, sums = tokens.tolist(), lengths.tolist(), sums.cpu()
    finished, by_stop = done.tolist(), by_stop.tolist()
    return [[_make_sample(tokenizer, tokens[r][: lengths[r]], sums[0, r], sums[1, r], sums[2, r], finished[r],
                          cfg.stop if by_stop[r] else ())
             for r in range(p * cfg.n, (p + 1) * cfg.n)] for p in range(len(prompts))]


def _make_sample(tokenizer, ids, logp_sum, entropy_sum, certainty_sum, finished, stops=()) -> Sample:
    """``stops``: the stop strings, for a sample that one of them ended (else empty)."""
    length = max(len(ids), 1)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    stop = None
    if stops:
        text, stop = cut_at_stop(text, stops)
        if stop is None:  # completed inside a special token's text, which the decoded text leaves out
            stop = cut_at_stop(tokenizer.decode(ids), stops)[1]
    return Sample(token_ids=ids, text=text, logprob_sum=float(logp_sum), logprob_mean=float(logp_sum) / length,
                  entropy_mean=float(entropy_sum) / length, self_certainty=float(certainty_sum) / length,
                  finished=bool(finished), stop=stop)


def cut_at_stop(text: str, stops) -> tuple[str, str | None]:
    """``(text before the stop string, that string)`` for the stop string whose first occurrence ends first (the one
    that ended generation); ``(text, None)`` when none occurs (the sample ended at EOS)."""
    ends = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
    if not ends:
        return text, None
    end, _, stop = min(ends)
    return text[: end - len(stop)], stop


def _sample_vllm(model, prompts: list[str], cfg: SamplingConfig) -> list[list[Sample]]:
    """vLLM backend: ``model`` is a ``vllm.LLM`` or a ``VLLMModel`` (an LLM and a LoRA adapter).

    Each prompt gets its own ``SamplingParams`` seeded with ``prompt_seed(cfg.seed, prompt)``, as the hf sampler
    seeds its per-prompt generator, so a prompt's samples do not depend on which prompts share the call and sample i
    of two problems does not share a seed. Per-token entropy and self-certainty are not available there (NaN).
    """
    try:
        import vllm
    except ImportError as err:
        raise ValueError("sampling.backend 'vllm' needs the vllm package, which is not installed") from err
    llm, lora_request = (model.llm, model.lora_request) if isinstance(model, VLLMModel) else (model, None)
    params = [vllm.SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=prompt_seed(cfg.seed, prompt), max_tokens=cfg.max_new_tokens, logprobs=0,
                                  stop=list(cfg.stop) or None)
              for prompt in prompts]
    results = []
    for request in llm.generate(prompts, params, lora_request=lora_request):
        samples = []
        for c in request.outputs:
            lp = sum(next(iter(d.values())).logprob for d in (c.logprobs or []))
            # finish_reason "stop": EOS or a stop string (stop_reason holds the string; its text is already cut)
            stop = c.stop_reason if isinstance(c.stop_reason, str) else None
            samples.append(Sample(list(c.token_ids), c.text, lp, lp / max(len(c.token_ids), 1), float("nan"),
                                  float("nan"), c.finish_reason == "stop", stop))
        results.append(samples)
    return results
