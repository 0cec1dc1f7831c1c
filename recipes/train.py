"""``catpot train RECIPE``: a recipe in, a trained LoRA adapter, checkpoints, curves and a W&B run out.

The whole pipeline, in order: check everything that can be checked without the model (model reference, task and
data, trainer and LoRA configs; also what ``--dry-run`` runs) → take ``output_dir`` (locked; never overwritten
unless asked, and then only if catpot made it) → load the model → build the CAT trainer (GRPO with a verifier
reward, or SFT on gold answers/solutions) → train, resuming from the last complete checkpoint after a kill →
evaluate the trained adapter → write ``results.json`` and figures. A run killed after its last step resumes
without training again: it only redoes what is missing (``final/``, the evaluation, ``results.json``).

``output_dir`` holds::

    .catpot-run           marks the directory as a catpot training run (``--overwrite`` deletes nothing else)
    recipe.yaml           the resolved recipe, written when training starts; ``--resume`` refuses a different one
    checkpoint-*/         Trainer checkpoints: adapter, optimizer, scheduler, RNG and the CAT state
    final/                the trained adapter and tokenizer, and train_summary.json (renamed into place complete)
    eval/                 per-problem records.jsonl, results.json and figures of the evaluation after training;
                          eval/step-N/ those of the evaluations during training (``eval.every_steps``),
                          eval/checkpoint-N/ those of checkpoint-N after it (``catpot experiment``)
    results.json          training summary + evaluation curves (the file ``catpot plot`` reads)
    training_curves.png   reward, loss and CAT weight statistics per step
    wandb/                the W&B run (offline: ``wandb sync OUTPUT_DIR/wandb/offline-run-*``)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME

from core.files import atomic_write_json, atomic_write_text, read_json_object
from core.models import load_pretrained, resolve_model
from recipes import tracking
from recipes.config import Recipe, recipe_from_dict
from recipes.eval_callback import EvalCallback
from recipes.plotting import plot_training
from recipes.provenance import check_adapter, model_fingerprint, weights_fingerprint
from recipes.run_dir import open_run_dir
from recipes.tasks import Task, load_task
from trainers import CATGRPOConfig, CATGRPOTrainer, CATSFTConfig, CATSFTTrainer
from trainers.checkpointing import CAT_STATE_FILE

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
FINAL_DIR = "final"
TRAIN_SUMMARY_FILE = "train_summary.json"
# Checkpoint files that only resuming needs; the rest is what ``Trainer.save_model`` writes.
RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", TRAINER_STATE_NAME, CAT_STATE_FILE)


@dataclass
class Prepared:
    """What ``check_recipe`` built without loading the model: the tasks, their training rows and the TRL config."""

    model: str
    task: Task
    eval_task: Task | None
    dataset: Dataset
    args: CATGRPOConfig | CATSFTConfig


def check_recipe(recipe: Recipe, *, dry_run: bool = False) -> Prepared:
    """Check everything that needs no model weights: model reference, dtype, adapter files, task and data, the
    training rows, the trainer and LoRA configs. ``--dry-run`` stops here (an adapter that an earlier recipe of a
    chain has yet to train may be missing then); ``train`` runs it before touching ``output_dir``."""
    m = recipe.model
    model = resolve_model(m.name, m.dtype, m.load_in_4bit).source
    if m.adapter and not (dry_run and not Path(m.adapter).exists()):
        check_adapter(m.adapter, "model.adapter")
    task = load_train_task(recipe)
    if not task.problems:
        raise ValueError(f"task {recipe.task.name!r}: no problems after filtering (split={recipe.task.split!r})")
    eval_task = load_eval_task(recipe) if recipe.eval.enabled else None
    args = trainer_config(recipe)
    lora_config(recipe)
    dataset = grpo_dataset(task) if recipe.train.algorithm == "grpo" else sft_dataset(task, recipe.train.sft_target)
    return Prepared(model, task, eval_task, dataset, args)


def last_complete_checkpoint(out: Path, algorithm: str) -> str | None:
    """The newest checkpoint whose last files were written: a kill during a save leaves a directory without them.

    Trainer writes ``trainer_state.json`` after the weights, optimizer and RNG state; CAT-GRPO then adds its CAT state.
    Both are parsed: a file torn by a kill does not make a checkpoint complete.
    """
    steps = sorted((int(p.name.split("-")[1]), p) for p in Path(out).glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        if checkpoint_complete(path, algorithm):
            return str(path)
    return None


def checkpoint_complete(checkpoint: Path, algorithm: str) -> bool:
    """Whether the files Trainer (and CAT-GRPO) write last are there and parse (a kill during a save tears them)."""
    required = [TRAINER_STATE_NAME] + ([CAT_STATE_FILE] if algorithm == "grpo" else [])
    return all(read_json_object(checkpoint / name) is not None for name in required)


def training_finished(checkpoint: str | Path) -> bool:
    """Whether the checkpoint was saved at the last step (Trainer always saves there with ``save_strategy: steps``)."""
    state = read_json_object(Path(checkpoint) / TRAINER_STATE_NAME) or {}
    max_steps, step = state.get("max_steps", 0), state.get("global_step", 0)
    return isinstance(max_steps, int) and max_steps > 0 and isinstance(step, int) and step >= max_steps


def _check_same_recipe(saved: dict, current: dict, path: Path, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _check_same_recipe(a, b, path, f"{prefix}{key}.")
        elif a != b:
            raise ValueError(f"--resume: {prefix}{key} is {b!r} but {path} has {a!r}; use a new output_dir")


def _completed_recipe(saved: dict) -> dict:
    """The pinned recipe with the defaults of fields a later catpot added (an older run did not have them, so it ran
    as their default does) and the current names of renamed values; a pinned recipe that no longer parses is
    compared as written."""
    try:
        with warnings.catch_warnings():  # a former name in the pinned copy is not the user's to change
            warnings.simplefilter("ignore", FutureWarning)
            return asdict(recipe_from_dict(saved))
    except (KeyError, TypeError, ValueError):
        return saved


def _saved_recipe(path: Path) -> dict:
    try:
        saved = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {path} is not a recipe; use a new output_dir")
    return saved


def trainer_config(recipe: Recipe) -> CATGRPOConfig | CATSFTConfig:
    """The TRL config of the recipe: ``train.trl`` plus the ``cat_*`` fields, with catpot's defaults underneath."""
    train = recipe.train
    config_class = CATGRPOConfig if train.algorithm == "grpo" else CATSFTConfig
    kwargs = {
        "output_dir": recipe.output_dir, "seed": recipe.seed, "data_seed": recipe.seed,
        "run_name": run_label(recipe), "logging_steps": 1, "save_strategy": "steps", "report_to": "none",
        **train.trainer_arguments(config_class),
    }
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # TRL's bf16 default otherwise refuses to build on a CPU-only machine
        kwargs["dataloader_pin_memory"] = False
        # bf16 (autocast or weights) makes LoRA training ~9x slower than fp32 on the 2-core CPU we measured
        kwargs.setdefault("bf16", False)
    if kwargs["report_to"] not in ("none", [], None):
        raise ValueError("train.trl.report_to: catpot logs to W&B through the logging section, "
                         f"got {kwargs['report_to']!r}")
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as error:
        raise type(error)(_name_trl_field(error, train.trl)) from None


