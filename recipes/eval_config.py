"""``EvalConfig``: the ``eval`` section of a recipe and the flags of ``catpot eval`` (``recipes.flags`` derives them
from its fields), declared once. It is the evaluation's ``MetricsConfig`` (it extends it: the sampler's settings and
the metrics) and builds PoT's ``PoTConfig``.

Light on purpose (no transformers): loading a recipe imports this module, not the sampler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evaluation.config import ANSWER_MODES, STRATEGIES, MetricsConfig, help_metadata
from pot.config import PoTConfig

# PoTConfig fields an EvalConfig sets itself: from a pot_* field of its own, or from the evaluation's sampling
POT_FROM_EVAL = {"mode": "pot_mode", "reward": "pot_reward", "group_size": "pot_group_size",
                 "epochs": "pot_epochs", "answer": "pot_answer", "segment_tokens": "pot_segment_tokens",
                 "max_updates": "pot_updates", "lr": "pot_lr", "episode_lr": "pot_lr",
                 "temperature": "temperature", "top_p": "top_p", "seed": "seed"}


@dataclass
class EvalConfig(MetricsConfig):
    """The ``eval`` section of a recipe / the flags of ``catpot eval`` (``--<field>`` with dashes).

    Sampling and metrics: the fields of ``MetricsConfig``, inherited with their help and checks (``strategies`` may
    also hold ``pot``).
    PoT: the ``pot_*`` fields are the knobs an evaluation usually varies, with ``PoTConfig``'s defaults and checks;
    every other ``pot.PoTConfig`` field (adapter rank, targets, cap, baseline, ...) is set through ``pot_options``
    (``--pot-option KEY=VALUE``).
    """

    SECTION: ClassVar[str] = "eval"
    STRATEGIES: ClassVar[tuple[str, ...]] = (*STRATEGIES, "pot")

    answer_mode: str = field(default="flexible", metadata=help_metadata(
        "flexible (last number as fallback) | strict (boxed or a final-answer statement only; unfinished outputs "
        "are wrong)"))
    pot_updates: list[int] = field(default_factory=lambda: [0, 4, 8, 16],
                                   metadata=help_metadata("PoT adapter-update budgets (strategy pot)"))
    pot_runs: int = field(default=4, metadata=help_metadata("PoT runs per problem and budget (best-of-k over them)"))
    pot_segment_tokens: int = field(default=PoTConfig.segment_tokens,
                                    metadata=help_metadata("tokens between PoT adapter updates (segment)"))
    pot_mode: str = field(default=PoTConfig.mode, metadata=help_metadata(
        "segment (updates while writing one answer) | episode (G whole attempts per update, then the answer)"))
    pot_reward: str = field(default=PoTConfig.reward, metadata=help_metadata(
        "self | verifier (oracle: positive control) | majority (label-free) | random (negative control)"))
    pot_group_size: int = field(default=PoTConfig.group_size,
                                metadata=help_metadata("G attempts (episode) or continuations (segment)"))
    pot_lr: float | None = field(default=None, metadata=help_metadata(
        "PoT adapter learning rate; none: the mode's own (PoTConfig.lr / PoTConfig.episode_lr)"))
    pot_epochs: int = field(default=PoTConfig.epochs,
                            metadata=help_metadata("PPO-clip epochs per update (episode mode)"))
    pot_answer: str = field(default=PoTConfig.answer, metadata=help_metadata(
        "greedy | sample: the answer after the updates (episode mode)"))
    pot_options: dict[str, Any] = field(default_factory=dict, metadata=help_metadata(
        "any other PoTConfig field, e.g. rank=16 or max_relative_norm=0.1 (repeatable)", flag="--pot-option",
        metavar="KEY=VALUE"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for budget in self.pot_updates:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                raise ValueError(f"eval.pot_updates must hold ints >= 0, got {budget!r}")
        if isinstance(self.pot_runs, bool) or not isinstance(self.pot_runs, int) or self.pot_runs < 1:
            raise ValueError(f"eval.pot_runs must be a positive int, got {self.pot_runs!r}")
        self._check_pot()
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"eval.answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")
        if self.backend == "vllm" and "pot" in self.strategies:
            raise ValueError("eval.strategies 'pot' needs eval.backend 'hf' (PoT updates adapter weights in torch), "
                             "got backend 'vllm'")
        if self.backend == "vllm" and self.scorer == "self_certainty":
            raise ValueError("eval.scorer 'self_certainty' needs eval.backend 'hf' (vLLM returns no full "
                             "next-token distributions), got backend 'vllm'")
        if self.stop and "pot" in self.strategies and self.pot_mode == "segment":
            raise ValueError(f"eval.stop needs eval.pot_mode 'episode' with strategy 'pot' (segment-mode PoT ends "
                             f"only at EOS or the token limit), got stop={self.stop!r}")

    def _check_pot(self) -> None:
        """PoT's settings, checked by ``PoTConfig`` itself; its messages are given the eval field and flag."""
        if not isinstance(self.pot_options, dict):
            raise ValueError(f"eval.pot_options (--pot-option) must be a mapping, got {self.pot_options!r}")
        settable = pot_option_names()
        for key in self.pot_options:
            if key not in settable:
                own = POT_FROM_EVAL.get(key)
                where = f"; set it with eval.{own}" if own else ""
                raise ValueError(f"eval.pot_options (--pot-option) has no PoT setting {key!r}{where} (settable: "
                                 f"{', '.join(settable)})")
        lr = self.pot_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise ValueError(f"eval.pot_lr (--pot-lr) must be a number or null, got {lr!r}")
        values = self._pot_values(max(self.pot_updates, default=0), 0)
        if "pot" not in self.strategies:  # PoT's sampling is checked only where PoT samples
            values["temperature"] = 1.0
        try:
            PoTConfig(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(_pot_error(str(err), self.pot_options)) from None

    def _pot_values(self, budget: int, run_index: int) -> dict[str, Any]:
        lr = {} if self.pot_lr is None else {"episode_lr" if self.pot_mode == "episode" else "lr": float(self.pot_lr)}
        # YAML and --pot-option give lists where PoTConfig's defaults are tuples (betas, reward_weights)
        options = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(PoTConfig, k, None), tuple) else v
                   for k, v in self.pot_options.items()}
        return dict(mode=self.pot_mode, reward=self.pot_reward, group_size=self.pot_group_size, epochs=self.pot_epochs,
                    answer=self.pot_answer, max_updates=budget, temperature=self.temperature, top_p=self.top_p,
                    segment_tokens=self.pot_segment_tokens, seed=self.seed * 100_003 + run_index, **lr, **options)

    def pot_config(self, budget: int, run_index: int = 0) -> PoTConfig:
        """The ``pot.PoTConfig`` of PoT run ``run_index`` with ``budget`` updates (seeds differ between runs)."""
        return PoTConfig(**self._pot_values(budget, run_index))


def pot_option_names() -> list[str]:
    """The ``pot.PoTConfig`` fields ``EvalConfig.pot_options`` may set: those without a field of their own here."""
    return [f.name for f in dataclasses.fields(PoTConfig) if f.name not in POT_FROM_EVAL]


# fields added after records were first written: at their defaults an evaluation's identity leaves them out, so
# records written before them stay resumable
FIELDS_ADDED_LATER = ("stop", "remove_finished", "pot_mode", "pot_reward", "pot_group_size", "pot_lr", "pot_epochs",
                      "pot_answer", "pot_options")


def _pot_error(message: str, options: dict) -> str:
    """``PoTConfig``'s message about field ``name`` (it starts ``"name must ..."``), naming where the value came
    from: an eval field and its flag, or ``--pot-option``."""
    name, _, rest = message.partition(" must ")
    if rest and name in options:
        return f"eval.pot_options (--pot-option) {message}"
    if rest and name in POT_FROM_EVAL:
        own = POT_FROM_EVAL[name]
        return f"eval.{own} (--{own.replace('_', '-')}) must {rest}"
    return f"eval PoT settings (--pot-*, --temperature): {message}"
