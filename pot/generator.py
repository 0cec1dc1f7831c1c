"""`PoTGenerator`: batched generation where each request trains its own transient LoRA slot on its own segments.

Test-time policy evolution with a transient per-problem adapter, after Policy of Thoughts (PoT, arXiv 2601.20379),
here on the model's own reasoning segments. Loop per round: decode up to ``segment_tokens`` tokens for every active
request with a real KV cache (G continuations per learning request when ``config.samples_group``: its cache rows are
repeated, the first continuation is kept); re-run the segments with gradient; score them; one REINFORCE step per
slot with loss −Σ_g w_g·mean_t log π(y_gt | ·), where w = r − b for the kept continuation with b an EMA of the
request's rewards (decay ``ema_decay``), or w_g = (r_g − mean(r))/G over the group (PoT's group of G = 3 siblings);
then rebuild the cache with the updated adapters (re-prefill) unless ``stale_kv``.

Gradient window (``config.window``). The adapter acts on every position: the next segment is decoded from a cache
re-prefilled under the updated adapter over the whole context. With ``window="segment"`` (default) the gradient
window covers only the latest segment's positions: the context's K/V come from a cache built without gradient, so
the loss's dependence on the adapter through the context's K/V is dropped (truncated backpropagation through the
segments; the gradient is that of the segment's log-likelihood with the context held fixed). With
``window="context"`` the whole sequence (prompt, earlier segments, segment) is recomputed with gradient and the
step uses the exact gradient of the same loss as a function of the adapter; it costs a forward and a backward over
the whole context per update.

Why re-prefill also for q-only adapters: a q adapter on layer ℓ leaves layer ℓ's K/V alone but changes layer ℓ's
output, hence the K/V of every later layer, so only a q adapter on the last attention layer would keep the cache
exact. ``stale_kv=True`` keeps the cache and treats past K/V as frozen history.

Stopping and text: a row ends at any id of ``evaluation.sampling.eos_token_ids`` (the generation config's list and the
tokenizer's EOS, as the sampler does); every text, the kept one and those the rewards see, is decoded with
``skip_special_tokens=True``, as the sampler decodes.

Random streams and tokens: the sampler's (``evaluation.sampling``): one uniform per row and step turned into a token
by the inverse CDF of the temperature/top-p warped distribution (``pick_tokens``). Continuation g of a request draws
from its own ``torch.Generator`` seeded from (seed, prompt, g); continuation 0 (the kept one) from the request's own
stream, seeded as the sampler seeds that prompt (``prompt_seed``), so sampling G continuations does not change the
kept text's draws, with a zero-effect update the output equals a run without updates, and a run without updates
samples what ``evaluation.sampling.sample`` with n = 1 samples.

Compute is counted per request as described in ``pot.trace``.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from evaluation.sampling import eos_token_ids, logit_warpers, pick_tokens, prompt_seed
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
    seed: int
    trace: PoTTrace
    device: torch.device
    rngs: list[torch.Generator] = field(default_factory=list)  # one stream per continuation; [0] is the kept one
    generated: list[int] = field(default_factory=list)
    done: bool = False
    adapt: bool = True
    updates: int = 0
    ema: float = 0.0
    confidences: list[float] = field(default_factory=list)

    def rng(self, continuation: int) -> torch.Generator:
        while len(self.rngs) <= continuation:
            seed = continuation_seed(self.seed, self.prompt, len(self.rngs))
            self.rngs.append(torch.Generator(device=self.device).manual_seed(seed))
        return self.rngs[continuation]


@dataclass
class _Segment:
    """One decoded segment of a wave: batch row j continues ``active[owner[j]]`` under adapter ``slots[j]``;
    ``kept[b]`` is request b's kept row; ``tokens``/``finished``/``entropy`` per row, from position ``start``."""

    active: list[_Request]
    owner: list[int]
    kept: list[int]
    slots: torch.Tensor
    seq: torch.Tensor
    mask: torch.Tensor
    cache: DynamicCache
    start: int
    tokens: list[list[int]]
    finished: list[bool]
    entropy: list[float]