def _name_trl_field(error: Exception, trl: dict) -> str:
    """One line naming the recipe field of a TRL/CAT config error: ``train.cat_*`` or ``train.trl.<field>``."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if message.startswith("cat_"):
        return f"train.{message}"
    mentioned = [key for key in trl if re.search(rf"\b{re.escape(key)}\b", message)]
    return f"train.trl.{mentioned[0]}: {message}" if mentioned else f"train.trl: {message}"


def run_label(recipe: Recipe) -> str:
    return recipe.logging.run_name or Path(recipe.output_dir).name


def lora_config(recipe: Recipe) -> LoraConfig | None:
    m = recipe.model
    if not m.use_lora or m.adapter:
        return None
    try:
        return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=m.lora_target_modules, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as error:
        raise ValueError(f"model.lora_*: {' '.join(str(error).split())}") from None


def load_model(recipe: Recipe):
    m = recipe.model
    model, tokenizer = load_pretrained(m.name, dtype=m.dtype, load_in_4bit=m.load_in_4bit, cache_dir=m.cache_dir,
                                       trust_remote_code=m.trust_remote_code)
    if m.adapter:
        check_adapter(m.adapter, "model.adapter")
        model = PeftModel.from_pretrained(model, m.adapter, is_trainable=True)
    return model, tokenizer


def load_trained(recipe: Recipe, final: Path):
    """The trained model saved in ``final/``, for evaluation: the base model plus the adapter (or the full model)."""
    m = recipe.model
    if (final / "adapter_config.json").is_file():
        model, tokenizer = load_pretrained(m.name, dtype=m.dtype, load_in_4bit=m.load_in_4bit,
                                           cache_dir=m.cache_dir, trust_remote_code=m.trust_remote_code)
        check_adapter(final, "trained adapter")
        return PeftModel.from_pretrained(model, str(final)), tokenizer
    return load_pretrained(str(final), dtype=m.dtype, load_in_4bit=m.load_in_4bit,
                           trust_remote_code=m.trust_remote_code)


def _prompt_fields(recipe: Recipe) -> dict:
    """How prompts are shown, in training and in the evaluation after it (whatever the evaluation task)."""
    t = recipe.task
    return {"system_prompt": t.system_prompt, "chat_template": t.chat_template, "fewshot": t.fewshot,
            "fewshot_format": t.fewshot_format}


def load_train_task(recipe: Recipe) -> Task:
    t = recipe.task
    return load_task(t.name, split=t.split, size=t.size, subset=t.subset, seed=recipe.seed, data_dir=t.data_dir,
                     levels=t.levels, prompt_template=t.prompt_template, **_prompt_fields(recipe), **t.options)


def _eval_task_fields(recipe: Recipe) -> dict:
    e, t = recipe.eval, recipe.task
    same = e.task in (None, t.name)
    return {"name": e.task or t.name, "data_dir": t.data_dir, "levels": e.levels,
            "prompt_template": t.prompt_template if same else None, "options": t.options if same else {}}


def load_eval_task(recipe: Recipe) -> Task:
    f = _eval_task_fields(recipe)
    return load_task(f["name"], split=recipe.eval.split, size=recipe.eval.size, subset=recipe.eval.subset,
                     seed=recipe.seed, data_dir=f["data_dir"], levels=f["levels"],
                     prompt_template=f["prompt_template"], **_prompt_fields(recipe), **f["options"])


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
    """Prompts as chat messages (TRL applies the chat template), or as plain text without one (``Task.prompt``)."""
    return Dataset.from_list([{"prompt": task.prompt(p), "problem_id": p.id} for p in task.problems])


def sft_dataset(task: Task, target: str) -> Dataset:
    return Dataset.from_list([{"prompt": task.prompt(p), "completion": task.completion(task.sft_target(p, target))}
                              for p in task.problems])


def build_trainer(recipe: Recipe, model, tokenizer, prepared: Prepared):
    common = {"model": model, "args": prepared.args, "processing_class": tokenizer,
              "peft_config": lora_config(recipe), "train_dataset": prepared.dataset}
    if recipe.train.algorithm == "grpo":
        task = prepared.task
        return CATGRPOTrainer(reward_funcs=correctness_reward(task),
                              answer_keys_fn=lambda cs: task.answer_keys([completion_text(c) for c in cs]), **common)
    return CATSFTTrainer(**common)


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the recipe end to end; returns what ``results.json`` holds."""
    prepared = check_recipe(recipe)
    out = Path(recipe.output_dir)
    with open_run_dir(out, "train", "output_dir", resume=resume, overwrite=overwrite):
        saved = out / RECIPE_FILE
        if saved.is_file():
            _check_same_recipe(_completed_recipe(_saved_recipe(saved)), asdict(recipe), saved)
        if resume and (out / RESULTS_FILE).is_file() and (out / FINAL_DIR).is_dir():
            print(f"{out}: already complete (results.json and final/ exist); nothing to resume")
            return json.loads((out / RESULTS_FILE).read_text())
        summary = _train_and_evaluate(recipe, prepared, out, resume)
    print_summary([summary])
    return summary


