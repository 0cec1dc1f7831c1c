"""The settings of the sampler and the metrics, declared once: ``SamplingConfig`` and the names every check uses.

Light on purpose (no transformers): loading a recipe imports this module, not the sampler. The strategy names come
from ``cat.strategies``, shared with training; ``avg`` and ``wmaj`` are metrics that no trainer targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from cat.strategies import BON, MAJ, PASS

ANSWER_MODES = ("flexible", "strict")
BACKENDS = ("hf", "vllm")
CACHES = ("dynamic", "static")
STRATEGIES = (PASS, MAJ, "wmaj", "avg", BON)
SCORERS = ("oracle", "self_certainty", "mean_logprob", "reward_model:ID")


def check_ks(ks: list[int], n: int) -> list[int]:
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must hold positive ints, got {k!r}")
        if k > n:
            raise ValueError(f"every k must be <= n={n}, got k={k}")
    return sorted(set(ks))


def check_scorer(spec: str) -> str:
    """Validate a scorer name (``reward_model:`` needs a non-empty model id/path)."""
    if spec in SCORERS[:3] or (isinstance(spec, str) and spec.startswith("reward_model:") and len(spec) > 13):
        return spec
    raise ValueError(f"scorer must be one of {SCORERS}, got {spec!r}")


@dataclass
class SamplingConfig:
    """How to draw ``n`` completions per prompt (``evaluation.sampling``)."""

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    prompts_per_batch: int = 4  # live batch = prompts_per_batch · n rows
    remove_finished: bool = True  # dynamic cache only
    backend: str = "hf"
    cache: str = "dynamic"  # "static": fixed-shape KV cache (see evaluation.sampling)
    compile: bool = False  # torch.compile the static-cache decode step (CUDA only)
    stop: tuple[str, ...] = ()  # strings that end a sample (see evaluation.sampling)

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "prompts_per_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sampling.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"sampling.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.cache not in CACHES:
            raise ValueError(f"sampling.cache must be one of {CACHES}, got {self.cache!r}")
        if self.compile and self.cache != "static":
            raise ValueError(f"sampling.compile needs sampling.cache='static', got cache={self.cache!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"sampling.stop must be a list of non-empty strings, got {self.stop!r}")
        self.stop = tuple(self.stop)
