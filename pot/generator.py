"""`PoTGenerator`: batched generation where each request trains its own transient LoRA slot on its own segments.

Loop per round (pot_anchors.md §3): decode up to ``segment_tokens`` tokens for every active request with a real KV
cache (G continuations per learning request when ``config.samples_group``: its cache rows are repeated, the first
continuation is kept); re-run the segments with gradient on top of the detached prefix cache (the gradient window is
the latest segment only); score them; one REINFORCE step per slot with loss −Σ_g w_g·mean_t log π(y_gt | ·), where
w = r − b for the kept continuation with b an EMA of the request's rewards (decay 0.9, brief), or
w_g = (r_g − mean(r))/G over the group; then rebuild the cache with the updated adapters (re-prefill) unless
``stale_kv``.

Why re-prefill also for q-only adapters: a q adapter on layer ℓ leaves layer ℓ's K/V alone but changes layer ℓ's
output, hence the K/V of every later layer, so only a q adapter on the last attention layer would keep the cache
exact. ``stale_kv=True`` keeps the cache and treats past K/V as frozen history (truncated BPTT, the brief's choice).
"""

from __future__ import annotations

import math
import resource
import time
import zlib
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

from pot.adapters import SlotAdapterBank, find_attention_projections
from pot.config import PoTConfig
from pot.optim import SlotAdam
from pot.rewards import MajorityReward, RandomReward, SegmentBatch, SelfReward
from pot.trace import PoTTrace, UpdateTrace


@dataclass
class PoTResult:
    text: str
    token_ids: list[int]
    trace: PoTTrace

    @property
    def failed(self) -> bool:
        return self.trace.failure is not None


@dataclass
class _Request:
    key: int
    prompt: str
    prompt_ids: list[int]
    rng: torch.Generator
    trace: PoTTrace
    generated: list[int] = field(default_factory=list)
    done: bool = False
    adapt: bool = True
    updates: int = 0
    ema: float = 0.0
    confidences: list[float] = field(default_factory=list)


def request_seed(seed: int, prompt: str) -> int:
    """Per-request RNG seed: depends on the prompt, not its batch position, so a batch equals separate runs."""
    return zlib.crc32(f"{seed}:{prompt}".encode())