def _train_and_evaluate(recipe: Recipe, prepared: Prepared, out: Path, resume: bool) -> dict:
    checkpoint = last_complete_checkpoint(out, recipe.train.algorithm) if resume else None
    final = out / FINAL_DIR
    set_seed(recipe.seed)
    run = None
    try:
        if (final / TRAIN_SUMMARY_FILE).is_file() or (checkpoint and training_finished(checkpoint)):
            train_section = _finished_training(out, checkpoint)
            print(f"{out}: training finished at step {train_section['global_step']}; "
                  "completing what is missing (final/, evaluation, results.json)")
            if prepared.eval_task is not None:  # the evaluation is all that is left to log
                model, tokenizer = load_trained(recipe, final)
                run = tracking.start_run(recipe.logging, asdict(recipe), out, run_label(recipe))
        else:
            model, tokenizer = load_model(recipe)
            run = tracking.start_run(recipe.logging, asdict(recipe), out, run_label(recipe))
            prepared.args.report_to = ["wandb"] if run is not None else []  # TRL's W&B logging goes into our run
            trainer = build_trainer(recipe, model, tokenizer, prepared)
            if run is not None:
                tracking.use_safe_callback(trainer)
            if recipe.eval.every_steps is not None:
                trainer.add_callback(EvalCallback(recipe, prepared.eval_task, tokenizer, out / "eval", run,
                                                  source=base_eval_source(recipe), label=run_label(recipe)))
            if not (out / RECIPE_FILE).is_file():  # the run starts here: from now on --resume continues it
                atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(asdict(recipe), sort_keys=False))
            if checkpoint:
                print(f"resuming from {checkpoint}")
            began = time.perf_counter()
            trainer.train(resume_from_checkpoint=checkpoint)
            train_section = train_summary(trainer.state.log_history, time.perf_counter() - began)
            _save_final(final, train_section, trainer.save_model)
            model = trainer.model
        summary = {"model": run_label(recipe), "recipe": asdict(recipe), "train": train_section}
        plot_training(train_section["log_history"], out / "training_curves.png", run_label(recipe))
        if prepared.eval_task is not None:
            from recipes.eval_command import evaluate_model

            tokenizer.padding_side = "left"  # generation pads on the left whatever the trainer used
            evaluation = evaluate_model(model.eval(), tokenizer, prepared.eval_task, recipe.eval, out / "eval",
                                        run=run, model_name=run_label(recipe), source=eval_source(recipe, final))
            summary.update({key: value for key, value in evaluation.items() if key != "model"})
        atomic_write_json(out / RESULTS_FILE, summary)
    except BaseException:
        tracking.finish(run, exit_code=1)
        raise
    tracking.finish(run)
    return summary


