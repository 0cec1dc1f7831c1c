"""Recipe loading: typed fields, unknown keys with suggestions, overrides with coercion, and bad input."""

import dataclasses
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from recipes.config import Recipe, load_recipe, parse_override, recipe_from_dict


def test_defaults_round_trip_through_dict():
    recipe = Recipe()
    assert recipe_from_dict(dataclasses.asdict(recipe)) == recipe


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: tiny-llama\ntrain:\n  algorithm: sft\n  cat_n: 4\nseed: 3\n")
    recipe = load_recipe(path, ["train.cat_k=2", "train.trl.learning_rate=1e-5", "eval.ks=[1,2]"])
    assert (recipe.model.name, recipe.train.algorithm, recipe.seed) == ("tiny-llama", "sft", 3)
    assert recipe.train.cat_k == 2 and recipe.eval.ks == [1, 2]
    assert recipe.train.trl["learning_rate"] == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("data", "needle"),
    [({"trian": {}}, "'train'"), ({"train": {"cat_nn": 2}}, "'cat_n'"), ({"model": {"lora_rr": 2}}, "'lora_r'")],
)
def test_unknown_key_names_closest(data, needle):
    with pytest.raises(KeyError, match=needle):
        recipe_from_dict(data)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"model": {"lora_r": "eight"}}, "model.lora_r.*'eight'"),
        ({"model": {"load_in_4bit": "maybe"}}, "model.load_in_4bit.*'maybe'"),
        ({"train": {"algorithm": "ppo"}}, "train.algorithm.*'ppo'"),
        ({"seed": 1.5}, "seed.*1.5"),
        ({"model": 3}, "model.*3"),
    ],
)
def test_wrong_types_name_field_and_value(data, needle):
    with pytest.raises(TypeError, match=needle):
        recipe_from_dict(data)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"cat_n": 0}}, "train.cat_n.*0"),
        ({"train": {"cat_n": 4, "cat_k": 5}}, "train.cat_k.*5"),
        ({"eval": {"n": 4, "ks": [1, 8]}}, r"eval.*k=8"),
        ({"train": {"cat_n": 1, "cat_k": "dynamic"}}, "train.cat_k='dynamic'.*cat_n=1"),
        ({"train": {"algorithm": "sft", "cat_clip": 2.0}}, "train.cat_clip.*'sft'.*2.0"),
        ({"train": {"cat_reduction": "token_mean"}}, "train.cat_reduction.*'grpo'.*token_mean"),
    ],
)
def test_n_and_k_bounds(data, needle):
    with pytest.raises(ValueError, match=needle):
        recipe_from_dict(data)


def test_malformed_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="malformed YAML"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_without_equals():
    with pytest.raises(ValueError, match="'train.cat_n'"):
        parse_override("train.cat_n")


@given(st.integers(min_value=1, max_value=10**6))
def test_int_override_coerces(n):
    assert recipe_from_dict({}, [f"train.cat_n={n}"]).train.cat_n == n


# A non-default value for every CAT field; a field added to the trainer args without one fails the test below.
NON_DEFAULT = {
    "grpo": {"cat_strategy": "maj", "cat_n": 8, "cat_k": 3, "cat_weight_form": "raw", "cat_p_estimator": "empirical",
             "cat_clip": 5.0, "cat_normalize": False, "cat_all_wrong_penalty": 0.5, "cat_quantile": "history",
             "cat_history_size": 16, "cat_correct_threshold": 0.75},
    "sft": {"cat_strategy": "maj", "cat_n": 8, "cat_k": 3, "cat_reduction": "token_mean"},
}


@pytest.mark.parametrize("algorithm", ["grpo", "sft"])
def test_every_cat_field_reaches_the_trainer_config_from_a_recipe(algorithm):
    from recipes.train import trainer_config
    from trainers.cat_args import CATGRPOArgs, CATSFTArgs

    args_cls = CATGRPOArgs if algorithm == "grpo" else CATSFTArgs
    values = NON_DEFAULT[algorithm]
    assert sorted(values) == sorted(f.name for f in dataclasses.fields(args_cls))
    assert all(values[name] != getattr(args_cls, name) for name in values)
    overrides = [f"train.algorithm={algorithm}", "train.trl.per_device_train_batch_size=8",
                 *(f"train.{name}={value}" for name, value in values.items())]
    if algorithm == "grpo":
        overrides.append("train.trl.num_generations=4")
    config = trainer_config(recipe_from_dict({}, overrides))
    assert {name: getattr(config, name) for name in values} == values


def test_loading_a_recipe_and_the_command_line_import_no_model_library():
    """Recipes, flags, metrics and ``catpot compare`` stay light: transformers and TRL load only where a model does."""
    code = ("import sys, recipes.cli, recipes.config, recipes.eval_command, evaluation.metrics, recipes.seed_analysis;"
            "recipes.config.load_recipe('demo');"
            "print(sorted(m for m in ('transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
