"""Choose the task and the training length of an SFT experiment from CE pilot runs, by a rule fixed before looking.

The experiment asks whether CAT pass@N SFT trades pass@1 for pass@N (CAT §5, Table 2; DCO). That needs a task on
which plain cross-entropy SFT stays well below saturation for the whole run and leaves the per-problem success
probability p spread over (0, 1): where p is 0 or 1 the pass@N weight has nothing to move.

Candidates, in this declared order (``CANDIDATES``):

1. ``sum3``: a + b + c with one-digit operands (1000 expressions; 1 in 4 by hash held out: 241 test, 759 train).
2. ``addsub2``: a + b or a − b with two-digit operands (20000 expressions; 1 in 64 held out: 295 test, of which the
   task's seeded draw reaches 240; 800 training problems drawn).
3. ``mul1x2``: a × b with a one-digit, b two-digit (1000 expressions; 1 in 4 held out: 229 test, 771 train).

For each candidate, the ``baseline`` arm of ``DIR`` (answer-only CE, ``sequence_mean``, the experiment's batch,
learning rate and LoRA) is trained on that task to ``--max-steps`` with a checkpoint every ``--every`` steps. Every
checkpoint samples ``--n`` completions for each held-out problem with sampling seed ``--seed`` (the experiment
samples with another seed) and gives pass@1 with its 95% bootstrap interval and the share of problems with
0 < p̂ < 1, p̂ = correct / n.

Rule, fixed before looking (``RULE``): a candidate *qualifies* when at every checkpoint pass@1 < 0.5 and at least
half of the held-out problems have 0 < p̂ < 1. The task is the first qualifying candidate in the declared order;
the candidates after it are not run. If none qualifies: among the candidates with pass@1 < 0.5 at every checkpoint
the one with the largest share at the last checkpoint, else the one with the lowest last pass@1. The schedule is the
one the rule checked: ``--max-steps`` steps at a constant learning rate, a checkpoint every ``--every`` steps.

``pilot.json`` (in ``--results``) is written with the rule and the candidates before the first run, then after every
checkpoint with its numbers and the measured wall times (training step, evaluation, load average). A killed pilot
resumes: training continues from the last checkpoint and evaluations from their records.

    python benchmarks/sft_pilot.py recipes/experiments/sft_passn --max-steps 120 --every 40 --n 16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from core.files import atomic_write_json
from core.models import load_pretrained
from evaluation.records import read_records
from recipes.config import recipe_from_dict
from recipes.eval_command import evaluate_model
from recipes.train import load_eval_task, train

CANDIDATES = [
    {"name": "sum3", "description": "a + b + c, one-digit operands",
     "options": {"terms": 3, "test_one_in": 4}, "train_size": 759, "eval_size": 241},
    {"name": "addsub2", "description": "a + b or a - b, two-digit operands",
     "options": {"digits": 2, "operators": "+-", "test_one_in": 64}, "train_size": 800, "eval_size": 240},
    {"name": "mul1x2", "description": "a * b, a one-digit and b two-digit",
     "options": {"operators": "*", "max_operands": [9, 99], "test_one_in": 4}, "train_size": 771, "eval_size": 229},
]
PASS_AT_1_BELOW = 0.5
MIXED_SHARE_AT_LEAST = 0.5
RULE = (f"a candidate qualifies when at every checkpoint pass@1 < {PASS_AT_1_BELOW} and the share of held-out "
        f"problems with 0 < p_hat < 1 is >= {MIXED_SHARE_AT_LEAST}; the task is the first qualifying candidate in "
        "the declared order (later ones are not run); if none qualifies, among those with pass@1 < 0.5 at every "
        "checkpoint the largest share at the last checkpoint, else the lowest last pass@1; the schedule is the "
        "pilot's: max_steps steps at a constant learning rate, a checkpoint every `every` steps")


def candidate_recipe(baseline: dict, candidate: dict, args, out: Path):
    """The baseline arm with the candidate's task, the pilot's length and no evaluation or W&B run."""
    data = yaml.safe_load(yaml.safe_dump(baseline))
    data["task"] = {**data["task"], "size": candidate["train_size"],
                    "options": {**data["task"].get("options", {}), **candidate["options"]}}
    data["train"]["trl"].update({"max_steps": args.max_steps, "save_steps": args.every})
    data["eval"].update({"enabled": False, "size": candidate["eval_size"]})
    data["logging"] = {**data.get("logging", {}), "mode": "disabled", "run_name": f"sft-pilot-{candidate['name']}"}
    data["output_dir"] = str(out / "train")
    return recipe_from_dict(data)


def checkpoint_point(records_path: Path, results: dict) -> dict:
    """pass@1 with its interval, and the share of problems whose p̂ is strictly inside (0, 1)."""
    _, records = read_records(records_path)
    correct = [sum(s["correct"] for s in r["samples"]) for r in records]
    n = len(records[0]["samples"])
    point = results["curves"]["pass"][0]
    return {"pass@1": point["value"], "ci": [point["ci_low"], point["ci_high"]],
            "mixed_share": sum(0 < c < n for c in correct) / len(correct),
            "never_solved_share": sum(c == 0 for c in correct) / len(correct),
            "always_solved_share": sum(c == n for c in correct) / len(correct),
            "generated_tokens_per_sample": sum(s["num_tokens"] for r in records for s in r["samples"])
            / (n * len(records))}


def qualifies(rows: list[dict]) -> bool:
    return all(r["pass@1"] < PASS_AT_1_BELOW and r["mixed_share"] >= MIXED_SHARE_AT_LEAST for r in rows)


def fallback(report: dict) -> str:
    runs = [c for c in report["candidates"] if c.get("checkpoints")]
    below = [c for c in runs if all(r["pass@1"] < PASS_AT_1_BELOW for r in c["checkpoints"])]
    if below:
        return max(below, key=lambda c: c["checkpoints"][-1]["mixed_share"])["name"]
    return min(runs, key=lambda c: c["checkpoints"][-1]["pass@1"])["name"]


def run_candidate(candidate: dict, entry: dict, baseline: dict, args, pilot_root: Path, save) -> None:
    out = pilot_root / candidate["name"]
    recipe = candidate_recipe(baseline, candidate, args, out)
    entry["recipe"] = asdict(recipe)
    load = os.getloadavg()[0]
    summary = train(recipe, resume=True)
    runtime = next((e["train_runtime"] for e in summary["train"]["log_history"] if "train_runtime" in e), None)
    entry["training"] = {"steps": summary["train"]["global_step"], "train_runtime_s": runtime,
                         "seconds_per_step": runtime / summary["train"]["global_step"] if runtime else None,
                         "load_average_1min_before": load, "load_average_1min_after": os.getloadavg()[0]}
    save()
    task = load_eval_task(recipe)
    entry["held_out_problems"] = len(task)
    eval_cfg = replace(recipe.eval, n=args.n, ks=[1], strategies=["pass"], seed=args.seed)
    base, tokenizer = load_pretrained(recipe.model.name, dtype=recipe.model.dtype,
                                      load_in_4bit=recipe.model.load_in_4bit, cache_dir=recipe.model.cache_dir)
    tokenizer.padding_side = "left"
    from peft import PeftModel

    entry["checkpoints"] = []
    for step in range(args.every, args.max_steps + 1, args.every):
        model = PeftModel.from_pretrained(base, str(out / "train" / f"checkpoint-{step}")).eval()
        eval_dir = out / f"eval-step-{step}"
        load, began, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        results = evaluate_model(model, tokenizer, task, eval_cfg, eval_dir, model_name=f"{candidate['name']} {step}")
        row = {"step": step, **checkpoint_point(eval_dir / "records.jsonl", results),
               "eval_wall_s": time.perf_counter() - began, "eval_cpu_s": time.process_time() - cpu,
               "load_average_1min_before": load}
        entry["checkpoints"].append(row)
        save()
        print(f"{candidate['name']} step {step}: pass@1 {row['pass@1']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"
              f"  0<p<1 {row['mixed_share']:.3f}  (eval {row['eval_wall_s']:.0f} s)", flush=True)
        base = model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="experiment directory with a baseline.yaml")
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed of the pilot evaluations")
    parser.add_argument("--results", default=None, help="where pilot.json goes (default results/NAME)")
    parser.add_argument("--declare-only", action="store_true", help="write pilot.json with the rule and stop")
    args = parser.parse_args()

    name = Path(args.directory).name
    baseline = yaml.safe_load((Path(args.directory) / "baseline.yaml").read_text())
    pilot_root = Path("outputs/experiments") / f"{name}-pilot"
    path = Path(args.results or Path("results") / name) / "pilot.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    declared = {"rule": RULE, "order": [c["name"] for c in CANDIDATES], "max_steps": args.max_steps,
                "every": args.every, "n": args.n, "sampling_seed": args.seed,
                "experiment_seed": baseline.get("seed", 0), "baseline_recipe": baseline}
    report = json.loads(path.read_text()) if path.is_file() else {}
    if report and report.get("declared") != json.loads(json.dumps(declared)):
        raise SystemExit(f"sft_pilot: {path} was declared with other settings; move it away to start a new pilot")
    report = {"declared": declared, "candidates": report.get("candidates") or [dict(c) for c in CANDIDATES],
              "chosen": report.get("chosen")}

    def save() -> None:
        atomic_write_json(path, report)

    save()
    if args.declare_only:
        return
    for candidate, entry in zip(CANDIDATES, report["candidates"]):
        run_candidate(candidate, entry, baseline, args, pilot_root, save)
        entry["qualifies"] = qualifies(entry["checkpoints"])
        save()
        if entry["qualifies"]:
            report["chosen"] = {"task": candidate["name"], "by": "first qualifying candidate in the declared order",
                                "max_steps": args.max_steps, "checkpoint_every": args.every}
            break
    else:
        report["chosen"] = {"task": fallback(report), "by": "fallback: no candidate qualified",
                            "max_steps": args.max_steps, "checkpoint_every": args.every}
    save()
    print(f"chosen: {report['chosen']}")


if __name__ == "__main__":
    main()
