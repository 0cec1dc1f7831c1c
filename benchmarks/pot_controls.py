"""PoT episode mode with oracle / majority / self / random rewards vs best-of-N and maj@k at matched FLOPs.

Every arm is one resumable ``catpot eval`` run (records written per batch of problems; a rerun continues):
- ``baseline``: n plain samples per problem (T = 1) -> pass@k, maj@k, avg@k and best-of-k under self-certainty;
- ``pot_<reward>``: PoT episode mode (G attempts per update, one PPO-clip epoch, greedy answer) answered after every
  budget from one run, each answer charged the FLOPs spent up to it (``pot.episode``).
Then per task: accuracy with 95% bootstrap CIs, answers changed vs budget 0, paired bootstraps
(``evaluation.metrics.paired_bootstrap``) of PoT@u vs budget 0 and vs maj@k / best-of-k at the smallest k whose FLOPs
reach PoT@u's (the largest k when none does), a table (summary.md, summary.json), accuracy vs FLOPs
(accuracy_vs_flops.png), each arm's results.json and every arm's records in records.tar.gz. ``--time-limit`` stops
starting new arms after that many minutes (rerun to finish).
Usage: python benchmarks/pot_controls.py [--work outputs/pot_controls] [--out results/pot_controls]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

SYSTEM_PROMPT = "Reply with only the number."
TASKS = {
    "arithmetic": ["--task", "arithmetic", "--task-option", "max_operand=19", "--task-option", "test_one_in=2",
                   "--system-prompt", SYSTEM_PROMPT],
    "gsm8k": ["--task", "gsm8k", "--data-dir", "../shared/data"],
}


def arm_argv(task: str, arm: str, args, out: Path) -> list[str]:
    limit = args.arith_problems if task == "arithmetic" else args.gsm8k_problems
    tokens = args.arith_tokens if task == "arithmetic" else args.gsm8k_tokens
    common = ["eval", "--model", args.model, *TASKS[task], "--split", "test", "--limit", str(limit),
              "--max-new-tokens", str(tokens), "--temperature", "1.0", "--dtype", "float32", "--out", str(out)]
    if task == "gsm8k":
        common[common.index("--data-dir") + 1] = args.data_dir
    if arm == "baseline":
        n = args.n if task == "arithmetic" else args.gsm8k_n
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
        return [*common, "--n", str(n), "--ks", ",".join(map(str, ks)), "--strategies", "pass,maj,avg,bon",
                "--scorer", "self_certainty", "--prompts-per-batch", "10"]
    budgets = args.budgets if task == "arithmetic" else args.gsm8k_budgets
    return [*common, "--n", "1", "--ks", "1", "--strategies", "pot", "--pot-mode", "episode",
            "--pot-reward", arm.removeprefix("pot_"), "--pot-updates", budgets, "--pot-runs", "1",
            "--pot-group-size", str(args.group_size), "--pot-epochs", "1", "--pot-answer", "greedy",
            *(["--pot-lr", str(args.lr)] if args.lr else []), "--prompts-per-batch", str(args.pot_batch)]


def run_arms(args) -> dict[str, list[str]]:
    from recipes.eval_command import main as catpot_eval

    started, skipped = time.perf_counter(), {}
    plan = [(t, a) for t, arms in (("arithmetic", args.arith_arms), ("gsm8k", args.gsm8k_arms)) for a in arms]
    plan.sort(key=lambda ta: args.order.index(f"{ta[0]}:{ta[1]}") if f"{ta[0]}:{ta[1]}" in args.order else 99)
    for task, arm in plan:
        out = Path(args.work) / task / arm
        if (out / "results.json").exists():
            continue
        if (time.perf_counter() - started) / 60 > args.time_limit:
            skipped.setdefault(task, []).append(arm)
            continue
        tic = time.perf_counter()
        print(f"== {task} {arm}", flush=True)
        catpot_eval(arm_argv(task, arm, args, out))
        print(f"== {task} {arm}: {time.perf_counter() - tic:.0f} s", flush=True)
    return skipped


def analyse(task: str, work: Path, out: Path) -> dict | None:
    from evaluation.metrics import bootstrap_ci, paired_bootstrap, problem_values
    from evaluation.records import read_records

    base_dir = work / task / "baseline"
    if not (base_dir / "results.json").exists():
        return None
    baseline = json.loads((base_dir / "results.json").read_text())
    _, base_records = read_records(base_dir / "records.jsonl")
    by_id = {r["id"]: r for r in base_records}
    problems = len(base_records)
    curves = {name: [{"k": p["k"], "value": p["value"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
                      "flops_per_problem": p["flops"] / problems} for p in points]
              for name, points in baseline["curves"].items()}
    summary = {"task": task, "problems": problems, "baseline": curves, "pot": {}}
    for arm_dir in sorted(p for p in (work / task).iterdir() if p.name.startswith("pot_")):
        if not (arm_dir / "results.json").exists():
            continue
        _, records = read_records(arm_dir / "records.jsonl")
        records = [r for r in records if r["id"] in by_id]
        budgets = sorted(records[0]["pot"], key=int)
        zero = [float(r["pot"]["0"][0]["correct"]) for r in records]
        rows = []
        for budget in budgets:
            runs = [r["pot"][budget][0] for r in records]
            correct = [float(run["correct"]) for run in runs]
            flops = sum(run["flops"] for run in runs) / len(runs)
            low, high = bootstrap_ci(correct)
            row = {"budget": int(budget), "accuracy": sum(correct) / len(correct), "ci_low": low, "ci_high": high,
                   "flops_per_problem": flops,
                   "changed_vs_budget0": sum(run["text"] != r["pot"]["0"][0]["text"] for run, r in zip(runs, records)),
                   "failures": sum(run["failure"] is not None for run in runs),
                   "steps_mean": sum(run.get("steps", 0) for run in runs) / len(runs),
                   "relative_norm_mean": sum(run.get("adapter_relative_norm", 0.0) for run in runs) / len(runs),
                   "vs_budget0": paired_bootstrap(zero, correct).__dict__}
            for strategy in ("maj", "bon"):
                points = curves[strategy]
                match = next((p for p in points if p["flops_per_problem"] >= flops), points[-1])
                values = [problem_values(by_id[r["id"]], strategy, match["k"], baseline["scorer"])[0]
                          for r in records]
                row[f"vs_{strategy}"] = {"k": match["k"], "flops_per_problem": match["flops_per_problem"],
                                         "value": sum(values) / len(values),
                                         **paired_bootstrap(values, correct).__dict__}
            rows.append(row)
        summary["pot"][arm_dir.name.removeprefix("pot_")] = rows
        keep(arm_dir, out / task / arm_dir.name)
    keep(base_dir, out / task / "baseline")
    return summary


def keep(src: Path, dst: Path) -> None:
    """Copy an arm's results.json into the committed results directory (its records go into ``records.tar.gz``)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "results.json", dst / "results.json")


