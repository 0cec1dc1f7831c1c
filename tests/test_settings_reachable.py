"""Every sampling and PoT setting is reachable from a recipe's ``eval`` section and from ``catpot eval``'s flags.

The tables below list one non-default value per field; a field added to ``SamplingConfig``, ``EvalConfig`` or
``PoTConfig`` without a way to set it fails here (the trainer fields: ``test_config``)."""

import argparse
import dataclasses

import pytest

from evaluation.config import SamplingConfig
from pot.config import PoTConfig
from recipes.config import recipe_from_dict
from recipes.eval_command import eval_config, register
from recipes.eval_config import POT_FROM_EVAL, EvalConfig, pot_option_names
from recipes.flags import flag_name

EVAL = {
    "n": 8, "remove_finished": False, "ks": [1, 2], "strategies": ["pass", "wmaj"], "scorer": "mean_logprob",
    "answer_mode": "strict",
    "backend": "vllm", "max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 3, "prompts_per_batch": 2,
    "cache": "static", "compile": True, "stop": ["\n\n", "Q:"], "pot_updates": [0, 2], "pot_runs": 2,
    "pot_segment_tokens": 16, "pot_mode": "episode", "pot_reward": "verifier", "pot_group_size": 4, "pot_lr": 0.01,
    "pot_epochs": 2, "pot_answer": "sample",
    "pot_options": {"rank": 4, "alpha": 8.0, "layer_stride": 2, "targets": "q", "init_std": 0.02,
                    "reward_weights": [0.1, 0.2, 0.7], "baseline": "group", "ema_decay": 0.5, "betas": [0.8, 0.9],
                    "eps": 1e-6, "max_grad_norm": 2.0, "max_relative_norm": 0.1, "stale_kv": True,
                    "window": "context", "clip": 0.3, "advantage": "mean"},
}


def argv(values: dict) -> list[str]:
    out = []
    for f in dataclasses.fields(EvalConfig):
        value, flag = values[f.name], flag_name(f)
        if isinstance(value, bool):  # a flag sets the value away from its default
            out += [flag if value else "--no-" + flag[2:]]
        elif isinstance(value, dict):
            for key, item in value.items():
                out += [flag, f"{key}={item}"]
        elif f.metadata.get("repeat"):
            for item in value:
                out += [flag, item]
        elif isinstance(value, list):
            out += [flag, ",".join(map(str, value))]
        else:
            out += [flag, str(value)]
    return out


def cli(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    return parser.parse_args(["eval", "--model", "m", "--task", "arithmetic", "--out", "o", *flags])


def test_the_table_covers_every_field_at_a_non_default_value():
    assert sorted(EVAL) == sorted(f.name for f in dataclasses.fields(EvalConfig))
    defaults = EvalConfig()
    assert all(EVAL[name] != getattr(defaults, name) for name in EVAL)
    assert sorted(EVAL["pot_options"]) == sorted(pot_option_names())
    assert all(EVAL["pot_options"][name] != getattr(PoTConfig, name) for name in EVAL["pot_options"])
    # every PoTConfig field is an option or set from an EvalConfig field
    pot_fields = {f.name for f in dataclasses.fields(PoTConfig)}
    assert pot_fields == set(pot_option_names()) | set(POT_FROM_EVAL)
    assert set(POT_FROM_EVAL.values()) <= set(EVAL)


@pytest.mark.parametrize("source", ["cli", "recipe"])
def test_every_eval_sampling_and_pot_field_reaches_its_config(source):
    if source == "cli":
        cfg = eval_config(cli(*argv(EVAL)))
    else:
        cfg = recipe_from_dict({"eval": EVAL}).eval
    assert {name: getattr(cfg, name) for name in EVAL} == EVAL
    assert isinstance(cfg, SamplingConfig)  # the sampler takes the evaluation's config itself
    pot = cfg.pot_config(2, run_index=1)
    for name, value in EVAL["pot_options"].items():
        assert getattr(pot, name) == (tuple(value) if isinstance(value, list) else value), name
    assert (pot.mode, pot.reward, pot.group_size, pot.epochs, pot.answer, pot.segment_tokens, pot.episode_lr) == \
        ("episode", "verifier", 4, 2, "sample", 16, 0.01)
    assert (pot.max_updates, pot.temperature, pot.top_p, pot.seed) == (2, 0.7, 0.9, 3 * 100_003 + 1)


@pytest.mark.parametrize("option, message", [
    ("bogus=1", "eval.pot_options (--pot-option) has no PoT setting 'bogus'"),
    ("lr=0.1", "has no PoT setting 'lr'; set it with eval.pot_lr"),
    ("temperature=0.5", "has no PoT setting 'temperature'; set it with eval.temperature"),
    ("rank=0", "rank must be an integer >= 1, got 0"),
    ("rank", "--pot-option"),
])
def test_a_bad_pot_option_gives_one_line_naming_it(option, message):
    with pytest.raises(ValueError) as err:
        eval_config(cli("--pot-option", option))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_malformed_list_flag_names_the_flag():
    with pytest.raises(ValueError, match=r"^--ks must be comma-separated ints, got '1,x'$"):
        eval_config(cli("--ks", "1,x"))
    assert eval_config(cli()) == EvalConfig()  # no flags: the dataclass defaults, declared once