def _finished_training(out: Path, checkpoint: str | None) -> dict:
    """The training section of a run whose last step is done; builds ``final/`` from the last checkpoint if the kill
    came before it was saved (the checkpoint of the last step holds exactly the weights ``save_model`` writes)."""
    final = out / FINAL_DIR
    summary_path = final / TRAIN_SUMMARY_FILE
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    state = read_json_object(Path(checkpoint) / TRAINER_STATE_NAME)
    section = train_summary(state.get("log_history", []), None)  # the wall time died with the killed process

    def copy_model_files(staging: str) -> None:
        shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(*RESUME_ONLY))

    _save_final(final, section, copy_model_files)
    return section


def _save_final(final: Path, train_section: dict, save) -> None:
    """``save(directory)`` writes the model; it goes to a staging directory renamed to ``final/`` once complete."""
    staging = final.with_name(f".{final.name}-staging")
    if staging.exists():
        shutil.rmtree(staging)
    save(str(staging))
    atomic_write_json(staging / TRAIN_SUMMARY_FILE, train_section)
    if final.exists():  # a final/ without train_summary.json: an older catpot's, or torn; the checkpoint rebuilt it
        shutil.rmtree(final)
    os.replace(staging, final)


def base_eval_source(recipe: Recipe) -> dict:
    """What an evaluation of the recipe's base model samples from, by content: the model, its precision, and the
    task options and data behind the prompts (``recipes.provenance``)."""
    m, fields = recipe.model, _eval_task_fields(recipe)
    settings = resolve_model(m.name, m.dtype, m.load_in_4bit)
    return {"base_model": model_fingerprint(m.name, m.cache_dir), "dtype": str(settings.dtype),
            "load_in_4bit": settings.load_in_4bit, "task_options": fields["options"],
            "data_dir": str(Path(fields["data_dir"]).expanduser().resolve()) if fields["data_dir"] else None}


def eval_source(recipe: Recipe, final: Path) -> dict:
    """``base_eval_source`` plus the trained weights in ``final/`` (the adapter's content hash)."""
    return {**base_eval_source(recipe), "trained_weights": weights_fingerprint(final)}


def train_summary(log_history: list[dict], wall_time: float | None) -> dict:
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
        wall = s["train"]["wall_time"]
        table.add_row(s["model"], str(s["train"]["global_step"]), _fmt(final.get("reward")), _fmt(final.get("loss")),
                      "-" if wall is None else f"{wall:.0f}", points or "-")
    Console().print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
