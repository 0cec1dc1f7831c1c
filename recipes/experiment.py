"""``catpot experiment DIR``: train and evaluate every arm of a controlled experiment, then compare them.

``DIR`` holds one recipe per arm (``*.yaml``), identical except for the objective; the arm named ``baseline`` is the
reference of the paired comparisons. The untrained base model is evaluated on the same problems with the same
sampling settings as arm ``base``. Every arm resumes after a kill and is skipped once finished.

``--results RESULTS`` (default ``results/<DIR name>``) receives, for committing: ``<arm>.json`` (the arm's
results.json without the step-by-step log), ``<arm>.records.jsonl.gz`` (every sample), ``comparisons.json`` (paired
bootstrap of each arm against the baseline, per strategy and k) and one figure per strategy with 95% intervals.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from pot.records import read_records
from recipes.config import load_recipe
from recipes.eval_command import compare_directories, evaluate_model
from recipes.models import load_pretrained
from recipes.plotting import plot_results
from recipes.train import load_eval_task, train

BASELINE, BASE_MODEL = "baseline", "base"


def arm_recipes(directory: str | Path, overrides: list[str] = ()) -> dict:
    paths = sorted(Path(directory).glob("*.yaml"))
    if not any(p.stem == BASELINE for p in paths):
        raise FileNotFoundError(f"experiment {directory}: needs a {BASELINE}.yaml arm, found {[p.name for p in paths]}")
    return {p.stem: load_recipe(p, list(overrides)) for p in paths}


def evaluate_base_model(recipe, out_dir: Path) -> dict:
    """The untrained model on the arms' held-out problems, with the arms' evaluation settings."""
    results_path = out_dir / "results.json"
    if results_path.is_file():
        return json.loads(results_path.read_text())
    model, tokenizer = load_pretrained(recipe.model.name, dtype=recipe.model.dtype, load_in_4bit=recipe.model.load_in_4bit,
                                       cache_dir=recipe.model.cache_dir)
    return evaluate_model(model.eval(), tokenizer, load_eval_task(recipe), recipe.eval, out_dir, model_name=BASE_MODEL)


def compare_to_baseline(eval_dirs: dict[str, Path], seed: int = 0) -> list[dict]:
    """Paired bootstrap (arm − baseline) over the same problems, for every strategy and k of the baseline."""
    _, baseline_records = read_records(eval_dirs[BASELINE] / "records.jsonl")
    rows = []
    for arm, directory in eval_dirs.items():
        if arm == BASELINE:
            continue
        _, records = read_records(directory / "records.jsonl")
        if {r["id"] for r in records} != {r["id"] for r in baseline_records}:
            raise ValueError(f"experiment: arm {arm!r} was evaluated on other problems than the baseline")
        rows += [{"arm": arm, **row} for row in compare_directories(eval_dirs[BASELINE], directory, seed=seed)]
    return rows


def run_experiment(directory: str | Path, results_dir: str | Path | None = None, overrides: list[str] = ()) -> Path:
    arms = arm_recipes(directory, overrides)
    results = Path(results_dir or Path("results") / Path(directory).name)
    results.mkdir(parents=True, exist_ok=True)
    eval_dirs = {}
    for name, recipe in arms.items():
        train(recipe, resume=True)
        eval_dirs[name] = Path(recipe.output_dir) / "eval"
    reference = arms[BASELINE]
    base_dir = Path(reference.output_dir).parent / BASE_MODEL / "eval"
    evaluate_base_model(reference, base_dir)
    eval_dirs[BASE_MODEL] = base_dir
    for name, directory_ in eval_dirs.items():
        summary = json.loads((directory_ / "results.json").read_text())
        summary["model"] = name
        (results / f"{name}.json").write_text(json.dumps(summary, indent=2))
        with open(directory_ / "records.jsonl", "rb") as source, gzip.open(results / f"{name}.records.jsonl.gz", "wb") as target:
            shutil.copyfileobj(source, target)
    comparisons = compare_to_baseline(eval_dirs, seed=reference.seed)
    (results / "comparisons.json").write_text(json.dumps(comparisons, indent=2))
    arm_files = [results / f"{name}.json" for name in eval_dirs]
    for strategy in json.loads(arm_files[0].read_text())["curves"]:
        plot_results(arm_files, results / f"{strategy}_at_k.png", x="k", strategies=[strategy])
    print_comparisons(comparisons)
    return results


def print_comparisons(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="arm − baseline (paired bootstrap over problems, 95% CI)")
    for column in ("arm", "metric", "difference", "95% CI", "verdict"):
        table.add_column(column)
    for r in rows:
        verdict = "within noise" if r["within_noise"] else ("better" if r["difference"] > 0 else "worse")
        table.add_row(r["arm"], f"{r['strategy']}@{r['k']}", f"{r['difference']:+.3f}",
                      f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", verdict)
    Console().print(table)
