"""Episode-mode PoT: the transient adapter learns from whole attempts (Policy of Thoughts, arXiv 2601.20379, §3).

Per request, with its own zero-initialised LoRA slot (``pot.adapters.SlotAdapterBank``, B = 0) and per-slot Adam
(``pot.optim.SlotAdam``), for update u = 0 .. U−1 (U = ``max_updates``):

1. sample G = ``group_size`` complete attempts y_1..y_G from the current adapter with ``evaluation.sampling.sample``
   (temperature T, top-p, the generation config's EOS list, stop strings, ``skip_special_tokens`` decoding);
2. rewards r_g (``pot.episode_rewards``) and group-relative advantages
   A_g = (r_g − mean r) / (std r + 1e-4) (``advantage="std"``, GRPO: Shao et al. 2024, arXiv 2402.03300, §4.1.2,
   with TRL's unbiased std and epsilon) or A_g = r_g − mean r (``"mean"``); a group whose rewards are all equal has
   A = 0 and takes no step (its compute is still charged);
3. ``epochs`` E steps of the PPO-clip surrogate (Schulman et al. 2017, arXiv 1707.06347, eq. 7), token-level ratios
   averaged per attempt, then over the group (GRPO's sequence-mean form):
       L = −(1/G) Σ_g (1/|y_g|) Σ_t min(ρ_gt A_g, clip(ρ_gt, 1−ε, 1+ε) A_g),
       ρ_gt = π_θ(y_gt | x, y_g,<t) / π_old(y_gt | x, y_g,<t),   π = softmax(logits / T)
   (π_old = the adapter that sampled the attempts, so ρ = 1 in the first epoch; log-probs at temperature T as in
   TRL's GRPO; top-p is not part of π). Each epoch is one Adam step per slot followed by the adapter-norm cap. The
   gradient is exact: the prompt is run once per request with gradient and its KV cache is repeated G-fold under
   the attempts, so gradients flow through the prompt positions too.

Then the answer: greedy (``answer="greedy"``) or one sample (``"sample"``, seed ``config.seed``) from the final
adapter, again through ``evaluation.sampling.sample``. With U = 0 only that step runs, on a zero adapter: exactly the
plain sampler's answer. ``answer_at`` returns the answers after several budgets from one run; the answer after u
updates equals the answer of a separate run with ``max_updates = u`` (the attempt seeds depend on (seed, u) only).

Compute (``EpisodeAttempt`` / ``EpisodeAnswer``), with P the base model's parameter count: forward 2·P per token
forwarded, backward 2·P per token backpropagated (only adapter gradients are taken: no weight-gradient GEMMs),
re-prefill 2·P per context token re-run because the adapter changed. An attempt is charged its decoded tokens and
its training-forward tokens as forward, a 1/G share of the prompt prefills (sampling and training) as forward
before the first update and as re-prefill after it, its training tokens (and prompt share) as backward, and its
reward's own forwards. Decoded tokens are counted up to the attempt's end, as the plain sampler's accounting does.
"""

from __future__ import annotations

import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from pot.adapters import SlotAdapterBank
from pot.config import PoTConfig
from pot.episode_rewards import EpisodeBatch, EpisodeRandomReward, EpisodeSelfReward
from pot.generator import request_seed
from pot.optim import SlotAdam
from evaluation.config import SamplingConfig
from evaluation.sampling import Sample, sample

ADVANTAGE_EPS = 1e-4  # TRL GRPOTrainer's epsilon in (r − mean) / (std + eps)


@dataclass
class EpisodeAttempt:
    """One sampled attempt: its reward, advantage and compute (tokens may be fractional: shares of a prompt)."""

    update: int
    index: int
    text: str
    reward: float
    advantage: float
    num_tokens: int
    finished: bool
    token_ids: list[int] = field(default_factory=list)
    forward_tokens: float = 0.0
    reprefill_tokens: float = 0.0
    backward_tokens: float = 0.0
    flops: float = 0.0


@dataclass
class EpisodeUpdate:
    """One update of one request: the group's rewards, whether it stepped, and the adapter after it."""

    update: int
    rewards: list[float]
    advantages: list[float]
    components: dict[str, list[float]]
    stepped: bool
    grad_norms: list[float]  # pre-clip, one per epoch (empty when the update took no step)
    clipped_fraction: float  # share of the attempt tokens whose ratio left [1 − ε, 1 + ε] in the last epoch
    adapter_norm: float
    relative_norm: float  # sqrt(Σ ||ΔW||_F²) / sqrt(Σ ||W||_F²) over the adapted projections
    wall_s: float


