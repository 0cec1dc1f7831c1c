"""``catpot train RECIPE``: a recipe in, a trained LoRA adapter, checkpoints, curves and a W&B run out.

The whole pipeline, in order: resolve ``output_dir`` (never overwrite unless asked) → load the model and the task →
build the CAT trainer (GRPO with a verifier reward, or SFT on gold answers/solutions) → train, resuming from the
last checkpoint after a kill → evaluate the trained adapter → write ``results.json`` and figures.

``output_dir`` holds::

    recipe.yaml           the resolved recipe; ``--resume`` refuses a different one
    checkpoint-*/         Trainer checkpoints: adapter, optimizer, scheduler, RNG and the CAT state
    final/                the trained adapter and tokenizer
    eval/                 per-problem records.jsonl, results.json and figures of the evaluation after training
    results.json          training summary + evaluation curves (the file ``catpot plot`` reads)
    training_curves.png   reward, loss and CAT weight statistics per step
    wandb/                the W&B run (offline: ``wandb sync OUTPUT_DIR/wandb/offline-run-*``)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME

from recipes import tracking
from recipes.config import Recipe, to_dict
from recipes.models import load_pretrained
from recipes.plotting import plot_training
from recipes.tasks import Task, load_task
from trainers import CATGRPOConfig, CATGRPOTrainer, CATSFTConfig, CATSFTTrainer
from trainers.checkpointing import CAT_STATE_FILE

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"


def prepare_output_dir(recipe: Recipe, *, resume: bool, overwrite: bool) -> str | None:
    """Create ``output_dir``; return the checkpoint to resume from (None: start fresh).

    An existing non-empty directory is an error unless ``overwrite`` (wipe it) or ``resume`` (continue, and only
    with the same recipe: a changed field would silently mix two experiments in one directory).
    """
    out = Path(recipe.output_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise FileExistsError(f"output_dir {str(out)!r} already exists; pass --resume to continue or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / RECIPE_FILE
    current = to_dict(recipe)
    if saved.is_file():
        _check_same_recipe(yaml.safe_load(saved.read_text()), current, saved)
    else:
        saved.write_text(yaml.safe_dump(current, sort_keys=False))
    return last_complete_checkpoint(out, recipe.train.algorithm) if resume else None


def last_complete_checkpoint(out: Path, algorithm: str) -> str | None:
    """The newest checkpoint whose last files were written: a kill during a save leaves a directory without them.

    Trainer writes ``trainer_state.json`` after the weights, optimizer and RNG state; CAT-GRPO then adds its CAT state.
    """
    required = [TRAINER_STATE_NAME] + ([CAT_STATE_FILE] if algorithm == "grpo" else [])
    steps = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        if all((path / name).is_file() for name in required):
            return str(path)
    return None


def _check_same_recipe(saved: dict, current: dict, path: Path, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _check_same_recipe(a, b, path, f"{prefix}{key}.")
        elif a != b:
            raise ValueError(f"--resume: {prefix}{key} is {b!r} but {path} has {a!r}; use a new output_dir")


def trainer_config(recipe: Recipe) -> CATGRPOConfig | CATSFTConfig:
    """The TRL config of the recipe: ``train.trl`` plus the ``cat_*`` fields, with catpot's defaults underneath."""
    train = recipe.train
    kwargs = {
        "output_dir": recipe.output_dir, "seed": recipe.seed, "data_seed": recipe.seed,
        "run_name": run_label(recipe), "logging_steps": 1, "save_strategy": "steps", "report_to": "none",
        **train.trl, **train.cat_fields(),
    }
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # TRL's bf16 default otherwise refuses to build on a CPU-only machine
        kwargs["dataloader_pin_memory"] = False
        # bf16 (autocast or weights) makes LoRA training ~9x slower than fp32 on the 2-core CPU we measured
        kwargs.setdefault("bf16", False)
    if kwargs["report_to"] not in ("none", [], None):
        raise ValueError(f"train.trl.report_to: catpot logs to W&B through the logging section, got {kwargs['report_to']!r}")
    config_class = CATGRPOConfig if train.algorithm == "grpo" else CATSFTConfig
    try:
        return config_class(**kwargs)
    except TypeError as error:  # an unknown TRL argument: name it as a recipe field
        raise TypeError(f"train.trl: {error}") from None


def run_label(recipe: Recipe) -> str:
    return recipe.logging.run_name or Path(recipe.output_dir).name


def lora_config(recipe: Recipe) -> LoraConfig | None:
    m = recipe.model
    if not m.use_lora or m.adapter:
        return None
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=m.lora_target_modules, task_type="CAUSAL_LM")


def load_model(recipe: Recipe):
    m = recipe.model
    model, tokenizer = load_pretrained(m.name, dtype=m.dtype, load_in_4bit=m.load_in_4bit, cache_dir=m.cache_dir,
                                       trust_remote_code=m.trust_remote_code)
    if m.adapter:
        if not Path(m.adapter, "adapter_config.json").is_file():
            raise FileNotFoundError(f"model.adapter: no peft adapter at {m.adapter!r} (run its warm-up recipe first)")
        model = PeftModel.from_pretrained(model, m.adapter, is_trainable=True)
    return model, tokenizer


