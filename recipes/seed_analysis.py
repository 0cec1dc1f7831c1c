"""Across-seed analysis of a replicated experiment: every arm at every evaluated training step, over the seeds.

Inputs, per seed S (``catpot experiment DIR --seed S`` outputs): each arm's evaluation at every saved checkpoint
(``recipes.checkpoint_eval.step_eval_dirs``) and the untrained base model as step 0 (the same model for every arm).

Two intervals, because there are two sources of noise:

* **within a seed** (problems): the 95% percentile bootstrap over the held-out problems of that seed's evaluation —
  for a curve point ``results.json``'s CI, for an arm − baseline difference ``evaluation.metrics.paired_bootstrap``
  of the per-problem values (the same problems resampled for both arms). It ignores training randomness.
* **across seeds** (training runs): the mean over seeds of the per-seed values with a Student t 95% interval,
  mean ± t_{0.975, S−1} · sd / √S (sd with S − 1 in the denominator). The seeds are the independent replications of
  training, so this interval is the one that speaks to "does the objective change the result"; it assumes the
  per-seed values are roughly normal, and with S = 3 (t = 4.30) it is wide — it is reported as it is, next to every
  seed's own paired interval, rather than narrowed by pooling problems across seeds as if they were independent.
  With one seed there is no across-seed interval (null).

Outputs in the results directory: ``seeds.json`` (every row below), ``seeds.md`` (tables), figures
``at_k_step<last>.png`` (curves over k at the last step), ``vs_step.png`` (pass@1 and pass@k_max against the step)
and ``difference_vs_step.png`` (arm − baseline against the step). Each seed's W&B runs stay in that seed's results
(``<results>-seedS/wandb/<arm>.tar.gz``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from core.files import atomic_write_json, atomic_write_text
from evaluation.metrics import paired_bootstrap, problem_curve
from evaluation.records import read_records

SUMMARY_FILE, TABLE_FILE = "seeds.json", "seeds.md"
LEVEL = 0.95


def t_quantile(probability: float, df: int) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom, by bisection on its CDF
    F(t) = 1 − ½·I_{df/(df+t²)}(df/2, ½) for t ≥ 0 (regularised incomplete beta from mpmath)."""
    import mpmath

    if not 0.5 <= probability < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= probability < 1 and df >= 1, got {probability}, {df}")

    def cdf(t: float) -> float:
        return float(1 - 0.5 * mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, 2 * high
    for _ in range(100):  # the bracket halves each time: far below float resolution
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def seed_interval(values: list[float], level: float = LEVEL) -> dict:
    """``{"mean", "ci_low", "ci_high", "sd"}`` over seeds: the Student t interval (module docstring); the interval and
    sd are None for a single seed."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "sd": None}
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd}


class Evaluation:
    """One evaluation directory: per-problem values ``(problems × ks)`` per strategy, in problem-id order."""

    def __init__(self, directory: Path, strategies: list[str], ks: list[int]):
        self.directory = Path(directory)
        results = json.loads((self.directory / "results.json").read_text())
        _, records = read_records(self.directory / "records.jsonl")
        records = sorted(records, key=lambda r: r["id"])
        self.ids = [r["id"] for r in records]
        self.values = {s: torch.tensor([problem_curve(r, s, ks, results["scorer"], seed=results["config"]["seed"])[0]
                                        for r in records], dtype=torch.float64) for s in strategies}
        self.cis = {s: {p["k"]: (p["ci_low"], p["ci_high"]) for p in results["curves"].get(s, [])}
                    for s in strategies}


def analyse(sources: dict[int, dict[str, dict[int, Path]]], strategies: list[str], ks: list[int],
            baseline: str, bootstrap_seeds: dict[int, int]) -> dict:
    """``sources``: ``{seed: {arm: {step: evaluation directory}}}``; returns what ``seeds.json`` holds."""
    cache: dict[Path, Evaluation] = {}

    def evaluation(path: Path) -> Evaluation:
        if path not in cache:
            cache[path] = Evaluation(path, strategies, ks)
        return cache[path]

    seeds = sorted(sources)
    arms = sorted({arm for by_arm in sources.values() for arm in by_arm}, key=lambda a: (a != baseline, a))
    steps = sorted({step for by_arm in sources.values() for dirs in by_arm.values() for step in dirs})
    curves, differences, missing = [], [], []
    for arm in arms:
        for step in steps:
            present = [s for s in seeds if step in sources[s].get(arm, {})]
            missing += [{"seed": s, "arm": arm, "step": step} for s in seeds if s not in present]
            if not present:
                continue
            evals = {s: evaluation(sources[s][arm][step]) for s in present}
            for strategy in strategies:
                for i, k in enumerate(ks):
                    per_seed = [{"seed": s, "value": float(e.values[strategy][:, i].mean()),
                                 **dict(zip(("ci_low", "ci_high"), e.cis[strategy].get(k, (None, None))))}
                                for s, e in evals.items()]
                    curves.append({"arm": arm, "step": step, "strategy": strategy, "k": k,
                                   **seed_interval([p["value"] for p in per_seed]), "seeds": per_seed})
            if arm == baseline or step == 0:  # at step 0 every arm is the base model
                continue
            paired = [s for s in present if step in sources[s].get(baseline, {})]
            for strategy in strategies:
                for i, k in enumerate(ks):
                    per_seed = []
                    for s in paired:
                        a, b = evaluation(sources[s][baseline][step]), evals[s]
                        if a.ids != b.ids:
                            raise ValueError(f"seed {s} step {step}: arm {arm!r} was evaluated on other problems "
                                             f"than {baseline!r}")
                        cmp = paired_bootstrap(a.values[strategy][:, i], b.values[strategy][:, i],
                                               seed=bootstrap_seeds[s])
                        per_seed.append({"seed": s, "difference": cmp.difference, "ci_low": cmp.ci_low,
                                         "ci_high": cmp.ci_high})
                    if not per_seed:
                        continue
                    differences.append({
                        "arm": arm, "step": step, "strategy": strategy, "k": k,
                        **seed_interval([p["difference"] for p in per_seed]), "seeds": per_seed,
                        "seeds_better": sum(p["ci_low"] > 0 for p in per_seed),
                        "seeds_worse": sum(p["ci_high"] < 0 for p in per_seed)})
    return {"seeds": seeds, "arms": arms, "baseline": baseline, "steps": steps, "strategies": strategies, "ks": ks,
            "intervals": {
                "within_seed": "95% percentile bootstrap over the held-out problems (paired for differences)",
                "across_seeds": f"Student t {LEVEL:.0%} interval of the mean over seeds, df = seeds - 1"},
            "missing": missing, "curves": curves, "differences": differences,
            "sources": {str(s): {arm: {str(step): str(path) for step, path in dirs.items()}
                                 for arm, dirs in by_arm.items()} for s, by_arm in sources.items()}}


def _interval(row: dict) -> str:
    if row["ci_low"] is None:
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _signed(row: dict) -> str:
    if row["ci_low"] is None:
        return f"{row['mean']:+.3f}"
    return f"{row['mean']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def markdown(summary: dict) -> str:
    """Tables: every arm at the last step; arm − baseline at every step (mean over seeds, t interval, each seed)."""
    last, kmax = summary["steps"][-1], max(summary["ks"])
    metrics = [(s, k) for s, k in (("pass", 1), ("pass", kmax), ("maj", kmax)) if s in summary["strategies"]]
    seeds = summary["seeds"]
    curve = {(r["arm"], r["step"], r["strategy"], r["k"]): r for r in summary["curves"]}
    lines = [f"Seeds {', '.join(map(str, seeds))}. Mean over seeds [{summary['intervals']['across_seeds']}]; "
             f"after each seed's difference, [its {summary['intervals']['within_seed']}]. Step 0 is the base "
             "model.", "",
             f"### Every arm at step {last}", "",
             "| arm | " + " | ".join(f"{s}@{k}" for s, k in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for arm in summary["arms"]:
        cells = [_interval(curve[(arm, last, s, k)]) if (arm, last, s, k) in curve else "-" for s, k in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"### Arm − {summary['baseline']} at every step", "",
              "| arm | step | metric | mean over seeds | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|---|---|" + "---|" * len(seeds)]
    for row in summary["differences"]:
        if (row["strategy"], row["k"]) not in metrics:
            continue
        by_seed = {p["seed"]: p for p in row["seeds"]}
        cells = [f"{by_seed[s]['difference']:+.3f} [{by_seed[s]['ci_low']:+.3f}, {by_seed[s]['ci_high']:+.3f}]"
                 if s in by_seed else "-" for s in seeds]
        lines.append(f"| {row['arm']} | {row['step']} | {row['strategy']}@{row['k']} | {_signed(row)} | "
                     + " | ".join(cells) + " |")
    if summary["missing"]:
        lines += ["", "Missing evaluations: " + ", ".join(f"seed {m['seed']} {m['arm']} step {m['step']}"
                                                         for m in summary["missing"])]
    return "\n".join(lines) + "\n"


def write_analysis(summary: dict, results: Path) -> None:
    from recipes.plotting import plot_seed_curves, plot_seed_differences, plot_seed_steps

    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / SUMMARY_FILE, summary)
    atomic_write_text(results / TABLE_FILE, markdown(summary))
    last, kmax = summary["steps"][-1], max(summary["ks"])
    metrics = [("pass", 1), ("pass", kmax)]
    plot_seed_curves(summary["curves"], results / f"at_k_step{last}.png", step=last,
                     strategies=summary["strategies"])
    plot_seed_steps(summary["curves"], results / "vs_step.png", metrics)
    plot_seed_differences(summary["differences"], results / "difference_vs_step.png", metrics,
                          baseline=summary["baseline"])