@dataclass
class EpisodeAnswer:
    """The answer after ``budget`` updates and everything it cost (the attempts of updates < budget included)."""

    budget: int
    text: str
    token_ids: list[int]
    finished: bool
    stop: str | None
    steps: int  # updates that changed the adapter (a group with equal rewards does not)
    generated_tokens: int  # attempts and answer
    forward_tokens: float
    reprefill_tokens: float
    backward_tokens: float
    flops: float
    wall_s: float


@dataclass
class EpisodeTrace:
    attempts: list[EpisodeAttempt] = field(default_factory=list)
    updates: list[EpisodeUpdate] = field(default_factory=list)
    failure: str | None = None
    num_parameters: int = 0


@dataclass
class EpisodeResult:
    """Answers by budget (``answer_at``) and the trace; ``text`` etc. are the answer at the largest budget."""

    answers: dict[int, EpisodeAnswer]
    trace: EpisodeTrace

    @property
    def final(self) -> EpisodeAnswer:
        return self.answers[max(self.answers)]

    @property
    def text(self) -> str:
        return self.final.text

    @property
    def token_ids(self) -> list[int]:
        return self.final.token_ids

    @property
    def finished(self) -> bool:
        return self.final.finished

    @property
    def failed(self) -> bool:
        return self.trace.failure is not None


@dataclass
class _Request:
    key: object
    prompt: str
    prompt_ids: list[int]
    seed: int
    slot: int
    trace: EpisodeTrace
    learning: bool = True
    steps: int = 0
    wall_s: float = 0.0