def load_train_task(recipe: Recipe) -> Task:
    t = recipe.task
    return load_task(t.name, split=t.split, size=t.size, seed=recipe.seed, data_dir=t.data_dir, levels=t.levels,
                     prompt_template=t.prompt_template, **t.options)


def load_eval_task(recipe: Recipe) -> Task:
    e, t = recipe.eval, recipe.task
    same = e.task in (None, t.name)
    return load_task(e.task or t.name, split=e.split, size=e.size, seed=recipe.seed, data_dir=t.data_dir,
                     levels=e.levels, prompt_template=t.prompt_template if same else None,
                     **(t.options if same else {}))


def completion_text(completion) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def correctness_reward(task: Task):
    """Reward 1 for a completion whose final answer the task's verifier accepts, else 0."""
    problems = {p.id: p for p in task.problems}

    def correctness(completions, problem_id, **_) -> list[float]:
        return [float(task.verify(completion_text(c), problems[i]).correct) for c, i in zip(completions, problem_id)]

    return correctness


def grpo_dataset(task: Task) -> Dataset:
    return Dataset.from_list([{"prompt": task.messages(p), "problem_id": p.id} for p in task.problems])


def sft_dataset(task: Task, target: str) -> Dataset:
    rows = []
    for p in task.problems:
        completion = task.sft_target(p, target)
        rows.append({"prompt": task.messages(p), "completion": [{"role": "assistant", "content": completion}]})
    return Dataset.from_list(rows)


def build_trainer(recipe: Recipe, model, tokenizer, task: Task, callbacks: list):
    args = trainer_config(recipe)
    common = {"model": model, "args": args, "processing_class": tokenizer, "peft_config": lora_config(recipe),
              "callbacks": callbacks}
    if recipe.train.algorithm == "grpo":
        return CATGRPOTrainer(reward_funcs=correctness_reward(task), train_dataset=grpo_dataset(task),
                              answer_keys_fn=lambda cs: task.answer_keys([completion_text(c) for c in cs]), **common)
    return CATSFTTrainer(train_dataset=sft_dataset(task, recipe.train.sft_target), **common)


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the recipe end to end; returns what ``results.json`` holds."""
    out = Path(recipe.output_dir)
    checkpoint = prepare_output_dir(recipe, resume=resume, overwrite=overwrite)
    if resume and (out / RESULTS_FILE).is_file() and (out / "final").is_dir():
        print(f"{out}: already complete (results.json and final/ exist); nothing to resume")
        return json.loads((out / RESULTS_FILE).read_text())
    set_seed(recipe.seed)
    task = load_train_task(recipe)
    eval_task = load_eval_task(recipe) if recipe.eval.enabled else None
    model, tokenizer = load_model(recipe)
    run = tracking.start_run(recipe.logging, to_dict(recipe), out, run_label(recipe))
    try:
        callbacks = [tracking.SafeWandbCallback()] if run is not None else []
        trainer = build_trainer(recipe, model, tokenizer, task, callbacks)
        if checkpoint:
            print(f"resuming from {checkpoint}")
        began = time.perf_counter()
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(str(out / "final"))
        summary = {"model": run_label(recipe), "recipe": to_dict(recipe),
                   "train": train_summary(trainer.state.log_history, time.perf_counter() - began)}
        plot_training(trainer.state.log_history, out / "training_curves.png", run_label(recipe))
        if eval_task is not None:
            from recipes.eval_command import evaluate_model

            trained = trainer.model.eval()
            tokenizer.padding_side = "left"  # generation pads on the left whatever the trainer used
            evaluation = evaluate_model(trained, tokenizer, eval_task, recipe.eval, out / "eval", run=run,
                                        model_name=run_label(recipe))
            summary.update({key: value for key, value in evaluation.items() if key != "model"})
        (out / RESULTS_FILE).write_text(json.dumps(summary, indent=2))
    finally:
        tracking.finish(run)
    print_summary([summary])
    return summary


def train_summary(log_history: list[dict], wall_time: float) -> dict:
    steps = [entry for entry in log_history if "loss" in entry]
    last = steps[-1] if steps else {}
    return {"global_step": last.get("step", 0), "wall_time": wall_time,
            "final": {k: v for k, v in last.items() if isinstance(v, (int, float))}, "log_history": log_history}


def print_summary(summaries: list[dict]) -> None:
    """One row per run: steps, final reward/loss, wall time and every evaluation point."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="catpot runs")
    for column in ("run", "steps", "reward", "loss", "train s", "evaluation (value [95% CI])"):
        table.add_column(column)
    for s in summaries:
        final = s["train"]["final"]
        curves = s.get("curves", {})
        points = "\n".join(f"{name}@{p['k']}: {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"
                           for name, pts in curves.items() for p in pts)
        table.add_row(s["model"], str(s["train"]["global_step"]), _fmt(final.get("reward")), _fmt(final.get("loss")),
                      f"{s['train']['wall_time']:.0f}", points or "-")
    Console().print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
