"""``catpot experiment DIR``: train and evaluate every arm of a controlled experiment, then compare them.

``DIR`` holds one recipe per arm (``*.yaml``), identical except for the objective; the arm named ``baseline`` is the
reference of the paired comparisons. The untrained base model is evaluated on the same problems with the same
sampling settings as arm ``base``. Every arm resumes after a kill and is skipped once finished. ``--jobs J`` trains
J arms at once as separate ``catpot train`` processes (a GPU is mostly idle under one small model), each logging to
``<arm output_dir>.log``. ``--seed S`` replicates the experiment with every arm's ``seed`` set to S, into
``<parent of the arms' output_dir>-seedS/`` and ``results/<DIR name>-seedS``. In W&B every arm's run is filed under
group ``<DIR name>`` (all seeds) and job type ``<arm>``, unless its recipe sets ``logging.group``/``logging.job_type``,
so W&B can aggregate an arm over seeds and overlay the arms.

``--results RESULTS`` (default ``results/<DIR name>``) receives, for committing: ``<arm>.json`` (the arm's
results.json without the step-by-step log), ``records.tar.gz`` (every arm's ``<arm>.records.jsonl``: every sample,
read back with ``evaluation.records.read_archived_records``), ``comparisons.json`` (paired bootstrap of each arm
against the baseline, per strategy and k), one figure per strategy with 95% intervals and
``difference_vs_baseline.png`` (each arm minus the baseline, with the paired interval), and ``wandb/<arm>.tar.gz`` with
each arm's offline W&B runs (``core.files.deterministic_tar_gz``: the same runs give the same bytes; unpack and
``wandb sync <arm>/offline-run-*`` to upload).

Evaluation along training: every saved ``checkpoint-N`` of an arm is evaluated with the arm's eval settings into
``<arm output_dir>/eval/checkpoint-N/`` (``recipes.checkpoint_eval``; the checkpoint holding the final weights is the
evaluation after training), and ``--results`` also receives ``<arm>.checkpoint-N.json`` for each of them, and
``<arm>.checkpoint-N.records.jsonl`` in ``records.tar.gz``. ``--jobs J`` evaluates J arms' checkpoints at once, as
separate processes logging to ``<arm output_dir>.log``.

``--seeds S1 S2 ...`` runs ``--seed S`` for each (results into ``RESULTS-seedS``, so ``results/NAME-seedS`` by
default), then writes the across-seed analysis into ``RESULTS`` (default ``results/NAME``; see
``recipes.seed_analysis``): every arm at every step (0: the base model) over the seeds, arm − baseline paired within
each seed and averaged across seeds, and figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.files import atomic_write_bytes, atomic_write_json, deterministic_tar_gz, tar_gz_members
from evaluation.records import RECORDS_ARCHIVE, read_records
from recipes.checkpoint_eval import EVAL_DIR, evaluate_checkpoints, pending, step_eval_dirs
from recipes.config import load_recipe
from recipes.eval_command import compare_directories, evaluate_model
from core.models import load_pretrained, resolve_model_path
from recipes.plotting import plot_differences, plot_results
from recipes.run_dir import open_run_dir
from recipes.train import base_eval_source, load_eval_task, train

BASELINE, BASE_MODEL = "baseline", "base"


def arm_paths(directory: str | Path) -> dict[str, Path]:
    paths = sorted(Path(directory).glob("*.yaml"))
    if not any(p.stem == BASELINE for p in paths):
        raise FileNotFoundError(f"experiment {directory}: needs a {BASELINE}.yaml arm, found {[p.name for p in paths]}")
    return {p.stem: p for p in paths}


def seed_overrides(path: Path, overrides: list[str], seed: int | None) -> list[str]:
    """``overrides`` plus, for a replication with another ``seed``, that seed and a sibling output directory."""
    if seed is None:
        return list(overrides)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"--seed must be an int, got {seed!r}")
    output_dir = Path(load_recipe(path, list(overrides)).output_dir)
    replica = output_dir.parent.with_name(f"{output_dir.parent.name}-seed{seed}") / output_dir.name
    return [*overrides, f"seed={seed}", f"output_dir={replica}"]


def wandb_overrides(path: Path, overrides: list[str], group: str, arm: str) -> list[str]:
    """``overrides`` plus the W&B group (the experiment) and job type (the arm) where the recipe leaves them unset."""
    logging = load_recipe(path, overrides).logging
    return [*overrides, *([f"logging.group={group}"] if logging.group is None else []),
            *([f"logging.job_type={arm}"] if logging.job_type is None else [])]


def train_in_parallel(paths: dict[str, Path], arms: dict, overrides: dict[str, list[str]], jobs: int) -> None:
    """``catpot train --resume`` for every arm, ``jobs`` processes at a time; a failed arm names its log."""
    for recipe in {(r.model.name, r.model.cache_dir): r for r in arms.values()}.values():
        resolve_model_path(recipe.model.name, recipe.model.cache_dir)  # convert once, before the processes race

    def train_arm(name: str) -> None:
        log = Path(f"{arms[name].output_dir}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "recipes.cli", "train", str(paths[name]), "--resume",
                   *(f"--set={o}" for o in overrides[name])]
        print(f"training arm {name}: log {log}")
        with open(log, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise ChildProcessError(f"experiment: arm {name!r} failed with exit code {code}; see {log}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(train_arm, name) for name in arms]:
            future.result()


def evaluate_checkpoints_in_parallel(paths: dict[str, Path], arms: dict, overrides: dict[str, list[str]],
                                    jobs: int) -> None:
    """``recipes.checkpoint_eval`` for every arm with checkpoints left to evaluate, ``jobs`` processes at a time,
    each appending to ``<arm output_dir>.log``; a failed arm names its log."""
    todo = [name for name, recipe in arms.items() if recipe.eval.enabled and pending(recipe)]

    def evaluate_arm(name: str) -> None:
        log = Path(f"{arms[name].output_dir}.log")
        command = [sys.executable, "-m", "recipes.checkpoint_eval", str(paths[name]),
                   *(f"--set={o}" for o in overrides[name])]
        print(f"evaluating the checkpoints of arm {name}: log {log}")
        with open(log, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise ChildProcessError(f"experiment: checkpoint evaluation of arm {name!r} failed with exit code {code}; "
                                    f"see {log}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(evaluate_arm, name) for name in todo]:
            future.result()


def evaluate_base_model(recipe, out_dir: Path) -> dict:
    """The untrained model on the arms' held-out problems, with the arms' evaluation settings.

    Runs every time: finished records are reused (and refused if they came from another model or setting), so only
    the curves are recomputed once the evaluation is complete.
    """
    m = recipe.model
    with open_run_dir(out_dir, "eval", "base model evaluation directory", resume=True):
        model, tokenizer = load_pretrained(m.name, dtype=m.dtype, load_in_4bit=m.load_in_4bit, cache_dir=m.cache_dir,
                                           trust_remote_code=m.trust_remote_code)
        source = {**base_eval_source(recipe), "trained_weights": None}
        return evaluate_model(model.eval(), tokenizer, load_eval_task(recipe), recipe.eval, out_dir,
                              model_name=BASE_MODEL, source=source)


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


def run_experiment(directory: str | Path, results_dir: str | Path | None = None, overrides: list[str] = (),
                   jobs: int = 1, seed: int | None = None) -> Path:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive int, got {jobs!r}")
    paths = arm_paths(directory)
    group = Path(directory).resolve().name
    arm_overrides = {name: wandb_overrides(path, seed_overrides(path, list(overrides), seed), group, name)
                     for name, path in paths.items()}
    arms = {name: load_recipe(path, arm_overrides[name]) for name, path in paths.items()}
    experiment = group + ("" if seed is None else f"-seed{seed}")
    results = Path(results_dir or Path("results") / experiment)
    with open_run_dir(results, "experiment", "--results", resume=True):
        return _run_arms(paths, arms, arm_overrides, results, jobs)


def _run_arms(paths: dict[str, Path], arms: dict, arm_overrides: dict[str, list[str]], results: Path,
              jobs: int) -> Path:
    if jobs > 1:
        train_in_parallel(paths, arms, arm_overrides, jobs)
    eval_dirs, checkpoint_dirs = {}, {}
    for name, recipe in arms.items():
        train(recipe, resume=True)  # after parallel training: only reports "already complete"
        eval_dirs[name] = Path(recipe.output_dir) / EVAL_DIR
    if jobs > 1:
        evaluate_checkpoints_in_parallel(paths, arms, arm_overrides, jobs)
    for name, recipe in arms.items():
        if recipe.eval.enabled:
            dirs = evaluate_checkpoints(recipe)  # after parallel evaluation: reuses the records
            checkpoint_dirs[name] = {step: d for step, d in dirs.items() if d != eval_dirs[name]}
    reference = arms[BASELINE]
    base_dir = Path(reference.output_dir).parent / BASE_MODEL / "eval"
    evaluate_base_model(reference, base_dir)
    eval_dirs[BASE_MODEL] = base_dir
    committed = {name: directory_ for name, directory_ in eval_dirs.items()}
    committed.update({f"{name}.{directory_.name}": directory_
                      for name, dirs in checkpoint_dirs.items() for directory_ in dirs.values()})
    for name, directory_ in committed.items():
        summary = json.loads((directory_ / "results.json").read_text())
        summary["model"] = name
        atomic_write_json(results / f"{name}.json", summary)
    members = {f"{name}.records.jsonl": directory_ / "records.jsonl" for name, directory_ in committed.items()}
    atomic_write_bytes(results / RECORDS_ARCHIVE,
                       tar_gz_members({member: members[member].read_bytes() for member in sorted(members)}))
    for name, recipe in arms.items():
        runs = sorted(p for p in (Path(recipe.output_dir) / "wandb").glob("offline-run-*")
                      if p.is_dir() and not p.is_symlink())
        if runs:
            atomic_write_bytes(results / "wandb" / f"{name}.tar.gz", deterministic_tar_gz(runs, name))
    comparisons = compare_to_baseline(eval_dirs, seed=reference.seed)
    atomic_write_json(results / "comparisons.json", comparisons)
    arm_files = [results / f"{name}.json" for name in eval_dirs]
    for strategy in json.loads(arm_files[0].read_text())["curves"]:
        plot_results(arm_files, results / f"{strategy}_at_k.png", x="k", strategies=[strategy])
    plot_differences({"": comparisons}, results / "difference_vs_baseline.png")
    print_comparisons(comparisons)
    return results


def seed_sources(directory: str | Path, seeds: list[int], overrides: list[str] = ()) -> tuple[dict, dict]:
    """``({seed: {arm: {step: eval dir}}}, {seed: bootstrap seed})`` of the replications
    ``--seed S`` wrote; step 0 of every arm is the seed's base-model evaluation."""
    paths = arm_paths(directory)
    sources, bootstrap = {}, {}
    for seed in seeds:
        arms = {name: load_recipe(path, seed_overrides(path, list(overrides), seed)) for name, path in paths.items()}
        base = Path(arms[BASELINE].output_dir).parent / BASE_MODEL / EVAL_DIR
        sources[seed] = {name: {**({0: base} if (base / "results.json").is_file() else {}), **step_eval_dirs(recipe)}
                         for name, recipe in arms.items() if recipe.eval.enabled}
        bootstrap[seed] = arms[BASELINE].seed
    return sources, bootstrap


