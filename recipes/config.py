"""Recipe files: YAML → typed dataclasses, with `--set section.field=value` overrides.

A recipe has the sections ``model``, ``task``, ``train``, ``eval``, ``logging`` plus ``output_dir`` and ``seed``.
Unknown keys are errors that name the key and the closest valid one; values are checked against the
dataclass field types so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from recipes.eval_config import EvalConfig
from trainers.cat_args import CATGRPOArgs, CATSFTArgs


@dataclass
class ModelConfig:
    """``model``: what to load and the LoRA adapter to train on top of it."""

    name: str = "smollm2-135m-instruct"
    dtype: str = "auto"
    load_in_4bit: Literal["auto"] | bool = "auto"
    trust_remote_code: bool = False
    cache_dir: str | None = None
    adapter: str | None = None  # a trained peft adapter to continue from (e.g. a CE warm-up run's ``final``)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str = "all-linear"
    use_lora: bool = True

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError(f"model.name must name a model, got {self.name!r}")
        if self.lora_r < 1:
            raise ValueError(f"model.lora_r must be an int >= 1, got {self.lora_r!r}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"model.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:  # also refuses nan
            raise ValueError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.adapter is not None and not self.adapter.strip():
            raise ValueError(f"model.adapter must be a directory or null, got {self.adapter!r}")


@dataclass
class TaskConfig:
    """``task``: the training problems and how every prompt is shown, in training and in the evaluation after it.

    ``size``: how many problems (null: all); ``subset``: ``first`` (the first ``size`` rows of the split) or
    ``random`` (a sample seeded by the recipe's ``seed``; datasets only). Arithmetic generates ``size`` problems
    from the seed, and ``subset`` must stay ``first`` there. ``prompt_template`` places the problem at ``{problem}``
    (datasets) or ``{expression}`` (arithmetic). ``system_prompt``, ``fewshot`` (worked examples from the train
    split, never from the evaluated one; ``fewshot_format``: ``turns`` or ``text``) and ``chat_template`` (false: a
    plain-text prompt, for base models) apply to the evaluation too (``recipes.tasks.base``).
    """

    name: str = "arithmetic"
    split: str = "train"
    size: int | None = None
    subset: Literal["first", "random"] = "first"
    levels: list[int] | None = None
    prompt_template: str | None = None
    system_prompt: str | None = None
    chat_template: bool = True
    fewshot: int = 0
    fewshot_format: Literal["turns", "text"] | None = None
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig(CATGRPOArgs, CATSFTArgs):
    """``train``: the algorithm, the ``cat_*`` fields of the trainer configs and raw TRL arguments.

    The ``cat_*`` fields are ``CATGRPOArgs``' and ``CATSFTArgs``' own (names, defaults, checks; see ``trainers``), so
    every one of them is a recipe field; ``sft_target`` picks the SFT completion: the gold ``answer`` or the worked
    ``solution`` (MATH, GSM8K). ``trl`` goes verbatim to TRL's ``GRPOConfig``/``SFTConfig``.
    """

    algorithm: Literal["grpo", "sft"] = "grpo"
    sft_target: Literal["answer", "solution"] = "answer"
    trl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the ``cat_*`` fields with this algorithm's args class (errors name ``train.<field>``) and keep the
        values it settles on (a former strategy name becomes the current one); a field only the other algorithm has,
        set away from its default, is an error."""
        own_cls = CATGRPOArgs if self.algorithm == "grpo" else CATSFTArgs
        own = self.cat_fields()
        for other in dataclasses.fields(CATSFTArgs if own_cls is CATGRPOArgs else CATGRPOArgs):
            if other.name not in own and getattr(self, other.name) != other.default:
                raise ValueError(f"train.{other.name} does not apply to algorithm {self.algorithm!r}, "
                                 f"got {getattr(self, other.name)!r}")
        args = own_cls(**own)
        try:
            args.validate_cat_fields(prefix="train.")
        except ValueError as error:
            raise ValueError(f"train.{error}") from None
        self.cat_strategy = args.cat_strategy

    def cat_fields(self) -> dict[str, Any]:
        """The ``cat_*`` keyword arguments of this algorithm's trainer config (checked when the section was built)."""
        own_cls = CATGRPOArgs if self.algorithm == "grpo" else CATSFTArgs
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(own_cls)}

    def trainer_arguments(self, config_class: type) -> dict[str, Any]:
        """The recipe's keyword arguments of ``config_class`` (TRL's config plus the CAT fields): ``trl`` checked
        against its field types (``check_trl_fields``) and the ``cat_*`` fields (``cat_fields``)."""
        return {**check_trl_fields(self.trl, config_class), **self.cat_fields()}


