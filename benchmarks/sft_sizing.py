"""Size an SFT experiment to a time budget from measured unit costs: training step, and evaluation per sample.

Measures, on this machine and with the recipes of ``DIR``:

* the training step of every arm's trainer (``--train-steps`` steps of each of ``--arms``; the first step is
  dropped as warm-up), in wall and process CPU seconds;
* the evaluation of a trained adapter (``--adapter``, e.g. the pilot's last CE checkpoint) and of the base model on
  the first ``--problems`` held-out problems with the recipe's ``max_new_tokens`` and ``n`` (or ``--n``), for every
  ``prompts_per_batch`` in ``--prompts-per-batch``, in wall and CPU seconds per (problem, sample);
* the scoring of one evaluation, t_curves(n): ``evaluation.metrics.curves`` over the recipe's strategies and
  k = 1, 2, 4, ..., n on the first n samples of each problem, per problem (maj@k is a Monte Carlo estimate: the
  slow part).

Then prices every experiment in ``--grid`` (steps S, checkpoints C, samples n) for A arms × R seeds on P held-out
problems, on ``--cores`` cores:

    cost = A·R·(S·t_step + C·P·n·t_sample) + R·P·n·t_sample_base + R·(3·A·C + 1)·P·t_curves(n)     [CPU s]
    wall = cost / cores

with t_sample at the best ``prompts_per_batch``, measured at one n and applied to every n of the grid (measured at
the largest, it bounds the smaller ones from above). Per seed, ``catpot experiment`` evaluates the base model once;
per checkpoint it scores the A arms and compares each of A − 1 arms and the base model with the baseline, scoring
both sides again: 3·A·C + 1 scorings. The wall time assumes the cores are kept busy: the base model and the
scoring run in one process after the arms, so run the seed replications side by side (``catpot experiment --seed
S`` in parallel). CPU seconds are what a loaded machine stretches least: with one thread per process, wall ≈ CPU
when nothing else runs; the load average at each measurement is recorded next to it. Writes ``sizing.json`` into
``--results``; ``--reuse`` keeps its timings and prices the grid again.

    python benchmarks/sft_sizing.py recipes/experiments/sft_passn \\
        --adapter outputs/experiments/sft_passn-pilot/sum3/train/checkpoint-120
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from core.files import atomic_write_json
from core.models import load_pretrained
from evaluation.metrics import curves
from evaluation.records import read_records
from recipes.config import load_recipe
from recipes.eval_command import evaluate_model
from recipes.train import build_trainer, load_eval_task, load_model, load_train_task


class StepClock(TrainerCallback):
    """Wall and process-CPU seconds of every optimizer step."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)


def measure_training(recipe, steps: int, out: Path) -> dict:
    """Median wall and CPU seconds of the arm's optimizer steps (the first one, warm-up, dropped)."""
    recipe = replace(recipe, output_dir=str(out), logging=replace(recipe.logging, mode="disabled"),
                     train=replace(recipe.train, trl={**recipe.train.trl, "max_steps": steps, "save_steps": 10**6}))
    model, tokenizer = load_model(recipe)
    clock = StepClock()
    trainer = build_trainer(recipe, model, tokenizer, load_train_task(recipe), [clock])
    load = os.getloadavg()[0]
    trainer.train()
    return {"steps_timed": len(clock.wall) - 1, "wall_s_per_step": statistics.median(clock.wall[1:]),
            "cpu_s_per_step": statistics.median(clock.cpu[1:]), "load_average_1min_before": load}


