"""``EvalConfig``: the ``eval`` section of a recipe and the flags of ``catpot eval`` (``recipes.flags`` derives them
from its fields), declared once; it builds the sampler's ``SamplingConfig`` and PoT's ``PoTConfig``.

Light on purpose (no transformers, no torch): loading a recipe imports this module, not the sampler.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from evaluation.config import ANSWER_MODES, BACKENDS, SCORERS, STRATEGIES, SamplingConfig, check_ks, check_scorer
from pot.config import ANSWERS, MODES, REWARDS, PoTConfig


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


# PoTConfig fields an EvalConfig sets itself: from a pot_* field of its own, or from the evaluation's sampling
POT_FROM_EVAL = {"mode": "pot_mode", "reward": "pot_reward", "group_size": "pot_group_size",
                 "epochs": "pot_epochs", "answer": "pot_answer", "segment_tokens": "pot_segment_tokens",
                 "max_updates": "pot_updates", "lr": "pot_lr", "episode_lr": "pot_lr",
                 "temperature": "temperature", "top_p": "top_p", "seed": "seed"}


@dataclass
class EvalConfig:
    """The ``eval`` section of a recipe / the flags of ``catpot eval`` (``--<field>`` with dashes).

    PoT: the ``pot_*`` fields are the knobs an evaluation usually varies; every other ``pot.PoTConfig`` field
    (adapter rank, targets, cap, baseline, ...) is set through ``pot_options`` (``--pot-option KEY=VALUE``).
    """

    n: int = field(default=64, metadata=_help("samples per problem"))
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
                          metadata=_help("the k of every curve (<= n)"))
    strategies: list[str] = field(default_factory=lambda: ["pass", "maj", "bon"],
                                  metadata=_help(f"from {','.join((*STRATEGIES, 'pot'))}"))
    scorer: str = field(default="oracle", metadata=_help("|".join(SCORERS) + ": the score of bon and wmaj"))
    answer_mode: str = field(default="flexible", metadata=_help(
        "flexible (last number as fallback) | strict (boxed or a final-answer statement only; unfinished outputs "
        "are wrong)"))
    backend: str = field(default="hf", metadata=_help("|".join(BACKENDS)))
    max_new_tokens: int = field(default=256, metadata=_help("token limit of a sample"))
    temperature: float = field(default=1.0, metadata=_help("sampling temperature (0: greedy)"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass"))
    seed: int = field(default=0, metadata=_help("sampling seed"))
    prompts_per_batch: int = field(default=4, metadata=_help("prompts decoded together (each with n rows)"))
    cache: str = field(default="dynamic", metadata=_help("dynamic|static KV cache of the hf sampler"))
    compile: bool = field(default=False, metadata=_help("torch.compile the static-cache decode step (CUDA)"))
    stop: list[str] = field(default_factory=list, metadata=_help(
        "a string that ends a sample (repeatable; in bash write a newline as $'\\n')", repeat=True))
    pot_updates: list[int] = field(default_factory=lambda: [0, 4, 8, 16],
                                   metadata=_help("PoT adapter-update budgets (strategy pot)"))
    pot_runs: int = field(default=4, metadata=_help("PoT runs per problem and budget (best-of-k over them)"))
    pot_segment_tokens: int = field(default=128, metadata=_help("tokens between PoT adapter updates (segment)"))
    pot_mode: str = field(default="segment", metadata=_help(
        "segment (updates while writing one answer) | episode (G whole attempts per update, then the answer)"))
    pot_reward: str = field(default="self", metadata=_help(
        "self | verifier (oracle: positive control) | majority (label-free) | random (negative control)"))
    pot_group_size: int = field(default=3, metadata=_help("G attempts (episode) or continuations (segment)"))
    pot_lr: float | None = field(default=None, metadata=_help(
        "PoT adapter learning rate; none: the mode's own (PoTConfig.lr / PoTConfig.episode_lr)"))
    pot_epochs: int = field(default=1, metadata=_help("PPO-clip epochs per update (episode mode)"))
    pot_answer: str = field(default="greedy", metadata=_help(
        "greedy | sample: the answer after the updates (episode mode)"))
    pot_options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "any other PoTConfig field, e.g. rank=16 or max_relative_norm=0.1 (repeatable)", flag="--pot-option",
        metavar="KEY=VALUE"))

    def __post_init__(self) -> None:
        self.ks = check_ks(list(self.ks), self.n)
        for strategy in self.strategies:
            if strategy not in (*STRATEGIES, "pot"):
                raise ValueError(f"eval.strategies must be from {(*STRATEGIES, 'pot')}, got {strategy!r}")
        for budget in self.pot_updates:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                raise ValueError(f"eval.pot_updates must hold ints >= 0, got {budget!r}")
        if isinstance(self.pot_runs, bool) or not isinstance(self.pot_runs, int) or self.pot_runs < 1:
            raise ValueError(f"eval.pot_runs must be a positive int, got {self.pot_runs!r}")
        self._check_pot()
        check_scorer(self.scorer)
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"eval.answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"eval.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "vllm" and "pot" in self.strategies:
            raise ValueError("eval.strategies 'pot' needs eval.backend 'hf' (PoT updates adapter weights in torch), "
                             "got backend 'vllm'")
        if self.backend == "vllm" and self.scorer == "self_certainty":
            raise ValueError("eval.scorer 'self_certainty' needs eval.backend 'hf' (vLLM returns no full "
                             "next-token distributions), got backend 'vllm'")
        self.sampling()  # validates the sampling fields (cache, compile, temperature, ...)

    def _check_pot(self) -> None:
        for name, flag, value, allowed in (("pot_mode", "--pot-mode", self.pot_mode, MODES),
                                           ("pot_reward", "--pot-reward", self.pot_reward, REWARDS),
                                           ("pot_answer", "--pot-answer", self.pot_answer, ANSWERS)):
            if value not in allowed:
                raise ValueError(f"eval.{name} ({flag}) must be one of {allowed}, got {value!r}")
        for name, flag, value, low in (("pot_group_size", "--pot-group-size", self.pot_group_size, 2),
                                       ("pot_epochs", "--pot-epochs", self.pot_epochs, 1),
                                       ("pot_segment_tokens", "--pot-segment-tokens", self.pot_segment_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"eval.{name} ({flag}) must be an int >= {low}, got {value!r}")
        lr = self.pot_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr <= 0):
            raise ValueError(f"eval.pot_lr (--pot-lr) must be a finite number > 0 or null, got {lr!r}")
        if not isinstance(self.pot_options, dict):
            raise ValueError(f"eval.pot_options (--pot-option) must be a mapping, got {self.pot_options!r}")
        settable = pot_option_names()
        for key in self.pot_options:
            if key not in settable:
                own = POT_FROM_EVAL.get(key)
                where = f"; set it with eval.{own}" if own else ""
                raise ValueError(f"eval.pot_options (--pot-option) has no PoT setting {key!r}{where} (settable: "
                                 f"{', '.join(settable)})")
        if "pot" in self.strategies or self.pot_options:
            try:
                self.pot_config(max(self.pot_updates, default=0), 0)
            except (TypeError, ValueError) as err:
                raise ValueError(f"eval PoT settings (--pot-*, --temperature): {err}") from None

    def pot_config(self, budget: int, run_index: int = 0):
        """The ``pot.PoTConfig`` of PoT run ``run_index`` with ``budget`` updates (seeds differ between runs)."""
        lr = {} if self.pot_lr is None else {"episode_lr" if self.pot_mode == "episode" else "lr": float(self.pot_lr)}
        # YAML and --pot-option give lists where PoTConfig's defaults are tuples (betas, reward_weights)
        options = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(PoTConfig, k, None), tuple) else v
                   for k, v in self.pot_options.items()}
        return PoTConfig(mode=self.pot_mode, reward=self.pot_reward, group_size=self.pot_group_size,
                         epochs=self.pot_epochs, answer=self.pot_answer, max_updates=budget,
                         temperature=self.temperature, top_p=self.top_p, segment_tokens=self.pot_segment_tokens,
                         seed=self.seed * 100_003 + run_index, **lr, **options)

    def sampling(self) -> SamplingConfig:
        """The ``SamplingConfig`` of this evaluation: every field of it with the same name here."""
        own = {f.name for f in dataclasses.fields(SamplingConfig)} & {f.name for f in dataclasses.fields(self)}
        values = {name: getattr(self, name) for name in own}
        values["stop"] = tuple(values["stop"])
        return SamplingConfig(**values)


def pot_option_names() -> list[str]:
    """The ``pot.PoTConfig`` fields ``EvalConfig.pot_options`` may set: those without a field of their own here."""
    return [f.name for f in dataclasses.fields(PoTConfig) if f.name not in POT_FROM_EVAL]


# fields added after records were first written: at their defaults an evaluation's identity leaves them out, so
# records written before them stay resumable
FIELDS_ADDED_LATER = ("stop", "pot_mode", "pot_reward", "pot_group_size", "pot_lr", "pot_epochs", "pot_answer",
                      "pot_options")