def analyse_seeds(directory: str | Path, seeds: list[int], results_dir: str | Path | None = None,
                  overrides: list[str] = ()) -> Path:
    """The across-seed analysis (``recipes.seed_analysis``) of finished replications, into ``results_dir``."""
    from recipes.seed_analysis import analyse, write_analysis

    group = Path(directory).resolve().name
    results = Path(results_dir or Path("results") / group)
    reference = load_recipe(arm_paths(directory)[BASELINE], list(overrides))
    strategies = [s for s in reference.eval.strategies if s != "pot"]
    with open_run_dir(results, "experiment", "--results", resume=True):
        sources, bootstrap = seed_sources(directory, seeds, overrides)
        summary = analyse(sources, strategies, reference.eval.ks, BASELINE, bootstrap)
        summary["experiment"] = group
        write_analysis(summary, results)
    print((results / "seeds.md").read_text())
    return results


def run_seeds(directory: str | Path, seeds: list[int], results_dir: str | Path | None = None,
              overrides: list[str] = (), jobs: int = 1) -> Path:
    """``--seeds``: each replication in turn (``run_experiment`` with ``seed``), then ``analyse_seeds``."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct seeds, got {seeds!r}")
    results = Path(results_dir or Path("results") / Path(directory).resolve().name)
    for seed in seeds:
        run_experiment(directory, results.with_name(f"{results.name}-seed{seed}"), overrides, jobs=jobs, seed=seed)
    return analyse_seeds(directory, seeds, results, overrides)


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