@dataclass
class EvalSection(EvalConfig):
    """``eval``: the evaluation run after training (``catpot eval``'s options) and the problems it uses.

    ``task`` defaults to the training task; ``size``/``subset`` as in ``task`` (the first ``size`` problems by
    default); ``levels`` filters MATH/MATH-500 by difficulty. ``every_steps: S`` also evaluates the policy every S
    optimizer steps during training (``recipes.eval_callback``; needs ``enabled``).
    """

    enabled: bool = False
    task: str | None = None
    split: str = "test"
    size: int | None = None
    subset: Literal["first", "random"] = "first"
    levels: list[int] | None = None
    every_steps: int | None = None  # null, not 0: a recipe saved before the field existed resumes unchanged

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.every_steps is not None:
            if isinstance(self.every_steps, bool) or not isinstance(self.every_steps, int) or self.every_steps < 1:
                raise ValueError(f"eval.every_steps must be a positive int or null, got {self.every_steps!r}")
            if not self.enabled:
                raise ValueError(f"eval.every_steps={self.every_steps} needs eval.enabled: true")


@dataclass
class LoggingConfig:
    """``logging``: W&B. ``mode: auto`` is online with an API key and offline without one.

    ``project``: a value set here wins; unset (null), ``$WANDB_PROJECT`` if set, else ``catpot``. ``group`` and
    ``job_type`` file the run in W&B (``catpot experiment`` sets the experiment and the arm when they are unset);
    unset, W&B's own ``$WANDB_RUN_GROUP``/``$WANDB_JOB_TYPE`` apply.
    """

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "outputs/run"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.output_dir.strip():
            raise ValueError(f"output_dir must be a non-empty path, got {self.output_dir!r}")


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def value_matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a field's type: bool is not an int, an int is a float, an Enum takes its values.

    A type YAML cannot express (a callable, a class) is left to the code that takes the value.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple) or annotation in (list, tuple):
        items = typing.get_args(annotation)
        item = items[0] if len(items) == 1 or (len(items) == 2 and items[1] is Ellipsis) else Any
        return isinstance(value, list) and all(value_matches(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == member.value for member in annotation)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    return True


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in valid:
            raise KeyError(f"unknown key {name!r}{_closest(str(key), valid)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value if value is not None else {}, name)
        elif value_matches(value, annotation):
            kwargs[key] = float(value) if annotation is float else value
        else:
            raise TypeError(f"{name} expects {_type_name(annotation)}, got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as error:  # a section's own check: make sure the message says which section
        message = str(error)
        raise ValueError(message if not where or message.startswith(where) else f"{where}: {message}") from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# TRL arguments catpot sets itself: a recipe value would break resuming or logging.
RESERVED_TRL = {
    "output_dir": "checkpoints must stay in output_dir for --resume to find them; set output_dir instead",
    "resume_from_checkpoint": "pass --resume instead",
}


def check_trl_fields(trl: dict, config_class: type) -> dict:
    """``train.trl`` checked against the TRL config's field types before anything is loaded.

    YAML 1.1 reads ``1e-5`` as a string: for a float field such a string becomes the float. Floats must be finite
    (``learning_rate: .nan`` would train on NaN without an error).
    """
    hints = typing.get_type_hints(config_class)
    fields = [f.name for f in dataclasses.fields(config_class) if f.init]
    checked = {}
    for key, value in trl.items():
        name = f"train.trl.{key}"
        if key in RESERVED_TRL:
            raise ValueError(f"{name} cannot be set: {RESERVED_TRL[key]}")
        if key.startswith("cat_"):
            raise ValueError(f"{name}: set train.{key} instead (the cat_* fields live in the train section)")
        if key not in fields:
            raise TypeError(f"{name} is not a {config_class.__mro__[1].__name__} argument{_closest(key, fields)}")
        annotation = hints[key]
        if isinstance(value, str) and value_matches(1.0, annotation) and not value_matches(value, annotation):
            try:
                value = float(value)
            except ValueError:
                pass
        if not value_matches(value, annotation):
            raise TypeError(f"{name} expects {_type_name(annotation)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        checked[key] = value
    return checked


def _set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TypeError(f"--set {dotted}: {part!r} is not a section")
    node[leaf] = value


def _split_override(text: str, flag: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{flag} expects key=value, got {text!r}")
    return key.strip(), raw


def _parse_value(raw: str) -> Any:
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string; a number is what the user meant.
            value = float(value)
        except ValueError:
            pass
    return value


def _problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or str(error).strip().splitlines()[0]


def parse_override(text: str, flag: str = "--set") -> tuple[str, Any]:
    """``"train.cat_n=16"`` → ``("train.cat_n", 16)``; the value is parsed as YAML (ints, floats, lists, null)."""
    key, raw = _split_override(text, flag)
    try:
        return key, _parse_value(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"{flag} {key}: {raw!r} is not a YAML value ({_problem(error)})") from None


def _annotation_at(dotted: str) -> Any:
    """The type of the recipe field at ``dotted`` (``Any`` inside a free-form mapping such as ``train.trl``)."""
    cls: Any = Recipe
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return Any
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return Any  # an unknown key: _build names it
        cls = hints[part]
    return cls


def _override_value(key: str, raw: str) -> Any:
    """The value of ``--set key=raw``: YAML-parsed, except that a string field keeps the text as written.

    Without that, ``logging.run_name=inf`` or ``output_dir=2024`` would become a number and be refused.
    """
    annotation, text = _annotation_at(key), raw.strip()
    try:
        value = _parse_value(raw)
    except yaml.YAMLError as error:
        if value_matches(text, annotation):
            return text
        raise ValueError(f"--set {key}: {raw!r} is not a YAML value ({_problem(error)})") from None
    if annotation is not Any and not value_matches(value, annotation) and value_matches(text, annotation):
        return text
    return value


def recipe_from_dict(data: dict, overrides: list[str] = ()) -> Recipe:
    if not isinstance(data, dict):
        raise TypeError(f"a recipe must be a mapping of sections, got {type(data).__name__} {data!r:.60}")
    data = dict(data)
    for text in overrides:
        key, raw = _split_override(text, "--set")
        _set_path(data, key, _override_value(key, raw))
    return _build(Recipe, data, "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load a recipe YAML file (a shipped recipe's name such as ``demo`` also works) and apply ``--set`` overrides."""
    path = resolve_recipe_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"recipe {path} is not a text file (byte {error.start} is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"malformed YAML in {path}{where}: {_problem(error)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"recipe {path} must be a mapping of sections (model, task, train, ...), "
                        f"got a YAML {type(data).__name__}")
    return recipe_from_dict(data, overrides)


RECIPES_DIR = Path(__file__).parent


def shipped_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml")) + sorted(RECIPES_DIR.glob("paper/*.yaml")) + sorted(
        RECIPES_DIR.glob("experiments/*/*.yaml"))


def resolve_recipe_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = RECIPES_DIR / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"recipe file not found: {path}")
