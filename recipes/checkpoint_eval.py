"""Evaluation along training, after the fact: every saved ``checkpoint-N`` of a run, with the run's eval settings.

The adapter of ``checkpoint-N`` is the policy at optimizer step N. Its evaluation goes to
``<output_dir>/eval/checkpoint-N/`` (``records.jsonl``, ``results.json``, figures; resumed like any evaluation, and
refused if the records came from other weights or settings). A checkpoint whose adapter tensors equal those of
``final/`` (the last step: Trainer saves the same weights twice) is not evaluated again: its evaluation is the one
after training, ``<output_dir>/eval/``. The untrained base model is step 0 (``recipes.experiment`` evaluates it into
``<parent of output_dir>/base/eval``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recipes.config import Recipe
from recipes.provenance import ADAPTER_CONFIG
from recipes.run_dir import claim, open_run_dir
from recipes.train import FINAL_DIR, TRAIN_SUMMARY_FILE, checkpoint_complete

EVAL_DIR = "eval"


def saved_checkpoints(out: str | Path, algorithm: str) -> dict[int, Path]:
    """``{step: checkpoint directory}`` of every complete checkpoint with an adapter, in step order."""
    steps = {}
    for path in Path(out).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / ADAPTER_CONFIG).is_file() and checkpoint_complete(path, algorithm):
            steps[int(suffix)] = path
    return dict(sorted(steps.items()))


def adapter_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


def same_weights(a: str | Path, b: str | Path) -> bool:
    """Whether two adapter directories hold the same tensors (names, shapes, dtypes and every value)."""
    if not all((Path(d) / "adapter_model.safetensors").is_file() for d in (a, b)):
        return False
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def step_eval_dirs(recipe: Recipe) -> dict[int, Path]:
    """``{step: evaluation directory}`` of every saved checkpoint of the run; the one holding the final weights maps
    to the evaluation after training (``eval/``), the others to ``eval/checkpoint-N``."""
    out = Path(recipe.output_dir)
    final = out / FINAL_DIR
    dirs = {}
    for step, checkpoint in saved_checkpoints(out, recipe.train.algorithm).items():
        dirs[step] = out / EVAL_DIR if same_weights(checkpoint, final) else out / EVAL_DIR / checkpoint.name
    if (final / TRAIN_SUMMARY_FILE).is_file() and out / EVAL_DIR not in dirs.values():
        dirs[json.loads((final / TRAIN_SUMMARY_FILE).read_text())["global_step"]] = out / EVAL_DIR  # no checkpoint kept
    return dict(sorted(dirs.items()))


def evaluate_checkpoints(recipe: Recipe) -> dict[int, Path]:
    """Evaluate every saved checkpoint of a finished run (resuming finished records); returns ``step_eval_dirs``."""
    from recipes.eval_command import evaluate_model
    from recipes.train import eval_source, load_eval_task, load_trained, run_label

    out = Path(recipe.output_dir)
    with open_run_dir(out, "train", "output_dir", resume=True):  # no training of this run meanwhile
        dirs = step_eval_dirs(recipe)
        checkpoints = saved_checkpoints(out, recipe.train.algorithm)
        todo = {step: d for step, d in dirs.items() if d != out / EVAL_DIR}
        if todo:
            claim(out / EVAL_DIR, "eval", "evaluation directory")
            task = load_eval_task(recipe)
        for step, directory in todo.items():
            model, tokenizer = load_trained(recipe, checkpoints[step])
            tokenizer.padding_side = "left"
            evaluate_model(model.eval(), tokenizer, task, recipe.eval, directory,
                           model_name=f"{run_label(recipe)} step {step}", source=eval_source(recipe, checkpoints[step]))
    return dirs


def pending(recipe: Recipe) -> list[int]:
    """The steps whose checkpoint evaluation has no ``results.json`` yet (what ``evaluate_checkpoints`` will sample)."""
    out = Path(recipe.output_dir)
    return [step for step, d in step_eval_dirs(recipe).items()
            if d != out / EVAL_DIR and not (d / "results.json").is_file()]


def main(argv: list[str] | None = None) -> None:
    """``python -m recipes.checkpoint_eval RECIPE [--set K=V ...]``: ``evaluate_checkpoints`` of one run (what
    ``catpot experiment --jobs J`` starts for J arms at once)."""
    import argparse

    from recipes.config import load_recipe

    parser = argparse.ArgumentParser(prog="python -m recipes.checkpoint_eval")
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    for step, directory in evaluate_checkpoints(load_recipe(args.recipe, args.set)).items():
        print(f"step {step}: {directory}")


if __name__ == "__main__":
    main()