def request_seed(seed: int, prompt: str) -> int:
    """Per-request RNG seed: the sampler's (``evaluation.sampling.prompt_seed``), which depends on the prompt, not its
    batch position, so a batch equals separate runs and a run without updates draws what the sampler draws."""
    return prompt_seed(seed, prompt)


def continuation_seed(seed: int, prompt: str, continuation: int) -> int:
    """Seed of continuation g's sampling stream: the request's own seed for g = 0 (the kept continuation)."""
    return request_seed(seed, prompt) if continuation == 0 else prompt_seed(seed, f"{continuation}\x00{prompt}")


class PoTGenerator:
    def __init__(self, model, tokenizer, config: PoTConfig | None = None, *, reward=None, gate=None,
                 max_concurrency: int = 32, adapter_dtype: torch.dtype = torch.float32) -> None:
        self.model, self.tokenizer, self.config, self.gate = model, tokenizer, config or PoTConfig(), gate
        cfg = self.config
        find_attention_projections(model)
        self.stop_ids = eos_token_ids(model, tokenizer)
        if not self.stop_ids:
            raise ValueError("tokenizer.eos_token_id and generation_config.eos_token_id are None: PoT needs an "
                             "end-of-sequence token")
        self.stop_set = set(self.stop_ids)
        self.warpers = logit_warpers(cfg.temperature, cfg.top_p)
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
        self.stop = torch.tensor(self.stop_ids, device=self.device)

    # ---------------------------------------------------------------- public
    def generate(self, prompts: list[str], max_new_tokens: int = 256, min_new_tokens: int = 0) -> list[PoTResult]:
        """One result per prompt, in order. ``min_new_tokens`` masks every stop id until that many tokens exist (as
        in ``transformers``' generate), e.g. to compare throughput at equal lengths."""
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
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

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

    def _sample(self, logits: torch.Tensor, streams: list[torch.Generator]) -> torch.Tensor:
        """The sampler's pick (``evaluation.sampling.pick_tokens``), one uniform per row from the row's stream."""
        if not self.warpers:
            return logits.argmax(-1)
        uniforms = torch.cat([torch.rand(1, generator=g, device=g.device, dtype=torch.float64) for g in streams])
        return pick_tokens(logits, uniforms, self.warpers)

    def _learns(self, request: _Request) -> bool:
        return request.adapt and request.updates < self.config.max_updates

    def _continuations(self, request: _Request) -> int:
        return self.config.group_size if self.config.samples_group and self._learns(request) else 1

    def _run_wave(self, keys, prompts, encoded, max_new_tokens, min_new_tokens) -> list[PoTResult]:
        """Every request of one wave to the end: decode a segment, update the learners, drop the finished rows,
        re-prefill the updated ones; repeat."""
        started = time.perf_counter()
        requests, slots, seq, mask = self._start_wave(keys, prompts, encoded)
        rows = list(range(len(requests)))  # one per running request: index into requests
        cache = self._prefill(seq, mask, slots)
        while rows:
            segment = self._decode_segment([requests[i] for i in rows], slots[rows].to(self.device), seq, mask,
                                           cache, max_new_tokens, min_new_tokens)
            learners = [b for b, r in enumerate(segment.active) if not r.done and self._learns(r)]
            if learners:
                self._update(segment, learners)
            running = [b for b, r in enumerate(segment.active) if not r.done]
            rows = [rows[b] for b in running]
            if rows:
                seq, mask, cache = self._continue(segment, running, learners, requests, rows, slots)
        return self._results(requests, time.perf_counter() - started)

    def _start_wave(self, keys, prompts, encoded):
        """The wave's requests (gate applied), their fresh adapter slots and the left-padded prompts."""
        cfg, tok = self.config, self.tokenizer
        requests = [_Request(k, prompts[k], encoded[k], cfg.seed, PoTTrace(num_parameters=self.num_parameters),
                             self.device) for k in keys]
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
        return requests, slots, seq, mask

    def _decode_segment(self, active, slots, seq, mask, cache, max_new_tokens, min_new_tokens) -> _Segment:
        """Up to ``segment_tokens`` tokens for every running request (``slots``: theirs), its G continuations
        when it learns from a group; the kept continuation's tokens join the request's text."""
        # batch row j continues active[owner[j]]; a request's continuations are consecutive, the first is kept
        owner = [b for b, r in enumerate(active) for _ in range(self._continuations(r))]
        kept = [owner.index(b) for b in range(len(active))]
        if len(owner) > len(active):
            index = torch.tensor(owner, device=self.device)
            seq, mask = seq[index], mask[index]
            cache.batch_select_indices(index)
        row_requests = [active[b] for b in owner]
        streams = [active[b].rng(j - kept[b]) for j, b in enumerate(owner)]
        segment = _Segment(active, owner, kept, slots[owner], seq, mask, cache, seq.shape[1],
                           [[] for _ in owner], [False] * len(owner), [0.0] * len(owner))
        steps = min(self.config.segment_tokens, max(max_new_tokens - len(r.generated) for r in active))
        for _ in range(steps):
            with torch.no_grad():
                logits = self._forward(segment.seq[:, -1:], segment.mask, cache, segment.slots)[:, -1].float()
            short = [len(r.generated) + len(segment.tokens[j]) < min_new_tokens for j, r in enumerate(row_requests)]
            if any(short):
                logits[torch.tensor(short, device=self.device).nonzero(), self.stop] = -math.inf
            nxt = self._sample(logits, streams)
            ent = torch.special.entr(logits.softmax(-1)).sum(-1).cpu()  # entr(0) = 0: masked stop ids are fine
            for j, r in enumerate(row_requests):
                if segment.finished[j]:  # carried along in the batch: not charged (a separate run would not)
                    nxt[j] = self.stop_ids[0]
                    continue
                r.trace.forward_tokens += 1
                token = int(nxt[j])
                segment.tokens[j].append(token)
                segment.entropy[j] += float(ent[j])
                segment.finished[j] = (token in self.stop_set
                                       or len(r.generated) + len(segment.tokens[j]) >= max_new_tokens)
            segment.seq = torch.cat([segment.seq, nxt.view(-1, 1)], 1)
            segment.mask = torch.cat([segment.mask, torch.ones_like(segment.mask[:, :1])], 1)
            if all(segment.finished):
                break
        for j, r in enumerate(row_requests):
            r.trace.generated_tokens += len(segment.tokens[j])
        for b, r in enumerate(active):
            r.generated += segment.tokens[kept[b]]
            r.done = segment.finished[kept[b]]
        return segment

    def _continue(self, segment: _Segment, running, learners, requests, rows, slots):
        """The kept rows of the still-running requests, with the updated requests' cache rows re-prefilled under
        their new adapters (unless ``stale_kv``); ``rows`` index the running requests into ``requests``."""
        keep = [segment.kept[b] for b in running]
        seq, mask, cache = segment.seq[keep], segment.mask[keep], segment.cache
        if keep != list(range(len(segment.owner))):
            cache.batch_select_indices(torch.tensor(keep, device=self.device))
        if not learners or self.config.stale_kv:
            return seq, mask, cache
        # only the updated requests' rows are rebuilt: the others' adapters did not change
        learner_set = set(learners)
        rebuild = [pos for pos, b in enumerate(running) if b in learner_set]
        fresh = self._prefill(seq[rebuild], mask[rebuild], slots[[rows[pos] for pos in rebuild]].to(self.device))
        if len(rebuild) == len(running):
            cache = fresh
        else:
            index = torch.tensor(rebuild, device=self.device)
            for layer, new in zip(cache.layers, fresh.layers):
                layer.keys[index], layer.values[index] = new.keys, new.values
        for pos in rebuild:
            r = requests[rows[pos]]
            r.trace.reprefill_tokens += len(r.prompt_ids) + len(r.generated) - 1
        return seq, mask, cache

    def _results(self, requests, wall: float) -> list[PoTResult]:
        peak = (torch.cuda.max_memory_allocated() if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        results = []
        for r in requests:
            r.trace.wall_s, r.trace.peak_memory_bytes = wall, peak
            results.append(PoTResult(self._decode(r.generated), list(r.generated), r.trace))
        return results

    def _window_logits(self, seq, mask, cache, rows, slots, seg_start) -> torch.Tensor:
        """Logits with gradient at the segment's positions of batch ``rows`` (see the module docstring)."""
        n = seq.shape[1] - seg_start
        index = torch.tensor(rows, device=self.device)
        if self.config.window == "context":
            logits = self._forward(seq[index, :-1], mask[index, :-1], DynamicCache(config=self.model.config), slots)
            return logits[:, -n:]
        if len(rows) == seq.shape[0]:  # every row learns: reuse the decode cache in place (the window rebuilds it)
            cache.crop(-n)
            window_cache = cache
        else:
            window_cache = DynamicCache(config=self.model.config)
            for i, layer in enumerate(cache.layers):
                window_cache.update(layer.keys[index, :, :-n], layer.values[index, :, :-n], i)
        logits = self._forward(seq[index, seg_start - 1:-1], mask[index, :-1], window_cache, slots)
        for layer in window_cache.layers:  # past K/V carry no gradient into later windows
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
        return logits

    def _update(self, segment: _Segment, learners: list[int]) -> None:
        """Gradient window over the learners' segments, rewards, one per-slot REINFORCE step, the trace."""
        tic = time.perf_counter()
        size = self.config.group_size if self.config.samples_group else 1
        # learner i owns batch rows i*G..i*G+G-1 of the window and of the reward batch (its G continuations, the
        # kept one first)
        learner_set = set(learners)
        batch_rows = [j for j, b in enumerate(segment.owner) if b in learner_set]
        group_rows = [batch_rows[i * size:(i + 1) * size] for i in range(len(learners))]
        mean_logp = self._segment_logprobs(segment, batch_rows)
        rs = [segment.active[b] for b in learners]
        logp_values = mean_logp.detach().cpu().tolist()
        batch = self._reward_batch(segment, learners, batch_rows, group_rows, logp_values, size)
        for i, r in enumerate(rs):
            r.confidences.append(logp_values[i * size])
        reward, parts = self.reward(batch)
        reward = reward.double().cpu()
        weight, advantage = self._weights(rs, reward, size)
        norms, adapter_norms, capped = self._step(rs, mean_logp, weight,
                                                 segment.slots[[rows[0] for rows in group_rows]].cpu())
        wall = time.perf_counter() - tic
        for i, (r, rows) in enumerate(zip(rs, group_rows)):
            if r.trace.failure is None and not torch.isfinite(norms[i]):
                r.trace.failure, r.done = f"non-finite gradient at update {r.updates}", True
            first = rows[0]
            # "context": each continuation also recomputes the prompt and earlier segments up to the segment's start
            earlier_tokens = len(r.generated) - len(segment.tokens[first])
            context = len(r.prompt_ids) + earlier_tokens - 1 if self.config.window == "context" else 0
            window = sum(len(segment.tokens[j]) for j in rows) + len(rows) * context
            fwd = window + sum(batch.forward_tokens[i * size:(i + 1) * size])
            r.trace.forward_tokens += fwd
            r.trace.backward_tokens += window
            at = i * size
            r.trace.updates.append(UpdateTrace(
                update=r.updates, reward=float(reward[at]),
                components={name: float(values[at]) for name, values in parts.items()},
                advantage=advantage[i], group_rewards=reward[at:at + size].tolist(),
                adapter_norm=float(adapter_norms[i]), capped_targets=int(capped[i]), grad_norm=float(norms[i]),
                entropy=segment.entropy[first] / max(len(segment.tokens[first]), 1), forward_tokens=fwd,
                backward_tokens=window, wall_s=wall,
            ))
            r.updates += 1

    def _segment_logprobs(self, segment: _Segment, batch_rows: list[int]) -> torch.Tensor:
        """mean_t log π(y_t | ·) of each of ``batch_rows``' segment tokens, with gradient into the adapters."""
        sub = torch.tensor(batch_rows, device=self.device)
        logits = self._window_logits(segment.seq, segment.mask, segment.cache, batch_rows, segment.slots[sub],
                                     segment.start)
        targets = segment.seq[sub, segment.start:]
        token_logp = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(segment.tokens[j]) for j in batch_rows], device=self.device)
        real = torch.arange(targets.shape[1], device=self.device)[None] < lengths[:, None]
        return (token_logp * real).sum(-1) / lengths.clamp_min(1)

    def _reward_batch(self, segment: _Segment, learners, batch_rows, group_rows, logp_values, size) -> SegmentBatch:
        active, owner, tokens = segment.active, segment.owner, segment.tokens
        earlier = {b: self._decode(active[b].generated[: len(active[b].generated) - len(tokens[rows[0]])])
                   for b, rows in zip(learners, group_rows)}
        return SegmentBatch(
            model=self.model, tokenizer=self.tokenizer, bank=self.bank, slots=segment.slots[batch_rows],
            request_keys=[active[owner[j]].key for j in batch_rows],
            prompts=[active[owner[j]].prompt for j in batch_rows],
            earlier_texts=[earlier[owner[j]] for j in batch_rows],
            segment_texts=[self._decode(tokens[j]) for j in batch_rows],
            segment_ids=[tokens[j] for j in batch_rows], segment_logprob=torch.tensor(logp_values),
            confidence_history=[active[owner[j]].confidences + [logp_values[k]] for k, j in enumerate(batch_rows)],
            update=min(active[b].updates for b in learners), max_updates=self.config.max_updates,
            forward_tokens=[0] * len(batch_rows), group_size=size,
        )

    def _weights(self, rs: list[_Request], reward: torch.Tensor, size: int) -> tuple[torch.Tensor, list[float]]:
        """Per batch row, the REINFORCE weight w (module docstring); per learner, the kept row's advantage. A
        non-finite reward fails its request and leaves its rows at weight 0."""
        cfg = self.config
        weight = torch.zeros(len(rs) * size, dtype=torch.float64)
        advantage = [0.0] * len(rs)
        for i, r in enumerate(rs):
            group = reward[i * size:(i + 1) * size]
            if not torch.isfinite(group).all():
                r.trace.failure, r.done = f"non-finite reward {group.tolist()} at update {r.updates}", True
                continue
            if cfg.baseline == "group":
                weight[i * size:(i + 1) * size] = (group - group.mean()) / size
                advantage[i] = float(group[0] - group.mean())
            else:
                advantage[i] = float(group[0]) - r.ema
                weight[i * size] = advantage[i]
                r.ema = cfg.ema_decay * r.ema + (1 - cfg.ema_decay) * float(group[0])
        return weight, advantage

    def _step(self, rs, mean_logp, weight, learner_slots):
        """loss = −Σ w·mean log π; one Adam step per healthy learner's slot, then the relative cap. Returns the
        gradient norms, the adapter norms and the capped-target counts per learner."""
        weight = weight.to(self.device, torch.float32)
        # a zero-weight row (failed request) must not feed NaN from its log-probs into the backward
        safe_logp = torch.where(weight != 0, mean_logp, torch.zeros_like(mean_logp))
        loss = -(weight * safe_logp).sum()
        params = self.bank.parameters_list()
        # gradients of the adapters only: the base model's parameters get no .grad, whatever their requires_grad
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        healthy = [i for i, r in enumerate(rs) if r.trace.failure is None]
        norms = torch.zeros(len(rs))
        if healthy:
            norms[healthy] = self.optimizer.step(learner_slots[healthy])
        for p in params:
            p.grad = None
        adapter_norms, capped = self.bank.cap_relative_norm(learner_slots, self.config.max_relative_norm)
        return norms, adapter_norms.cpu(), capped.cpu()
