"""The README's and docs' examples run as written, their comments hold, and their links resolve."""

import re

import torch

from conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def python_blocks() -> list[tuple[str, str]]:
    return [(page.name, block) for page in PAGES
            for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


def test_python_examples_run():
    blocks = python_blocks()
    assert len(blocks) >= 2
    for name, block in blocks:
        exec(compile(block, name, "exec"), {})


def test_objectives_example_comments_hold():
    namespace: dict = {}
    (block,) = [b for _, b in python_blocks() if "PassAtN(16).sft_loss" in b]
    exec(compile(block, "objectives.md", "exec"), namespace)
    log_p, pass_at_n = namespace["log_p"], namespace["PassAtN"]
    expected = -pass_at_n(16).sft_weight(log_p.detach().exp()).double() / 2
    assert torch.allclose(log_p.grad.double(), expected, rtol=1e-5)


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(REPO_ROOT)} links to missing {target}"


def test_readme_is_short():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 200
