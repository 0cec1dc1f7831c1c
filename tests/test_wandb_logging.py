"""W&B, offline and read back from the run files: evaluation series over k and compute, summary scalars, group and
job type, the project rule, TRL's own completions table in catpot's run, and a W&B failure that stops only W&B."""

import argparse
import json
import warnings

import pytest

import wandb_run
from conftest import REPO_ROOT
from recipes.eval_command import register
from recipes.tracking import SafeWandbCallback, resolve_project


def catpot(argv):
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_an_evaluation_logs_series_over_k_and_flops_summary_scalars_and_its_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-the-environment")
    out = tmp_path / "eval"
    results = catpot(["eval", "--model", "tiny-llama", "--task", "arithmetic", "--limit", "3", "--n", "4",
                      "--ks", "1,2,4", "--strategies", "pass,maj", "--max-new-tokens", "6", "--dtype", "float32",
                      "--wandb-group", "sweep-1", "--out", str(out)])
    (run,) = wandb_run.run_dirs(out)
    info = wandb_run.run_record(run)
    assert (info.project, info.run_group, info.job_type) == ("from-the-environment", "sweep-1", "eval")
    metrics = wandb_run.metrics(run)
    for strategy in ("pass", "maj"):
        assert metrics[f"eval/by_k/{strategy}"] == "eval/k" and metrics[f"eval/by_flops/{strategy}"] == "eval/flops"
    rows = wandb_run.history(run)
    summary = wandb_run.summary(run)
    for strategy, points in results["curves"].items():
        assert [(r["eval/k"], r["eval/flops"], r[f"eval/by_k/{strategy}"]) for r in rows
                if f"eval/by_k/{strategy}" in r] == [(p["k"], p["flops"], p["value"]) for p in points]
        assert [r[f"eval/by_flops/{strategy}"] for r in rows if f"eval/by_flops/{strategy}" in r] == [
            p["value"] for p in points]
        for p in points:
            assert summary[f"eval/{strategy}@{p['k']}"] == p["value"]
        assert summary[f"eval/unparsed_share/{strategy}"] == results["summary"]["strategies"][strategy][
            "unparsed_share"]
    assert summary["eval/finished_rate"] == results["finished_rate"]


def test_the_project_a_recipe_sets_wins_over_the_environment_and_the_environment_over_the_default(monkeypatch):
    from recipes.config import LoggingConfig

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert LoggingConfig().project is None and resolve_project(None) == "catpot"
    monkeypatch.setenv("WANDB_PROJECT", "env")
    assert resolve_project(None) == "env" and resolve_project("mine") == "mine"


TINY_GRPO = {
    "model": {"name": "tiny-llama", "dtype": "float32", "lora_r": 4, "lora_alpha": 8,
              "lora_target_modules": ["q_proj", "v_proj"]},
    "task": {"name": "arithmetic", "size": 4, "chat_template": False, "fewshot": 1, "system_prompt": "Add.",
             "prompt_template": "Q: {expression}\nA:"},
    "train": {"algorithm": "grpo", "cat_strategy": "pass", "cat_n": 4,
              "trl": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                      "max_completion_length": 4, "learning_rate": 1e-3, "save_steps": 2,
                      "gradient_checkpointing": False, "log_completions": True}},
    "eval": {"enabled": True, "size": 2, "n": 2, "ks": [1, 2], "strategies": ["pass"], "max_new_tokens": 4},
    "logging": {"mode": "offline", "group": "arith", "job_type": "passn4"},
}


def test_training_logs_trls_completions_table_and_catpots_curves_into_one_run(tmp_path, recwarn):
    from recipes.config import recipe_from_dict
    from recipes.train import load_train_task, train

    recipe = recipe_from_dict({**TINY_GRPO, "output_dir": str(tmp_path / "run")})
    results = train(recipe)
    assert not [w for w in recwarn if "W&B" in str(w.message)]
    (run,) = wandb_run.run_dirs(tmp_path / "run")
    info = wandb_run.run_record(run)
    assert (info.project, info.run_group, info.job_type) == ("catpot", "arith", "passn4")
    tables = wandb_run.table_files(run, "completions")
    assert len(tables) >= 2  # TRL's table at every log call: each step (and the closing train summary)
    table = json.loads(tables[0].read_text())
    prompts = {row[table["columns"].index("prompt")] for row in table["data"]}
    task = load_train_task(recipe)  # TRL saw the plain-text prompts, examples and system prompt included
    assert prompts <= {task.render(p, None) for p in task.problems}
    assert all(p.startswith("Add.\n\nQ: ") for p in prompts)
    metrics = wandb_run.metrics(run)
    assert metrics["train/global_step"] == "" and metrics["eval/by_k/pass"] == "eval/k"
    assert [r["train/global_step"] for r in wandb_run.history(run) if "train/loss" in r] == [1, 2]
    summary = wandb_run.summary(run)
    assert summary["eval/pass@2"] == results["curves"]["pass"][1]["value"]
    assert results["summary"]["strategies"]["pass"]["k_max"] == 2
    assert results["provenance"]["source"]["trained_weights"]


def test_a_wandb_failure_turns_off_wandb_and_trls_logging_not_training(tiny, tmp_path):
    import wandb
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model, _ = tiny
    run = wandb.init(project="p", dir=str(tmp_path), mode="offline")
    args = TrainingArguments(output_dir=str(tmp_path / "t"), report_to=["wandb"], use_cpu=True)
    callback, state = SafeWandbCallback(), TrainerState()
    callback.on_train_begin(args, state, TrainerControl(), model=model)  # logs into the open run
    callback.on_log(args, state, TrainerControl(), model=model, logs={"loss": 1.0})
    run.finish()  # from here on every W&B call fails
    with pytest.warns(UserWarning, match="W&B logging stopped"):
        callback.on_log(args, state, TrainerControl(), model=model, logs={"loss": 0.5})
    assert callback.failed and args.report_to == []  # TRL's tables check report_to: they stop too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_log(args, state, TrainerControl(), model=model, logs={"loss": 0.25})  # silent from now on


def test_an_experiment_files_its_arms_under_one_group_with_the_arm_as_job_type(tmp_path):
    from recipes.config import load_recipe
    from recipes.experiment import wandb_overrides

    path = REPO_ROOT / "recipes" / "experiments" / "arith_g8" / "baseline.yaml"
    logging = load_recipe(path, wandb_overrides(path, ["seed=2"], "arith_g8", "baseline")).logging
    assert (logging.group, logging.job_type) == ("arith_g8", "baseline")
    chosen = ["logging.group=mine", "logging.job_type=theirs"]
    assert wandb_overrides(path, chosen, "arith_g8", "baseline") == chosen  # a recipe's own choice stays
