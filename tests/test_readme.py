"""The README's examples run as written, and its formulas table matches the code."""

import re

import torch

from conftest import REPO_ROOT


def python_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run():
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_example_comments_hold():
    namespace: dict = {}
    (block,) = [b for b in python_blocks() if "PassAtN(16).sft_loss" in b]
    exec(compile(block, "README.md", "exec"), namespace)
    assert torch.allclose(namespace["log_p"].grad.double(), -namespace["PassAtN"](16).sft_weight(namespace["log_p"].detach().exp()).double() / 2, rtol=1e-5)
