"""`PoTConfig`: every knob of a policy-of-thoughts run, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGETS = ("q", "qv")
REWARDS = ("self", "verifier", "majority", "random")
BASELINES = ("ema", "group")
WINDOWS = ("segment", "context")
MODES = ("segment", "episode")
ADVANTAGES = ("std", "mean")
ANSWERS = ("greedy", "sample")


@dataclass
class PoTConfig:
    """Transient per-request LoRA adapted at test time, in one of two modes.

    ``mode="segment"``: REINFORCE on the model's own segments while it writes one answer (``pot.generator``).
    ``mode="episode"``: whole attempts per update, as the published Policy of Thoughts (arXiv 2601.20379, §3) does:
    ``group_size`` G complete attempts from the current adapter, group-relative advantages (``advantage``),
    ``epochs`` PPO-clip epochs (``clip``) per update, ``max_updates`` updates, then the ``answer`` (greedy or one
    sample) from the final adapter (``pot.episode``). Its step size ``episode_lr`` is chosen by measurement
    (benchmarks/pot_calibration.py, SmolLM2-135M-Instruct on held-out arithmetic, results/pot_calibration): the
    smallest learning rate at which one update moves the mean next-token KL to the base model (over the answer
    positions) to at least 1e-2 nats, while 16 updates keep the adapter within 5% of the adapted weights' norm
    (sqrt(Σ||ΔW||_F²) / sqrt(Σ||W||_F²)). Measured: 3e-4 gives KL 1.4e-4 after one update and 6.4e-4 after 16
    (no greedy answer changes), 3e-3 gives 1.1e-2 after one update (relative norm 9.3e-3 after 16), 1e-2 and 3e-2
    give 6.1e-2 and 3.3e-1 (1e-2 reaches 4.9e-2 of ||W|| after 16, 3e-2 the cap after 4); hence 3e-3. In segment
    mode no measured rate meets both conditions (one update reaches 1e-2 nats only at 3e-2, which is on the cap
    after 4 updates), so ``lr`` stays 3e-4.

    Segment-mode defaults: rank 8, alpha 16 (scaling alpha/r), q and v of every 4th layer, 128-token segments, at most 16 updates,
    Adam(lr 3e-4, betas (0.9, 0.95)), per-slot gradient clip 1.0, an EMA reward baseline with decay 0.9.

    Adapter cap: after every step each adapted projection's ΔW = (alpha/r)·A·B is rescaled to
    ||ΔW||_F ≤ ``max_relative_norm``·||W||_F (W the projection's weight as it computes); the trace counts the updates
    where it binds.

    Baselines: ``"ema"`` is single-sample REINFORCE, advantage r − b with b an EMA of the request's rewards;
    ``"group"`` samples ``group_size`` G ≥ 2 continuations of every segment from the same context and adapter,
    advantage r_g − mean_g(r) on each, and updates on all G (REINFORCE with a group-mean baseline; PoT updates on a
    group of G = 3 siblings). The first continuation is the one that is kept, so the output is an ordinary policy
    sample, not a best-of-G pick. ``reward="majority"`` also samples G continuations.

    Gradient window: the adapter acts on every position, and after an update the whole context is re-prefilled under
    it, but with ``window="segment"`` (default) the gradient is taken over the latest segment's positions only: the
    context's K/V are held fixed, so the loss's dependence on the adapter through them is dropped (truncated
    backpropagation through the segments). ``window="context"`` recomputes the whole sequence with gradient: the
    exact gradient of the same loss, at a forward and backward over the whole context per update.

    KV cache: after every update the context is re-prefilled with the new adapters (``stale_kv=False``, the default),
    for q-only adapters too: a q adapter on layer l leaves layer l's K/V alone but changes layer l's output and so the
    K/V of every later layer; the cache stays exact only when the adapted layer is the last attention layer.
    ``stale_kv=True`` is the explicit opt-out: keep the cache built under earlier adapters (cheaper, approximate).
    """

    rank: int = 8
    alpha: float = 16.0
    layer_stride: int = 4
    targets: str = "qv"
    init_std: float = 0.01
    segment_tokens: int = 128
    max_updates: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    reward: str = "self"
    reward_weights: tuple[float, float, float] = (0.2, 0.3, 0.5)
    baseline: str = "ema"
    group_size: int = 3
    ema_decay: float = 0.9
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    max_relative_norm: float = 0.05
    stale_kv: bool = False
    window: str = "segment"
    seed: int = 0
    mode: str = "segment"
    episode_lr: float = 3e-3
    epochs: int = 1
    clip: float = 0.2
    advantage: str = "std"
    answer: str = "greedy"

    def __post_init__(self) -> None:
        positive_ints = {"rank": self.rank, "layer_stride": self.layer_stride, "segment_tokens": self.segment_tokens}
        for name, value in positive_ints.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2, got {self.group_size!r}")
        if not isinstance(self.max_updates, int) or self.max_updates < 0:
            raise ValueError(f"max_updates must be an integer >= 0, got {self.max_updates!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {self.answer!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (isinstance(self.episode_lr, (int, float)) and math.isfinite(self.episode_lr) and self.episode_lr > 0):
            raise ValueError(f"episode_lr must be a finite number > 0, got {self.episode_lr!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        positive_floats = {
            "alpha": self.alpha, "lr": self.lr, "max_grad_norm": self.max_grad_norm,
            "max_relative_norm": self.max_relative_norm, "init_std": self.init_std, "eps": self.eps,
        }
        for name, value in positive_floats.items():
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.mode == "episode" and (self.max_updates > 0 or self.answer == "sample") and self.temperature == 0:
            raise ValueError(f"mode='episode' samples its attempts{' and answer' if self.answer == 'sample' else ''}: "
                             f"needs temperature > 0, got {self.temperature!r}")
        if self.mode == "segment" and self.samples_group and self.temperature == 0:
            raise ValueError(f"baseline={self.baseline!r} with reward={self.reward!r} samples {self.group_size} "
                             "continuations per segment: needs temperature > 0 (greedy ones are identical), "
                             f"got {self.temperature!r}")
        if len(self.reward_weights) != 3 or any(w < 0 for w in self.reward_weights):
            raise ValueError(f"reward_weights must be three non-negative numbers, got {self.reward_weights!r}")

    @property
    def samples_group(self) -> bool:
        """Whether every segment is sampled ``group_size`` times (group baseline or majority reward)."""
        return self.baseline == "group" or self.reward == "majority"
