"""``catpot demo`` (``make demo``): CAT-GRPO pass@N next to plain GRPO on the embedded model, then their curves.

Both arms come from ``recipes/demo.yaml``; the baseline differs only in ``train.cat_strategy: none`` (same seed, data,
steps and learning rate). Each arm resumes if it was interrupted and is skipped if it already finished, so running
the demo again never overwrites results. The comparison figure plots pass@k and maj@k of both arms with 95% CIs.
"""

from __future__ import annotations

from pathlib import Path

from recipes.config import load_recipe
from recipes.plotting import plot_results
from recipes.train import RESULTS_FILE, print_summary, train

DEMO_RECIPE = "demo"


def demo_arms(output_root: str | Path, overrides: list[str] = ()) -> dict:
    """The two recipes of the demo, keyed by arm name."""
    root = Path(output_root)
    return {
        "baseline": load_recipe(DEMO_RECIPE, [*overrides, "train.cat_strategy=none", f"output_dir={root / 'baseline'}", "logging.run_name=baseline"]),
        "cat": load_recipe(DEMO_RECIPE, [*overrides, f"output_dir={root / 'cat'}", "logging.run_name=cat"]),
    }


def run_demo(output_root: str | Path = "outputs/demo", overrides: list[str] = ()) -> Path:
    """Train and evaluate both arms; return the comparison figure's path."""
    summaries = [train(recipe, resume=True) for recipe in demo_arms(output_root, overrides).values()]
    root = Path(output_root)
    paths = [root / arm / RESULTS_FILE for arm in ("baseline", "cat")]
    figure = plot_results(paths, root / "pass_and_maj_at_k.png", x="k")
    print_summary(summaries)
    print(f"figure: {figure}")
    return figure
