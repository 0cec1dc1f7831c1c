"""Shared test set-up: offline hubs, offline W&B, GPU-only tests skipped without CUDA, shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports transformers/datasets/wandb: a hub lookup would otherwise retry for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny():
    """A fresh tiny random GQA Llama and its character tokenizer: ``(model, tokenizer)``."""
    from core.tiny_llama import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The offline copies of GSM8K / MATH / MATH-500: ``$CATPOT_SHARED_DATA``, else ``../shared/data`` beside the
    repository."""
    path = Path(os.environ.get("CATPOT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, converted once and cached: ``(model, tokenizer)`` in fp32 on CPU."""
    from core.models import load_pretrained

    return load_pretrained("smollm2-135m-instruct", dtype="float32", load_in_4bit=False)
