"""The settings of the sampler and the metrics, declared once: ``SamplingConfig`` (what to sample),
``MetricsConfig`` (what to compute from the samples) and the names every check uses.

Light on purpose (no transformers): loading a recipe imports this module, not the sampler. The strategy names come
from ``cat.strategies``, shared with training; ``avg`` and ``wmaj`` are metrics that no trainer targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from cat.strategies import BON, MAJ, PASS

ANSWER_MODES = ("flexible", "strict")
BACKENDS = ("hf", "vllm")
CACHES = ("dynamic", "static")
STRATEGIES = (PASS, MAJ, "wmaj", "avg", BON)
SCORERS = ("oracle", "self_certainty", "mean_logprob", "reward_model:ID")


def help_metadata(text: str, **extra) -> dict:
    """A field's metadata: its help, and how ``recipes.flags`` spells its flag (``flag``, ``repeat``, ``metavar``)."""
    return {"help": text, **extra}


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
    """How to draw ``n`` completions per prompt (``evaluation.sampling``).

    Every field carries its help: ``recipes.eval_config.EvalConfig`` inherits them, so the ``eval`` section of a
    recipe and the flags of ``catpot eval`` (``recipes.flags``) declare none of them again. ``SECTION`` names the
    fields in error messages.
    """

    SECTION: ClassVar[str] = "sampling"

    n: int = field(default=1, metadata=help_metadata("samples per problem"))
    max_new_tokens: int = field(default=256, metadata=help_metadata("token limit of a sample"))
    temperature: float = field(default=1.0, metadata=help_metadata("sampling temperature (0: greedy)"))
    top_p: float = field(default=1.0, metadata=help_metadata("nucleus sampling mass"))
    seed: int = field(default=0, metadata=help_metadata("sampling seed"))
    prompts_per_batch: int = field(default=4, metadata=help_metadata("prompts decoded together (each with n rows)"))
    remove_finished: bool = field(default=True, metadata=help_metadata(
        "finished rows leave the batch (dynamic cache; the samples are the same either way)"))
    backend: str = field(default="hf", metadata=help_metadata("|".join(BACKENDS)))
    cache: str = field(default="dynamic", metadata=help_metadata("dynamic|static KV cache of the hf sampler"))
    compile: bool = field(default=False, metadata=help_metadata("torch.compile the static-cache decode step (CUDA)"))
    stop: list[str] = field(default_factory=list, metadata=help_metadata(
        "a string that ends a sample (repeatable; in bash write a newline as $'\\n')", repeat=True))

    def __post_init__(self) -> None:
        where = self.SECTION
        for name in ("n", "max_new_tokens", "prompts_per_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"{where}.temperature must be >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"{where}.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.cache not in CACHES:
            raise ValueError(f"{where}.cache must be one of {CACHES}, got {self.cache!r}")
        if self.compile and self.cache != "static":
            raise ValueError(f"{where}.compile needs {where}.cache='static', got cache={self.cache!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"{where}.stop must be a list of non-empty strings, got {self.stop!r}")
        self.stop = list(self.stop)


@dataclass
class MetricsConfig(SamplingConfig):
    """The samples (``SamplingConfig``) and the test-time metrics computed from them (``evaluation.metrics.curves``):
    each strategy's accuracy at every k, with ``scorer`` ranking the samples of ``bon`` and ``wmaj``.

    ``STRATEGIES`` holds the names a subclass accepts (``recipes.eval_config.EvalConfig`` adds ``pot``).
    """

    SECTION: ClassVar[str] = "metrics"
    STRATEGIES: ClassVar[tuple[str, ...]] = STRATEGIES

    n: int = field(default=64, metadata=help_metadata("samples per problem"))  # enough for the default ks
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
                          metadata=help_metadata("the k of every curve (<= n)"))
    strategies: list[str] = field(default_factory=lambda: ["pass", "maj", "bon"],
                                  metadata=help_metadata(f"from {','.join(STRATEGIES)}, or pot (catpot eval)"))
    scorer: str = field(default="oracle", metadata=help_metadata("|".join(SCORERS) + ": the score of bon and wmaj"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ks = check_ks(list(self.ks), self.n)
        for strategy in self.strategies:
            if strategy not in self.STRATEGIES:
                raise ValueError(f"{self.SECTION}.strategies must be from {self.STRATEGIES}, got {strategy!r}")
        check_scorer(self.scorer)
