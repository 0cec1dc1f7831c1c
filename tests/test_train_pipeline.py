"""`catpot train` end to end on the tiny Llama: outputs, W&B offline run, no silent overwrite, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from recipes.cli import main
from recipes.config import recipe_from_dict
from recipes.train import _check_same_recipe, _completed_recipe, last_complete_checkpoint, trainer_config

TINY_RECIPE = {
    "model": {"name": "tiny-llama", "dtype": "float32", "lora_r": 4, "lora_alpha": 8,
              "lora_target_modules": ["q_proj", "v_proj"]},
    "task": {"name": "arithmetic", "size": 8},
    "train": {"algorithm": "grpo", "cat_strategy": "pass", "cat_n": 4,
              "trl": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                      "max_completion_length": 4, "learning_rate": 1e-3, "save_steps": 1,
                      "gradient_checkpointing": False}},
    "eval": {"enabled": True, "size": 2, "n": 4, "ks": [1, 2, 4], "strategies": ["pass", "maj"],
             "max_new_tokens": 4},
    "logging": {"mode": "offline"},
}


def _write_recipe(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(TINY_RECIPE))
    data["output_dir"] = str(tmp_path / "run")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_grpo_run_writes_checkpoints_results_figures_and_wandb(tmp_path, capsys, recwarn):
    assert main(["train", str(_write_recipe(tmp_path))]) == 0
    assert not [w for w in recwarn if "W&B" in str(w.message)]  # the run, its curves and tables all logged
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "checkpoint-2" / "cat_state.json").is_file()
    assert (out / "final" / "adapter_config.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["global_step"] == 2
    assert [p["k"] for p in results["curves"]["pass"]] == [1, 2, 4]
    assert all(0.0 <= p["ci_low"] <= p["value"] <= p["ci_high"] <= 1.0 for p in results["curves"]["maj"])
    steps = [e for e in results["train"]["log_history"] if "loss" in e]
    assert len(steps) == 2 and all("cat/weight_mean" in e and "cat/p_hat_mean" in e for e in steps)
    for figure in ("training_curves.png", "eval/accuracy_vs_k.png", "eval/accuracy_vs_compute.png"):
        assert (out / figure).stat().st_size > 1000, figure
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert "catpot runs" in capsys.readouterr().out


def test_existing_output_dir_is_never_overwritten(tmp_path, capsys):
    recipe = _write_recipe(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    assert main(["train", str(recipe)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_resume_refuses_a_changed_recipe(tmp_path, capsys):
    recipe = _write_recipe(tmp_path)
    (tmp_path / "run").mkdir()
    earlier = recipe_from_dict({**TINY_RECIPE, "output_dir": str(tmp_path / "run"), "seed": 7})
    (tmp_path / "run" / "recipe.yaml").write_text(json.dumps(asdict(earlier)))
    assert main(["train", str(recipe), "--resume"]) == 2
    assert "seed is 0" in capsys.readouterr().err


def test_resume_accepts_a_pinned_recipe_from_before_a_field_existed_only_at_that_fields_default(tmp_path):
    current = recipe_from_dict({**TINY_RECIPE, "output_dir": str(tmp_path / "run")})
    older = asdict(current)
    del older["eval"]["pot_answer"], older["train"]["cat_correct_threshold"]  # fields a later catpot added
    path = tmp_path / "run" / "recipe.yaml"
    _check_same_recipe(_completed_recipe(older), asdict(current), path)
    changed = recipe_from_dict({**TINY_RECIPE, "output_dir": str(tmp_path / "run"),
                                "eval": {**TINY_RECIPE["eval"], "pot_answer": "sample"}})
    with pytest.raises(ValueError, match="eval.pot_answer is .sample."):
        _check_same_recipe(_completed_recipe(older), asdict(changed), path)


def test_resume_accepts_a_pinned_recipe_that_names_the_strategy_by_its_former_name(tmp_path, recwarn):
    current = recipe_from_dict({**TINY_RECIPE, "output_dir": str(tmp_path / "run")})
    older = asdict(current)
    older["train"]["cat_strategy"] = "passn"  # the former name of pass
    path = tmp_path / "run" / "recipe.yaml"
    _check_same_recipe(_completed_recipe(older), asdict(current), path)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]  # the pinned copy is not the user's
    older["train"]["cat_strategy"] = "majority"
    with pytest.raises(ValueError, match="train.cat_strategy is 'pass' but .* has 'maj'"):
        _check_same_recipe(_completed_recipe(older), asdict(current), path)


def test_sft_run_on_gold_answers(tmp_path):
    recipe = _write_recipe(tmp_path, train={"algorithm": "sft", "cat_strategy": "pass", "cat_n": 4,
                                            "trl": {"max_steps": 2, "per_device_train_batch_size": 4,
                                                    "max_length": 128, "learning_rate": 1e-3,
                                                    "save_steps": 2, "gradient_checkpointing": False}},
                           eval__enabled=False, logging__mode="disabled")
    assert main(["train", str(recipe)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    losses = [e["loss"] for e in results["train"]["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert "curves" not in results and not (tmp_path / "run" / "wandb").exists()


@pytest.mark.parametrize(
    ("train", "needle"),
    [({"cat_strategy": "pass", "cat_n": 4, "cat_clip": -1.0}, "cat_clip"),
     ({"cat_strategy": "maj", "cat_n": 4, "cat_k": 9}, "cat_k"),
     ({"trl": {"no_such_argument": 1}}, "train.trl.*no_such_argument")],
)
def test_bad_trainer_fields_fail_at_config_time(train, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        trainer_config(recipe_from_dict({**TINY_RECIPE, "train": {**TINY_RECIPE["train"], **train}}))


def test_resume_after_sigkill_finishes_the_run(tmp_path):
    recipe = _write_recipe(tmp_path, train__trl__max_steps=12, eval__enabled=False, logging__mode="disabled")
    command = [sys.executable, "-m", "recipes.cli", "train", str(recipe)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "run" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.is_file() and not (tmp_path / "run" / "results.json").exists()
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "checkpoint-" in resumed.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train"]["global_step"] == 12
    logged = [e["step"] for e in results["train"]["log_history"] if "loss" in e]
    assert logged == list(range(1, 13))  # the history restored from the checkpoint, then the resumed steps


def test_demo_trains_both_arms_from_one_recipe_and_never_redoes_them(tmp_path, capsys):
    tiny = ["model.name=tiny-llama", "model.dtype=float32", "model.lora_target_modules=[q_proj,v_proj]",
            "task.size=8", "train.trl.max_steps=1", "train.trl.per_device_train_batch_size=8",
            "train.trl.max_completion_length=4", "eval.size=2", "eval.max_new_tokens=4", "logging.mode=disabled"]
    argv = ["demo", "--output-root", str(tmp_path), *[a for o in tiny for a in ("--set", o)]]
    assert main(argv) == 0
    baseline, cat = (yaml.safe_load((tmp_path / arm / "recipe.yaml").read_text()) for arm in ("baseline", "cat"))
    assert baseline["train"].pop("cat_strategy") == "none" and cat["train"].pop("cat_strategy") == "pass"
    differing = {k for k in baseline if baseline[k] != cat[k]}
    assert differing == {"output_dir", "logging"}  # same seed, data, steps, learning rate: only the objective differs
    assert (tmp_path / "pass_and_maj_at_k.png").stat().st_size > 1000
    stamps = {arm: (tmp_path / arm / "results.json").stat().st_mtime_ns for arm in ("baseline", "cat")}
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already complete") == 2
    assert stamps == {arm: (tmp_path / arm / "results.json").stat().st_mtime_ns for arm in ("baseline", "cat")}


def test_resume_skips_a_checkpoint_whose_save_was_killed(tmp_path):
    for step, files in ((2, ["trainer_state.json", "cat_state.json"]), (3, ["adapter_model.safetensors"])):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in files:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    assert last_complete_checkpoint(tmp_path, "grpo") == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path, "grpo") == str(tmp_path / "checkpoint-2")  # CAT state not yet written
    assert last_complete_checkpoint(tmp_path, "sft") == str(tmp_path / "checkpoint-3")


def test_dynamic_majority_clusters_a_group_by_the_verifiers_equivalence(tmp_path):
    from core.models import load_pretrained
    from recipes.train import build_trainer, check_recipe

    recipe = recipe_from_dict({**TINY_RECIPE, "output_dir": str(tmp_path / "run"), "logging": {"mode": "disabled"},
                               "train": {**TINY_RECIPE["train"], "cat_strategy": "maj", "cat_k": "dynamic"}})
    model, tokenizer = load_pretrained("tiny-llama")
    trainer = build_trainer(recipe, model, tokenizer, check_recipe(recipe))
    group = [[{"role": "assistant", "content": text}] for text in
             ("\\boxed{\\frac{1}{2}}", "so it is 0.5", "\\boxed{1/3}", "nothing")]
    keys = trainer.answer_keys_fn(group)
    assert keys[0] == keys[1] != keys[2] and keys[3] is None