def attempt_seed(seed: int, update: int) -> int:
    """Sampling seed of the attempts at ``update``: a function of (seed, update) only, so a run's first u updates
    equal those of a run with budget u."""
    return zlib.crc32(f"{seed}:attempts:{update}".encode())


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """Per-attempt PPO-clip objective (to maximise): (1/|y|) Σ_t min(ρ_t A, clip(ρ_t, 1−ε, 1+ε) A).

    ``logp``/``old_logp``/``valid``: (rows, T) token log-probs under the current and the sampling policy and the
    real-token mask; ``advantages``: (rows,).
    """
    ratio = (logp - old_logp).exp()
    a = advantages[:, None]
    objective = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    return (objective * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str) -> torch.Tensor:
    """(r − mean) / (std + eps) (``"std"``, unbiased std as TRL) or r − mean (``"mean"``) within each group."""
    r = rewards.double().view(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    if kind == "std":
        centred = centred / (r.std(1, keepdim=True) + ADVANTAGE_EPS)
    return centred.flatten()


def relative_adapter_norms(bank: SlotAdapterBank, slots: torch.Tensor) -> torch.Tensor:
    """Per slot sqrt(Σ_targets ||ΔW_s||_F²) / sqrt(Σ_targets ||W||_F²)."""
    base = sum(float(t.module.weight.detach().float().pow(2).sum()) for t in bank.adapted) ** 0.5
    return bank.adapter_norm(slots).cpu() / base


def attempt_logprobs(model, tokenizer, bank: SlotAdapterBank, slots: torch.Tensor, prompt_ids: list[list[int]],
                     attempts: list[list[list[int]]], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, T) log π(y_t | x, y_<t) at ``temperature``, with gradient, of every request's G attempts (rows
    request-major) under its adapter ``slots[i]``, and the (rows, T) real-token mask.

    Each prompt runs once with gradient (left-padded, ``logits_to_keep=1``: only the first attempt token's
    distribution is needed from it); its KV cache is repeated G-fold and the right-padded attempts run on top, so
    the prompt is not recomputed G times and its positions still carry gradient.
    """
    device = next(model.parameters()).device
    size = len(attempts[0])
    if any(len(group) != size for group in attempts) or len(attempts) != len(prompt_ids):
        raise ValueError(f"attempts must hold {size} token lists for each of the {len(prompt_ids)} prompts")
    pad = tokenizer.pad_token_id or 0
    width = max(len(ids) for ids in prompt_ids)
    prompt = torch.full((len(prompt_ids), width), pad, dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(prompt)
    for row, ids in enumerate(prompt_ids):
        prompt[row, width - len(ids):] = torch.tensor(ids)
        prompt_mask[row, width - len(ids):] = 1
    cache = DynamicCache(config=model.config)
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
    with bank.use(slots):
        first = model(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions, past_key_values=cache,
                      use_cache=True, logits_to_keep=1).logits[:, -1]
    cache.batch_repeat_interleave(size)
    seqs = [s for group in attempts for s in group]
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    span = int(lengths.max())
    ids = torch.full((len(seqs), span), pad, dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
    mask = torch.cat([prompt_mask.repeat_interleave(size, 0), torch.ones_like(ids)], 1)
    positions = prompt_mask.sum(-1, keepdim=True).repeat_interleave(size, 0) + torch.arange(span, device=device)
    with bank.use(slots.repeat_interleave(size)):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True).logits
    logits = torch.cat([first.repeat_interleave(size, 0)[:, None], logits[:, :-1]], 1).float() / temperature
    logp = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    valid = (torch.arange(span, device=device)[None] < lengths[:, None]).float()
    return logp, valid


@contextmanager
def slots_by_batch(model: torch.nn.Module, bank: SlotAdapterBank, by_rows: dict[int, torch.Tensor]):
    """Activate adapter slots by the forward's batch size: ``evaluation.sampling`` prefills each prompt once (R rows)
    and decodes G rows per prompt (R·G rows), and the slot of every row must follow."""
    def pre_hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        bank.active_slots = by_rows[ids.shape[0]]

    previous = bank.active_slots
    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        bank.active_slots = previous


class EpisodeGenerator:
    """Batched episode-mode PoT: every request in its own slot; a batch equals separate runs of its requests."""

    def __init__(self, model, tokenizer, config: PoTConfig | None = None, *, reward=None, max_concurrency: int = 32,
                 stop: tuple[str, ...] | list[str] = (), adapter_dtype: torch.dtype = torch.float32) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config or PoTConfig(mode="episode")
        cfg = self.config
        if cfg.mode != "episode":
            raise ValueError(f"EpisodeGenerator needs PoTConfig(mode='episode'), got mode={cfg.mode!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if reward is None:
            if cfg.reward in ("verifier", "majority"):
                kind = "EpisodeVerifierReward(check)" if cfg.reward == "verifier" else "EpisodeMajorityReward(keys)"
                raise ValueError(f"reward={cfg.reward!r} needs reward={kind} passed to EpisodeGenerator")
            reward = EpisodeSelfReward(tokenizer, cfg.reward_weights) if cfg.reward == "self" \
                else EpisodeRandomReward(cfg.seed)
        self.reward, self.stop = reward, tuple(stop)
        self.bank = SlotAdapterBank(model, max_concurrency, rank=cfg.rank, alpha=cfg.alpha,
                                    layer_stride=cfg.layer_stride, targets=cfg.targets, init_std=cfg.init_std,
                                    dtype=adapter_dtype)
        for p in self.bank.parameters_list():
            p.requires_grad_(True)
        self.optimizer = SlotAdam(self.bank.parameters_list(), max_concurrency, lr=cfg.episode_lr, betas=cfg.betas,
                                  eps=cfg.eps, max_grad_norm=cfg.max_grad_norm)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.device = next(model.parameters()).device

    def remove(self) -> None:
        """Detach the adapter hooks: the model is the untouched base model again."""
        self.bank.remove()

    # ---------------------------------------------------------------- public
    def generate(self, prompts: list[str], max_new_tokens: int = 256, *, keys: list | None = None,
                 answer_at: list[int] | None = None) -> list[EpisodeResult]:
        """One result per prompt, in order. ``keys`` (default: the prompt indices) are what rewards see as
        ``request_keys``; ``answer_at`` (default ``[max_updates]``) are the budgets to answer after."""
        cfg = self.config
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r:.80}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        keys = list(range(len(prompts))) if keys is None else list(keys)
        if len(keys) != len(prompts):
            raise ValueError(f"keys must hold one key per prompt, got {len(keys)} for {len(prompts)} prompts")
        budgets = sorted(set([cfg.max_updates] if answer_at is None else answer_at))
        if not budgets or any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= cfg.max_updates
                              for b in budgets):
            raise ValueError(f"answer_at must hold budgets in [0, max_updates={cfg.max_updates}], got {answer_at!r}")
        results: list[EpisodeResult] = []
        width = self.bank.num_slots
        for start in range(0, len(prompts), width):
            chunk = range(start, min(start + width, len(prompts)))
            results += self._run_wave([prompts[i] for i in chunk], [keys[i] for i in chunk], max_new_tokens, budgets)
        return results

    # ---------------------------------------------------------------- internals
    def _sampling(self, n: int, max_new_tokens: int, temperature: float, seed: int, rows: int) -> SamplingConfig:
        # one chunk, no row removal: every batch row keeps its adapter slot for the whole decode
        return SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=float(temperature),
                              top_p=self.config.top_p, seed=seed, prompts_per_batch=rows, remove_finished=False,
                              stop=self.stop)

    def _sample(self, requests: list[_Request], n: int, config: SamplingConfig) -> list[list[Sample]]:
        slots = torch.tensor([r.slot for r in requests], device=self.device)
        with slots_by_batch(self.model, self.bank, {len(requests): slots,
                                                    len(requests) * n: slots.repeat_interleave(n)}):
            return sample(self.model, self.tokenizer, [r.prompt for r in requests], config)

    def _run_wave(self, prompts, keys, max_new_tokens, budgets) -> list[EpisodeResult]:
        cfg = self.config
        requests = []
        for slot, (prompt, key) in enumerate(zip(prompts, keys)):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            requests.append(_Request(key, prompt, ids, request_seed(cfg.seed, prompt), slot,
                                     EpisodeTrace(num_parameters=self.num_parameters)))
        slots = torch.tensor([r.slot for r in requests])
        self.bank.reset(slots, [r.seed for r in requests])
        self.optimizer.reset(slots)
        answers: list[dict[int, EpisodeAnswer]] = [{} for _ in requests]
        for update in range(cfg.max_updates + 1):
            if update in budgets:
                self._answer(requests, answers, update, max_new_tokens)
            if update == cfg.max_updates:
                break
            tic = time.perf_counter()
            self._update(requests, update, max_new_tokens)
            share = (time.perf_counter() - tic) / len(requests)
            for r in requests:
                r.wall_s += share
        return [EpisodeResult(a, r.trace) for a, r in zip(answers, requests)]

    def _answer(self, requests, answers, budget: int, max_new_tokens: int) -> None:
        cfg = self.config
        tic = time.perf_counter()
        temperature = 0.0 if cfg.answer == "greedy" else cfg.temperature
        pools = self._sample(requests, 1, self._sampling(1, max_new_tokens, temperature, cfg.seed, len(requests)))
        wall = (time.perf_counter() - tic) / len(requests)
        for r, pool, out in zip(requests, pools, answers):
            s = pool[0]
            context = len(r.prompt_ids)
            spent = [a for a in r.trace.attempts if a.update < budget]
            forward = sum(a.forward_tokens for a in spent) + len(s.token_ids) + (context if budget == 0 else 0)
            reprefill = sum(a.reprefill_tokens for a in spent) + (context if budget > 0 else 0)
            backward = sum(a.backward_tokens for a in spent)
            out[budget] = EpisodeAnswer(
                budget=budget, text=s.text, token_ids=list(s.token_ids), finished=s.finished, stop=s.stop,
                steps=sum(u.stepped for u in r.trace.updates if u.update < budget),
                generated_tokens=sum(a.num_tokens for a in spent) + len(s.token_ids),
                forward_tokens=forward, reprefill_tokens=reprefill, backward_tokens=backward,
                flops=2.0 * self.num_parameters * (forward + reprefill + backward), wall_s=r.wall_s + wall)

    def _update(self, requests: list[_Request], update: int, max_new_tokens: int) -> None:
        cfg, size = self.config, self.config.group_size
        tic = time.perf_counter()
        pools = self._sample(requests, size, self._sampling(size, max_new_tokens, cfg.temperature,
                                                            attempt_seed(cfg.seed, update), len(requests)))
        attempts = [s for pool in pools for s in pool]
        row_slots = torch.tensor([r.slot for r in requests], device=self.device).repeat_interleave(size)
        batch = EpisodeBatch(
            model=self.model, tokenizer=self.tokenizer, bank=self.bank, slots=row_slots,
            request_keys=[r.key for r in requests for _ in range(size)],
            request_seeds=[r.seed for r in requests for _ in range(size)],
            prompts=[r.prompt for r in requests for _ in range(size)], texts=[s.text for s in attempts],
            token_ids=[list(s.token_ids) for s in attempts], finished=[s.finished for s in attempts],
            logprob_mean=[s.logprob_mean for s in attempts], group_size=size, update=update,
            max_updates=cfg.max_updates, forward_tokens=[0] * len(attempts))
        rewards, parts = self.reward(batch)
        rewards = rewards.double().cpu()
        advantages = group_advantages(torch.nan_to_num(rewards), size, cfg.advantage)
        learners = []
        for i, r in enumerate(requests):
            group = rewards[i * size:(i + 1) * size]
            if r.learning and not torch.isfinite(group).all():
                r.trace.failure, r.learning = f"non-finite reward {group.tolist()} at update {update}", False
            if not r.learning:
                advantages[i * size:(i + 1) * size] = 0
            elif bool((advantages[i * size:(i + 1) * size] != 0).any()):
                learners.append(i)
        grad_norms: dict[int, list[float]] = {i: [] for i in learners}
        clipped = {i: 0.0 for i in learners}
        if learners:
            grad_norms, clipped = self._train(requests, learners, pools, advantages)
        norms = self.bank.adapter_norm(torch.tensor([r.slot for r in requests])).cpu()
        relative = relative_adapter_norms(self.bank, torch.tensor([r.slot for r in requests]))
        wall = time.perf_counter() - tic
        for i, r in enumerate(requests):
            stepped = i in learners and r.trace.failure is None
            r.steps += stepped
            context = len(r.prompt_ids)
            epochs = cfg.epochs if i in learners else 0
            for g in range(size):
                s, row = pools[i][g], i * size + g
                n = len(s.token_ids)
                prefill = context / size * (1 + epochs)  # the sampling prefill and one training prefill per epoch
                attempt = EpisodeAttempt(
                    update=update, index=g, text=s.text, reward=float(rewards[row]), advantage=float(advantages[row]),
                    num_tokens=n, finished=s.finished, token_ids=list(s.token_ids),
                    forward_tokens=n + epochs * n + batch.forward_tokens[row] + (prefill if update == 0 else 0),
                    reprefill_tokens=prefill if update > 0 else 0.0,
                    backward_tokens=epochs * (n + context / size))
                attempt.flops = 2.0 * self.num_parameters * (attempt.forward_tokens + attempt.reprefill_tokens
                                                             + attempt.backward_tokens)
                r.trace.attempts.append(attempt)
            r.trace.updates.append(EpisodeUpdate(
                update=update, rewards=rewards[i * size:(i + 1) * size].tolist(),
                advantages=advantages[i * size:(i + 1) * size].tolist(),
                components={name: values[i * size:(i + 1) * size].tolist() for name, values in parts.items()},
                stepped=stepped, grad_norms=grad_norms.get(i, []), clipped_fraction=clipped.get(i, 0.0),
                adapter_norm=float(norms[i]), relative_norm=float(relative[i]), wall_s=wall / len(requests)))

    def _train(self, requests, learners, pools, advantages):
        """``epochs`` PPO-clip steps for the learners; returns their per-epoch gradient norms and clipped shares."""
        cfg, size = self.config, self.config.group_size
        rows = [i * size + g for i in learners for g in range(size)]
        adv = advantages[rows].to(self.device, torch.float32)
        slots = torch.tensor([requests[i].slot for i in learners])
        params = self.bank.parameters_list()
        grad_norms: dict[int, list[float]] = {i: [] for i in learners}
        clipped: dict[int, float] = {}
        old = None
        for _ in range(cfg.epochs):
            logp, valid = attempt_logprobs(self.model, self.tokenizer, self.bank, slots.to(self.device),
                                           [requests[i].prompt_ids for i in learners],
                                           [[list(s.token_ids) for s in pools[i]] for i in learners], cfg.temperature)
            if old is None:
                old = logp.detach()
            objective = clipped_surrogate(logp, old, adv, valid, cfg.clip)
            loss = -objective.view(len(learners), size).mean(1).sum()  # slots are independent: one backward
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            healthy = torch.tensor([requests[i].trace.failure is None for i in learners])
            norms = torch.full((len(learners),), float("nan"))
            if bool(healthy.any()):
                norms[healthy] = self.optimizer.step(slots[healthy]).float()
            for p in params:
                p.grad = None
            self.bank.cap_relative_norm(slots, cfg.max_relative_norm)
            with torch.no_grad():
                ratio = (logp.detach() - old).exp()
                outside = ((ratio - 1).abs() > cfg.clip).float() * valid
                share = (outside.view(len(learners), size, -1).sum((1, 2))
                         / valid.view(len(learners), size, -1).sum((1, 2)).clamp_min(1)).cpu()
            for j, i in enumerate(learners):
                grad_norms[i].append(float(norms[j]))
                clipped[i] = float(share[j])
                if not bool(torch.isfinite(norms[j])) and requests[i].trace.failure is None:
                    requests[i].trace.failure = f"non-finite gradient at update {len(requests[i].trace.updates)}"
                    requests[i].learning = False
        return grad_norms, clipped
