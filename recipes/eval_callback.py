"""Evaluation during training: every ``eval.every_steps`` optimizer steps, the current policy on the held-out problems.

``EvalCallback`` (a transformers ``TrainerCallback``, added to CAT-GRPO and CAT-SFT by ``recipes.train`` when the
recipe sets ``eval.every_steps``) runs ``recipes.eval_command.evaluate_model`` with the recipe's eval settings on the
first ``eval.size`` problems of the eval task, into ``<output_dir>/eval/step-N/`` (records, results.json, figures),
and logs every curve point to the W&B run as ``eval_steps/<strategy>@<k>`` against ``train/global_step`` (the step
metric transformers' W&B callback declares). A resumed run skips a step whose ``results.json`` exists and resumes a
partial one (its records are keyed by a hash of the trainable weights, so records of other weights are refused).

Training after the callback is the training without it: the model goes to eval mode (no dropout) for sampling and
back to its mode after, the tokenizer pads on the left only meanwhile, and the Python, NumPy, torch and CUDA RNG
states are restored, so dropout masks and data order downstream are unchanged. In distributed training only the main
process evaluates.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

STEP_PREFIX = "step-"
WANDB_PREFIX = "eval_steps"


def parameters_sha256(model) -> str:
    """sha256 over the name, dtype, shape and bytes of every trainable parameter (the LoRA weights under peft)."""
    digest = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        t = p.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def sampling_mode(model, tokenizer) -> Iterator[None]:
    """Eval mode, left padding and no gradients inside; the model's mode, the padding side and every RNG state
    (Python, NumPy, torch, CUDA) as they were afterwards, whatever happened inside."""
    was_training, side = model.training, tokenizer.padding_side
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    model.eval()
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        model.train(was_training)
        tokenizer.padding_side = side


def wandb_values(results: dict) -> dict[str, float]:
    """``{"eval_steps/<strategy>@<k>": value}`` for every curve point of an evaluation's results."""
    return {f"{WANDB_PREFIX}/{strategy}@{p['k']}": p["value"]
            for strategy, points in results["curves"].items() for p in points}


class EvalCallback(TrainerCallback):
    """See the module docstring. ``eval_dir``: the run's ``<output_dir>/eval``; ``run``: its W&B run or None;
    ``source``: what the base model samples from (``recipes.train.base_eval_source``), to which each evaluation adds
    the hash of the trained weights; ``label``: the run's name, to which each evaluation adds its step."""

    def __init__(self, recipe, task, tokenizer, eval_dir: str | Path, run=None, *, source: dict, label: str):
        self.recipe, self.task, self.tokenizer, self.run = recipe, task, tokenizer, run
        self.every, self.eval_dir = recipe.eval.every_steps, Path(eval_dir)
        self.source, self.label = source, label

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if not state.is_world_process_zero or step % self.every != 0:
            return
        directory = self.eval_dir / f"{STEP_PREFIX}{step}"
        if (directory / "results.json").is_file():
            return  # evaluated before a kill: the resumed run does not redo it
        from recipes.eval_command import evaluate_model
        from recipes.run_dir import claim

        claim(self.eval_dir, "eval", "evaluation directory")  # the parent first: it then holds only evaluations
        source = {**self.source, "trained_weights": parameters_sha256(model), "step": step}
        with sampling_mode(model, self.tokenizer):
            results = evaluate_model(model, self.tokenizer, self.task, self.recipe.eval, directory,
                                     model_name=f"{self.label} step {step}", source=source)
        if self.run is not None:
            try:
                self.run.log({"train/global_step": step, **wandb_values(results)})
            except Exception as error:  # noqa: BLE001 — tracking never stops training; results.json is written
                warnings.warn(f"W&B logging of the step-{step} evaluation failed: {type(error).__name__}: {error}",
                              RuntimeWarning, stacklevel=2)