def measure_evaluation(model, tokenizer, task, eval_cfg, per_batch: int, out: Path) -> dict:
    cfg = replace(eval_cfg, prompts_per_batch=per_batch, ks=[1], strategies=["pass"])
    shutil.rmtree(out, ignore_errors=True)  # evaluate_model resumes from records: time a fresh run
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    results = evaluate_model(model, tokenizer, task, cfg, out, model_name=f"sizing ppb {per_batch}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = len(task) * cfg.n
    return {"prompts_per_batch": per_batch, "problems": len(task), "n": cfg.n,
            "wall_s_per_sample": wall / samples, "cpu_s_per_sample": cpu / samples,
            "generated_tokens_per_sample": generated_tokens_per_sample(out / "records.jsonl"),
            "pass@1": results["curves"]["pass"][0]["value"], "load_average_1min_before": load}


def generated_tokens_per_sample(records_path: Path) -> float:
    _, records = read_records(records_path)
    return sum(s["num_tokens"] for r in records for s in r["samples"]) / sum(len(r["samples"]) for r in records)


def measure_scoring(records_path: Path, eval_cfg, n: int) -> dict:
    """CPU seconds per problem of ``curves`` (the recipe's strategies, ks 1, 2, 4, ..., n) on the first n samples."""
    _, records = read_records(records_path)
    records = [{**r, "samples": r["samples"][:n]} for r in records]
    if min(len(r["samples"]) for r in records) < n:
        raise ValueError(f"sft_sizing: {records_path} has fewer than n={n} samples per problem; time with --n {n}")
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    began = time.process_time()
    curves(records, [s for s in eval_cfg.strategies if s != "pot"], ks, eval_cfg.scorer, 1, eval_cfg.seed)
    seconds = time.process_time() - began
    return {"problems": len(records), "n": n, "ks": ks, "cpu_s_per_problem": seconds / len(records)}


def price(unit: dict, arms: int, seeds: int, problems: int, cores: int, steps: int, checkpoints: int, n: int) -> dict:
    train = arms * seeds * steps * unit["cpu_s_per_step"]
    evaluate = arms * seeds * checkpoints * problems * n * unit["cpu_s_per_sample"]
    base = seeds * problems * n * unit["cpu_s_per_sample_base"]
    scoring = seeds * (3 * arms * checkpoints + 1) * problems * unit["cpu_s_per_problem_scoring"][n]
    total = train + evaluate + base + scoring
    return {"steps": steps, "checkpoints": checkpoints, "n": n, "problems": problems, "train_cpu_s": train,
            "eval_cpu_s": evaluate, "base_eval_cpu_s": base, "scoring_cpu_s": scoring, "cpu_s": total,
            "wall_h_on_cores": total / cores / 3600}


def measure(args, directory: Path, baseline, work: Path) -> dict:
    """Time every arm's training step and the evaluation of a trained adapter and of the base model."""
    report = {"machine": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "load_average_at_start": os.getloadavg()}, "training": {}, "evaluation": {}}
    for arm in args.arms.split(","):
        report["training"][arm] = measure_training(load_recipe(directory / f"{arm}.yaml"), args.train_steps + 1,
                                                   work / f"train-{arm}")
        print(f"train {arm}: {report['training'][arm]}", flush=True)
    full_task = load_eval_task(baseline)
    task = replace(full_task, problems=full_task.problems[: args.problems])
    base, tokenizer = load_pretrained(baseline.model.name, dtype=baseline.model.dtype,
                                      load_in_4bit=baseline.model.load_in_4bit, cache_dir=baseline.model.cache_dir)
    tokenizer.padding_side = "left"
    from peft import PeftModel

    trained = PeftModel.from_pretrained(base, args.adapter).eval()
    rows = []
    for per_batch in [int(x) for x in args.prompts_per_batch.split(",")]:
        rows.append(measure_evaluation(trained, tokenizer, task, baseline.eval, per_batch,
                                       work / f"eval-trained-ppb{per_batch}"))
        print(f"eval trained: {rows[-1]}", flush=True)
    best = min(rows, key=lambda r: r["cpu_s_per_sample"])
    base_row = measure_evaluation(trained.unload().eval(), tokenizer, task, baseline.eval, best["prompts_per_batch"],
                                  work / f"eval-base-ppb{best['prompts_per_batch']}")
    print(f"eval base: {base_row}", flush=True)
    report["evaluation"] = {"adapter": args.adapter, "trained": rows, "base": base_row,
                            "best_prompts_per_batch": best["prompts_per_batch"]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="experiment directory (baseline.yaml and the other arms)")
    parser.add_argument("--adapter", help="a trained adapter to time the evaluation of arms with")
    parser.add_argument("--arms", default="baseline,passn64", help="arms whose training step is timed")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--problems", type=int, default=32, help="held-out problems timed per evaluation")
    parser.add_argument("--prompts-per-batch", default="8,16,32")
    parser.add_argument("--n", type=int, default=None, help="samples per problem to time (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--grid", default="S=80,120;C=1,2,3;n=16,32,64",
                        help="steps, checkpoints and samples to price, every combination")
    parser.add_argument("--results", default=None, help="where sizing.json goes (default results/NAME)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the training and evaluation timings of the existing sizing.json; time the scoring "
                             "and price the grid again")
    args = parser.parse_args()

    directory = Path(args.directory)
    arm_names = sorted(p.stem for p in directory.glob("*.yaml"))
    baseline = load_recipe(directory / "baseline.yaml")
    if args.n is not None:
        baseline = replace(baseline, eval=replace(baseline.eval, n=args.n, ks=[1]))  # timing samples only
    work = Path("outputs/experiments") / f"{directory.name}-sizing"
    results = Path(args.results or Path("results") / directory.name)
    if args.reuse:
        report = json.loads((results / "sizing.json").read_text())
    elif not args.adapter:
        raise SystemExit("sft_sizing: --adapter is required (or --reuse an earlier sizing.json)")
    else:
        report = measure(args, directory, baseline, work)
    best = min(report["evaluation"]["trained"], key=lambda r: r["cpu_s_per_sample"])
    grid = dict(part.split("=") for part in args.grid.split(";"))
    sample_counts = sorted({int(x) for x in grid["n"].split(",")})
    records = work / f"eval-trained-ppb{best['prompts_per_batch']}" / "records.jsonl"
    report["evaluation"]["scoring"] = [measure_scoring(records, baseline.eval, n) for n in sample_counts]
    print(f"scoring: {report['evaluation']['scoring']}", flush=True)
    unit = {"cpu_s_per_step": max(r["cpu_s_per_step"] for r in report["training"].values()),
            "cpu_s_per_sample": best["cpu_s_per_sample"],
            "cpu_s_per_sample_base": report["evaluation"]["base"]["cpu_s_per_sample"],
            "cpu_s_per_problem_scoring": {r["n"]: r["cpu_s_per_problem"] for r in report["evaluation"]["scoring"]}}
    options = itertools.product(*([int(x) for x in grid[key].split(",")] for key in ("S", "C", "n")))
    problems = len(load_eval_task(baseline))
    table = [price(unit, len(arm_names), args.seeds, problems, args.cores, s, c, n) for s, c, n in options]
    report.update({"unit_costs": unit, "arms": arm_names, "seeds": args.seeds, "cores": args.cores,
                   "held_out_problems": problems, "table": table,
                   "formula": "cpu = A*R*(S*t_step + C*P*n*t_sample) + R*P*n*t_sample_base "
                              "+ R*(3*A*C+1)*P*t_curves(n); wall = cpu / cores"})
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "sizing.json", report)
    print(f"unit costs (CPU s): {unit}")
    print(f"| S | C | n | train h | eval h | base h | scoring h | total CPU h | wall h on {args.cores} cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['steps']} | {row['checkpoints']} | {row['n']} | {row['train_cpu_s'] / 3600:.2f} | "
              f"{row['eval_cpu_s'] / 3600:.2f} | {row['base_eval_cpu_s'] / 3600:.2f} | "
              f"{row['scoring_cpu_s'] / 3600:.2f} | {row['cpu_s'] / 3600:.2f} | {row['wall_h_on_cores']:.2f} |")


if __name__ == "__main__":
    main()