class PoTGenerator:
    def __init__(self, model, tokenizer, config: PoTConfig | None = None, *, reward=None, gate=None,
                 max_concurrency: int = 32, adapter_dtype: torch.dtype = torch.float32) -> None:
        self.model, self.tokenizer, self.config, self.gate = model, tokenizer, config or PoTConfig(), gate
        cfg = self.config
        find_attention_projections(model)
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer.eos_token_id is None: PoT needs an end-of-sequence token")
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                # bnb 4-bit repacks weights in eval no-grad forwards on AVX512-BF16 CPUs, killing later gradients.
                module.support_avx512bf16_for_cpu = False
        if reward is None:
            if cfg.reward in ("verifier", "majority"):
                kind = "VerifierReward(check)" if cfg.reward == "verifier" else "MajorityReward(answer_fn)"
                raise ValueError(f"reward={cfg.reward!r} needs reward={kind} passed to PoTGenerator")
            reward = SelfReward(tokenizer, cfg.reward_weights) if cfg.reward == "self" else RandomReward(cfg.seed)
        if isinstance(reward, MajorityReward) and not cfg.samples_group:
            raise ValueError(f"a MajorityReward needs G continuations: set reward='majority' or baseline='group' "
                             f"in PoTConfig, got reward={cfg.reward!r}, baseline={cfg.baseline!r}")
        self.reward = reward
        self.bank = SlotAdapterBank(model, max_concurrency, rank=cfg.rank, alpha=cfg.alpha,
                                    layer_stride=cfg.layer_stride, targets=cfg.targets, init_std=cfg.init_std,
                                    dtype=adapter_dtype)
        for p in self.bank.parameters_list():
            p.requires_grad_(True)
        self.optimizer = SlotAdam(self.bank.parameters_list(), max_concurrency, lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.eps, max_grad_norm=cfg.max_grad_norm)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.device = next(model.parameters()).device

    # ---------------------------------------------------------------- public
    def generate(self, prompts: list[str], max_new_tokens: int = 256, min_new_tokens: int = 0) -> list[PoTResult]:
        """One result per prompt, in order. ``min_new_tokens`` masks EOS until that many tokens exist (as in
        ``transformers``' generate), e.g. to compare throughput at equal lengths."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be an integer in [0, max_new_tokens={max_new_tokens}], "
                             f"got {min_new_tokens!r}")
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        encoded = []
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else []
            if not ids:
                raise ValueError(f"prompts[{i}] is empty or not a string: {prompt!r}")
            encoded.append(ids)
        results: list[PoTResult] = []
        width = self.bank.num_slots
        for start in range(0, len(prompts), width):
            results += self._run_wave(list(range(start, min(start + width, len(prompts)))), prompts, encoded,
                                      max_new_tokens, min_new_tokens)
        return results

    # ---------------------------------------------------------------- internals
    def _forward(self, ids, mask, cache, slots):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1]:]
        with self.bank.use(slots):
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                              use_cache=True).logits

    def _prefill(self, seq, mask, slots) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        if seq.shape[1] > 1:
            with torch.no_grad():
                self._forward(seq[:, :-1], mask[:, :-1], cache, slots)
        return cache

    def _sample(self, logits: torch.Tensor, seq: torch.Tensor, requests: list[_Request]) -> torch.Tensor:
        cfg = self.config
        if cfg.temperature == 0:
            return logits.argmax(-1)
        scores = TemperatureLogitsWarper(cfg.temperature)(seq, logits.float())
        if cfg.top_p < 1:
            scores = TopPLogitsWarper(cfg.top_p)(seq, scores)
        probs = scores.softmax(-1).cpu()
        picks = [torch.multinomial(probs[i], 1, generator=r.rng) for i, r in enumerate(requests)]
        return torch.cat(picks).to(logits.device)

    def _learns(self, request: _Request) -> bool:
        return request.adapt and request.updates < self.config.max_updates

    def _continuations(self, request: _Request) -> int:
        return self.config.group_size if self.config.samples_group and self._learns(request) else 1

    def _run_wave(self, keys, prompts, encoded, max_new_tokens, min_new_tokens) -> list[PoTResult]:
        cfg, tok = self.config, self.tokenizer
        started = time.perf_counter()
        requests = [
            _Request(k, prompts[k], encoded[k], torch.Generator().manual_seed(request_seed(cfg.seed, prompts[k])),
                     PoTTrace(num_parameters=self.num_parameters))
            for k in keys
        ]
        if self.gate is not None:
            for r, on in zip(requests, self.gate.decide(self.model, tok, [r.prompt for r in requests])):
                r.adapt, r.trace.gated_off = bool(on), not on
        slots = torch.arange(len(requests))
        self.bank.reset(slots, [request_seed(cfg.seed, r.prompt) for r in requests])
        self.optimizer.reset(slots)

        width = max(len(r.prompt_ids) for r in requests)
        seq = torch.full((len(requests), width), tok.pad_token_id or 0, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(seq)
        for row, r in enumerate(requests):
            seq[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
            r.trace.forward_tokens += len(r.prompt_ids) - 1
        rows = list(range(len(requests)))  # one per running request: index into requests
        cache = self._prefill(seq, mask, slots)

        while rows:
            active = [requests[i] for i in rows]
            # batch row j continues active[owner[j]]; a request's continuations are consecutive, the first is kept
            owner = [b for b, r in enumerate(active) for _ in range(self._continuations(r))]
            kept = {b: owner.index(b) for b in range(len(active))}
            if len(owner) > len(active):
                index = torch.tensor(owner, device=self.device)
                seq, mask = seq[index], mask[index]
                cache.batch_select_indices(index)
            row_requests = [active[b] for b in owner]
            row_slots = slots[[rows[b] for b in owner]].to(self.device)
            seg_start = seq.shape[1]
            segments: list[list[int]] = [[] for _ in owner]
            finished = [False] * len(owner)
            entropy = [0.0] * len(owner)
            steps = min(cfg.segment_tokens, max(max_new_tokens - len(r.generated) for r in active))
            for _ in range(steps):
                with torch.no_grad():
                    logits = self._forward(seq[:, -1:], mask, cache, row_slots)[:, -1].float()
                short = [len(r.generated) + len(segments[j]) < min_new_tokens for j, r in enumerate(row_requests)]
                if any(short):
                    logits[torch.tensor(short, device=self.device), tok.eos_token_id] = -math.inf
                nxt = self._sample(logits, seq, row_requests)
                ent = torch.special.entr(logits.softmax(-1)).sum(-1).cpu()  # entr(0) = 0: masked EOS is fine
                for j, r in enumerate(row_requests):
                    r.trace.forward_tokens += 1
                    if finished[j]:
                        nxt[j] = tok.eos_token_id
                        continue
                    token = int(nxt[j])
                    segments[j].append(token)
                    entropy[j] += float(ent[j])
                    finished[j] = token == tok.eos_token_id or len(r.generated) + len(segments[j]) >= max_new_tokens
                seq = torch.cat([seq, nxt.view(-1, 1)], 1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                if all(finished):
                    break
            for j, r in enumerate(row_requests):
                r.trace.generated_tokens += len(segments[j])
            for b, r in enumerate(active):
                r.generated += segments[kept[b]]
                r.done = finished[kept[b]]

            learners = [b for b, r in enumerate(active) if not r.done and self._learns(r)]
            if learners:
                cache = self._update(active, owner, learners, row_slots, seq, mask, cache, seg_start, segments,
                                     entropy)
            running = [b for b, r in enumerate(active) if not r.done]
            rows = [rows[b] for b in running]
            if not rows:
                break
            keep = [kept[b] for b in running]
            seq, mask = seq[keep], mask[keep]
            if learners and not cfg.stale_kv:
                cache = self._prefill(seq, mask, slots[rows].to(self.device))
                for i in rows:
                    requests[i].trace.forward_tokens += len(requests[i].prompt_ids) + len(requests[i].generated) - 1
            elif keep != list(range(len(owner))):
                cache.batch_select_indices(torch.tensor(keep, device=self.device))

        wall = time.perf_counter() - started
        peak = (torch.cuda.max_memory_allocated() if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        results = []
        for r in requests:
            r.trace.wall_s, r.trace.peak_memory_bytes = wall, peak
            ids = r.generated[:-1] if r.generated and r.generated[-1] == tok.eos_token_id else r.generated
            results.append(PoTResult(tok.decode(ids, skip_special_tokens=True), list(r.generated), r.trace))
        return results

    def _update(self, active, owner, learners, row_slots, seq, mask, cache, seg_start, segments, entropy):
        """Gradient window over the segments, rewards, one per-slot REINFORCE step; returns the (detached) cache."""
        cfg, tok = self.config, self.tokenizer
        tic = time.perf_counter()
        cache.crop(-(seq.shape[1] - seg_start))
        window = seq[:, seg_start - 1:-1]
        targets = seq[:, seg_start:]
        logits = self._forward(window, mask[:, :-1], cache, row_slots).float()
        token_logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(s) for s in segments], device=self.device)
        real = torch.arange(targets.shape[1], device=self.device)[None] < lengths[:, None]
        mean_logp = (token_logp * real).sum(-1) / lengths.clamp_min(1)
        for layer in cache.layers:  # past K/V carry no gradient into later windows (truncated BPTT)
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()

        # learner i owns batch rows group_rows[i] (its G continuations, the kept one first) = rows i*G..i*G+G-1 of
        # the reward batch
        size = cfg.group_size if cfg.samples_group else 1
        learner_set = set(learners)
        batch_rows = [j for j, b in enumerate(owner) if b in learner_set]
        group_rows = [batch_rows[i * size:(i + 1) * size] for i in range(len(learners))]
        rs = [active[b] for b in learners]
        earlier = {b: tok.decode(active[b].generated[: len(active[b].generated) - len(segments[rows[0]])])
                   for b, rows in zip(learners, group_rows)}
        sub = torch.tensor(batch_rows, device=self.device)
        logp_values = mean_logp.detach().cpu().tolist()
        batch = SegmentBatch(
            model=self.model, tokenizer=tok, bank=self.bank, slots=row_slots[sub],
            request_keys=[active[owner[j]].key for j in batch_rows],
            prompts=[active[owner[j]].prompt for j in batch_rows],
            earlier_texts=[earlier[owner[j]] for j in batch_rows],
            segment_texts=[tok.decode(segments[j]) for j in batch_rows], segment_ids=[segments[j] for j in batch_rows],
            segment_logprob=torch.tensor([logp_values[j] for j in batch_rows]),
            confidence_history=[active[owner[j]].confidences + [logp_values[j]] for j in batch_rows],
            update=min(r.updates for r in rs), max_updates=cfg.max_updates, forward_tokens=[0] * len(batch_rows),
            group_size=size,
        )
        for r, rows in zip(rs, group_rows):
            r.confidences.append(logp_values[rows[0]])
        reward, parts = self.reward(batch)
        reward = reward.double().cpu()
        weight = torch.zeros(len(owner), dtype=torch.float64)
        advantage = [0.0] * len(learners)
        for i, (r, rows) in enumerate(zip(rs, group_rows)):
            group = reward[i * size:(i + 1) * size]
            if not torch.isfinite(group).all():
                r.trace.failure, r.done = f"non-finite reward {group.tolist()} at update {r.updates}", True
                continue
            if cfg.baseline == "group":
                weight[rows] = (group - group.mean()) / size
                advantage[i] = float(group[0] - group.mean())
            else:
                advantage[i] = float(group[0]) - r.ema
                weight[rows[0]] = advantage[i]
                r.ema = cfg.ema_decay * r.ema + (1 - cfg.ema_decay) * float(group[0])
        weight = weight.to(self.device, torch.float32)
        # a zero-weight row (non-learner, failed request) must not feed NaN from its log-probs into the backward
        safe_logp = torch.where(weight != 0, mean_logp, torch.zeros_like(mean_logp))
        loss = -(weight * safe_logp).sum()
        params = self.bank.parameters_list()
        # gradients of the adapters only: the base model's parameters get no .grad, whatever their requires_grad
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        healthy = [i for i, r in enumerate(rs) if r.trace.failure is None]
        learner_slots = row_slots[[rows[0] for rows in group_rows]].cpu()
        norms = torch.zeros(len(rs))
        if healthy:
            norms[healthy] = self.optimizer.step(learner_slots[healthy])
        for p in params:
            p.grad = None
        adapter_norms = self.bank.cap_norm(learner_slots, cfg.max_adapter_norm).cpu()
        wall = time.perf_counter() - tic
        for i, (r, rows) in enumerate(zip(rs, group_rows)):
            if r.trace.failure is None and not torch.isfinite(norms[i]):
                r.trace.failure, r.done = f"non-finite gradient at update {r.updates}", True
            tokens = sum(len(segments[j]) for j in rows)
            fwd = tokens + sum(batch.forward_tokens[i * size:(i + 1) * size])
            r.trace.forward_tokens += fwd
            r.trace.backward_tokens += tokens
            first = i * size
            r.trace.updates.append(UpdateTrace(
                update=r.updates, reward=float(reward[first]),
                components={name: float(values[first]) for name, values in parts.items()},
                advantage=advantage[i], group_rewards=reward[first:first + size].tolist(),
                adapter_norm=float(adapter_norms[i]), grad_norm=float(norms[i]),
                entropy=entropy[rows[0]] / max(len(segments[rows[0]]), 1), forward_tokens=fwd, backward_tokens=tokens,
                wall_s=wall,
            ))
            r.updates += 1
        return cache
