"""`eval.every_steps`: evaluation during training leaves training unchanged and logs what the records say."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evaluation import sampling
from recipes import tracking
from recipes.config import EvalSection, recipe_from_dict
from recipes.eval_callback import sampling_mode
from recipes.train import train
from test_experiment_seeds import _records, _value
from test_train_pipeline import TINY_RECIPE


def _sft_recipe(tmp_path, name: str, every_steps):
    data = json.loads(json.dumps(TINY_RECIPE))
    data["model"]["lora_dropout"] = 0.2  # dropout draws from the global RNG: a callback that left it moved would show
    data["train"] = {"algorithm": "sft", "cat_strategy": "pass", "cat_n": 4,
                     "trl": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
                             "save_steps": 10, "gradient_checkpointing": False}}
    data["eval"].update(size=2, n=4, ks=[1, 2, 4], every_steps=every_steps)
    data["output_dir"] = str(tmp_path / name)
    return recipe_from_dict(data)


def test_training_with_the_callback_equals_training_without_and_logs_the_records(tmp_path, monkeypatch):
    logged = []

    def spied_start_run(*args, **kwargs):
        run = start_run(*args, **kwargs)
        log = run.log

        def spy(data, *a, **k):
            logged.append(dict(data))
            return log(data, *a, **k)

        run.log = spy
        return run

    def sample_like_generate(*args, **kwargs):  # transformers' generate draws from the global torch RNG
        torch.rand(100), random.random(), np.random.rand(3)
        return sample(*args, **kwargs)

    start_run, sample = tracking.start_run, sampling.sample
    monkeypatch.setattr(tracking, "start_run", spied_start_run)
    monkeypatch.setattr(sampling, "sample", sample_like_generate)
    train(_sft_recipe(tmp_path, "with", every_steps=2))
    train(_sft_recipe(tmp_path, "without", every_steps=None))
    with_cb, without = (load_file(str(tmp_path / d / "final" / "adapter_model.safetensors"))
                        for d in ("with", "without"))
    assert with_cb.keys() == without.keys()
    for name in with_cb:
        assert torch.allclose(with_cb[name], without[name], rtol=1e-6, atol=1e-9), name
    assert not (tmp_path / "without" / "eval" / "step-2").exists()
    steps = [entry for entry in logged if any(key.startswith("eval_steps/") for key in entry)]
    assert [entry["train/global_step"] for entry in steps] == [2, 4]
    for entry in steps:
        records = _records(tmp_path / "with" / "eval" / f"step-{entry['train/global_step']}")
        assert len(records) == 2
        for strategy in ("pass", "maj"):
            for k in (1, 2, 4):
                expected = sum(_value(r, strategy, k) for r in records.values()) / len(records)
                assert entry[f"eval_steps/{strategy}@{k}"] == pytest.approx(expected)
    headers = [json.loads((tmp_path / "with" / "eval" / f"step-{s}" / "records.jsonl").read_text().splitlines()[0])
               for s in (2, 4)]
    assert headers[0]["config"]["source"]["trained_weights"] != headers[1]["config"]["source"]["trained_weights"]


def test_sampling_mode_restores_the_mode_the_padding_and_every_rng(tiny):
    model, tokenizer = tiny
    model.train()
    tokenizer.padding_side = "right"
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    with pytest.raises(RuntimeError, match="inside"):
        with sampling_mode(model, tokenizer):
            assert not model.training and tokenizer.padding_side == "left" and not torch.is_grad_enabled()
            torch.rand(5), random.random(), np.random.rand(4)
            raise RuntimeError("inside")
    assert model.training and tokenizer.padding_side == "right" and torch.is_grad_enabled()
    after = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1] and np.array_equal(after[2], expected[2])


def test_every_steps_is_refused_without_an_evaluation_and_leaves_the_records_identity(tmp_path, tiny):
    from recipes.eval_command import evaluate_model
    from recipes.tasks import load_task

    with pytest.raises(ValueError, match="eval.every_steps=2 needs eval.enabled: true"):
        EvalSection(every_steps=2)
    with pytest.raises(ValueError, match="eval.every_steps must be a positive int or null, got 0"):
        EvalSection(enabled=True, every_steps=0)
    model, tokenizer = tiny
    task = load_task("arithmetic", size=2)
    settings = dict(enabled=True, n=2, ks=[1, 2], strategies=["pass"], max_new_tokens=2)
    evaluate_model(model.eval(), tokenizer, task, EvalSection(**settings), tmp_path / "e")
    before = (tmp_path / "e" / "records.jsonl").read_bytes()
    # records written by a recipe without every_steps (or by catpot before the field) resume under one that sets it
    evaluate_model(model, tokenizer, task, EvalSection(**settings, every_steps=3), tmp_path / "e")
    assert (tmp_path / "e" / "records.jsonl").read_bytes() == before