def archive_records(summaries: list[dict], work: Path, out: Path) -> None:
    """Every analysed arm's records, as ``<task>/<arm>/records.jsonl`` in ``out/records.tar.gz`` (the same records
    give the same bytes, so a rerun leaves the committed file unchanged)."""
    from core.files import atomic_write_bytes, tar_gz_members
    from evaluation.records import RECORDS_ARCHIVE

    arms = [(s["task"], arm) for s in summaries for arm in ["baseline", *(f"pot_{r}" for r in s["pot"])]]
    if not arms:
        return
    atomic_write_bytes(out / RECORDS_ARCHIVE, tar_gz_members(
        {f"{task}/{arm}/records.jsonl": (work / task / arm / "records.jsonl").read_bytes() for task, arm in arms}))


def table(summary: dict) -> list[str]:
    lines = [f"### {summary['task']} ({summary['problems']} problems)", "",
             "| reward | budget | accuracy [95% CI] | GFLOPs/problem | changed vs 0 | Δ vs budget 0 [CI] | "
             "maj@k at ≥ FLOPs: k, acc, Δ PoT−maj [CI] | best-of-k (self-certainty): k, acc, Δ [CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for reward, rows in summary["pot"].items():
        for r in rows:
            d0, dm, db = r["vs_budget0"], r["vs_maj"], r["vs_bon"]
            lines.append(
                f"| {reward} | {r['budget']} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                f"{r['flops_per_problem'] / 1e9:.1f} | {r['changed_vs_budget0']} | {d0['difference']:+.3f} "
                f"[{d0['ci_low']:+.3f}, {d0['ci_high']:+.3f}] | {dm['k']}, {dm['value']:.3f}, "
                f"{dm['difference']:+.3f} [{dm['ci_low']:+.3f}, {dm['ci_high']:+.3f}] | {db['k']}, {db['value']:.3f}, "
                f"{db['difference']:+.3f} [{db['ci_low']:+.3f}, {db['ci_high']:+.3f}] |")
    lines += ["", "| baseline | k | accuracy [95% CI] | GFLOPs/problem |", "|---|---|---|---|"]
    for name, points in summary["baseline"].items():
        for p in points:
            lines.append(f"| {name} | {p['k']} | {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] | "
                         f"{p['flops_per_problem'] / 1e9:.1f} |")
    return lines + [""]


def figure(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6.5 * len(summaries), 4.5), squeeze=False)
    for ax, s in zip(axes[0], summaries):
        for name, label in (("maj", "maj@k"), ("bon", "best-of-k (self-certainty)"), ("pass", "pass@k (oracle)")):
            points = s["baseline"][name]
            ax.plot([p["flops_per_problem"] for p in points], [p["value"] for p in points], "--", marker=".",
                    label=label, alpha=0.8)
        for reward, rows in s["pot"].items():
            err = [[r["accuracy"] - r["ci_low"] for r in rows], [r["ci_high"] - r["accuracy"] for r in rows]]
            ax.errorbar([r["flops_per_problem"] for r in rows], [r["accuracy"] for r in rows], yerr=err,
                        marker="o", capsize=2, label=f"PoT episode, {reward} reward")
            for r in rows:
                ax.annotate(str(r["budget"]), (r["flops_per_problem"], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per problem (forward + backward + re-prefill)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"SmolLM2-135M-Instruct, {s['task']} ({s['problems']} problems); labels = PoT budget")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--work", default="outputs/pot_controls", help="resumable run directories")
    parser.add_argument("--out", default="results/pot_controls", help="committed results")
    parser.add_argument("--data-dir", default="../shared/data", help="GSM8K/MATH copies (as in the README)")
    parser.add_argument("--arith-problems", type=int, default=150)
    parser.add_argument("--arith-tokens", type=int, default=10)
    parser.add_argument("--gsm8k-problems", type=int, default=20)
    parser.add_argument("--gsm8k-tokens", type=int, default=64)
    parser.add_argument("--n", type=int, default=16, help="baseline samples per arithmetic problem")
    parser.add_argument("--gsm8k-n", type=int, default=8)
    parser.add_argument("--budgets", default="0,2,4,8")
    parser.add_argument("--gsm8k-budgets", default="0,2")
    parser.add_argument("--arith-arms", default="baseline,pot_verifier,pot_random,pot_majority,pot_self")
    parser.add_argument("--gsm8k-arms", default="baseline,pot_verifier,pot_random")
    parser.add_argument("--order", default="arithmetic:baseline,arithmetic:pot_verifier,arithmetic:pot_random,"
                        "gsm8k:baseline,gsm8k:pot_verifier,arithmetic:pot_majority,arithmetic:pot_self,"
                        "gsm8k:pot_random", help="which arms run first (the time limit cuts the rest)")
    parser.add_argument("--group-size", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="episode lr (default: PoTConfig.episode_lr)")
    parser.add_argument("--pot-batch", type=int, default=25, help="problems per PoT batch (and per records flush)")
    parser.add_argument("--time-limit", type=float, default=35.0, help="minutes after which no new arm starts")
    args = parser.parse_args()
    args.arith_arms, args.gsm8k_arms = args.arith_arms.split(","), [a for a in args.gsm8k_arms.split(",") if a]
    args.order = args.order.split(",")
    skipped = run_arms(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [s for s in (analyse(t, Path(args.work), out) for t in ("arithmetic", "gsm8k")) if s]
    archive_records(summaries, Path(args.work), out)
    (out / "summary.json").write_text(json.dumps({"summaries": summaries, "not_run": skipped,
                                                  "argv": vars(args)}, indent=1) + "\n")
    lines = [line for s in summaries for line in table(s)]
    if skipped:
        lines.append(f"Not run within the time limit: {skipped}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if summaries:
        figure(summaries, out / "accuracy_vs_flops.png")


if __name__ == "__main__":
    main()
