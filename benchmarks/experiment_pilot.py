"""Pick an experiment's training length from a pilot run of its baseline arm alone.

The baseline recipe of ``DIR`` is trained to ``--max-steps`` with a checkpoint every ``--every`` steps (the arms use
a constant learning rate, so checkpoint s is the baseline trained for s steps). The base model and every checkpoint
are evaluated on the held-out problems (pass@1 from ``--n`` samples, sampling seed ``--seed``, which differs from the
experiment's), and each checkpoint is compared with the base model by a paired bootstrap over problems.

Rule, fixed before looking: the training length is the first checkpoint whose pass@1 gain over the base model has a
95% interval above 0 (``--max-steps`` if none has). Only the baseline is looked at, so the choice cannot favour an
objective. Writes ``pilot.json`` (every checkpoint's pass@1, interval and paired difference) into ``--results``.

    python benchmarks/experiment_pilot.py recipes/experiments/arith_g8 --max-steps 120 --every 20
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from peft import PeftModel

from core.models import load_pretrained
from recipes.config import load_recipe
from recipes.eval_command import compare_directories, evaluate_model
from recipes.train import load_eval_task, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="experiment directory with a baseline.yaml")
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--n", type=int, default=8, help="samples per problem for pass@1")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed of the pilot evaluations")
    parser.add_argument("--results", default=None, help="where pilot.json goes (default results/NAME)")
    args = parser.parse_args()

    name = Path(args.directory).name
    pilot_dir = Path("outputs/experiments") / f"{name}-pilot"
    recipe = load_recipe(Path(args.directory) / "baseline.yaml", [
        f"train.trl.max_steps={args.max_steps}", f"train.trl.save_steps={args.every}", "eval.enabled=false",
        f"output_dir={pilot_dir / 'baseline'}", f"logging.run_name={name}-pilot"])
    train(recipe, resume=True)

    eval_cfg = replace(recipe.eval, n=args.n, ks=[1], strategies=["pass"], seed=args.seed)
    task = load_eval_task(recipe)
    base, tokenizer = load_pretrained(recipe.model.name, dtype=recipe.model.dtype,
                                      load_in_4bit=recipe.model.load_in_4bit, cache_dir=recipe.model.cache_dir)
    tokenizer.padding_side = "left"
    steps = list(range(args.every, args.max_steps + 1, args.every))
    evaluate_model(base.eval(), tokenizer, task, eval_cfg, pilot_dir / "eval-step-0", model_name="step 0")
    rows = []
    for step in steps:
        model = PeftModel.from_pretrained(base, str(pilot_dir / "baseline" / f"checkpoint-{step}")).eval()
        out = pilot_dir / f"eval-step-{step}"
        point = evaluate_model(model, tokenizer, task, eval_cfg, out, model_name=f"step {step}")["curves"]["pass"][0]
        diff = compare_directories(pilot_dir / "eval-step-0", out, seed=args.seed)[0]
        rows.append({"step": step, "pass@1": point["value"], "ci": [point["ci_low"], point["ci_high"]],
                     "gain_over_base": diff["difference"], "gain_ci": [diff["ci_low"], diff["ci_high"]]})
        base = model.unload()
    measurable = [r["step"] for r in rows if r["gain_ci"][0] > 0]
    chosen = measurable[0] if measurable else args.max_steps
    base_point = json.loads((pilot_dir / "eval-step-0" / "results.json").read_text())["curves"]["pass"][0]
    report = {"rule": "first checkpoint whose pass@1 gain over the base model has a 95% paired-bootstrap interval "
                      "above 0", "n": args.n, "sampling_seed": args.seed, "problems": len(task),
              "base_pass@1": base_point["value"], "checkpoints": rows, "chosen_max_steps": chosen}
    results = Path(args.results or Path("results") / name)
    results.mkdir(parents=True, exist_ok=True)
    (results / "pilot.json").write_text(json.dumps(report, indent=2))
    for r in rows:
        print(f"step {r['step']:4d}: pass@1 {r['pass@1']:.3f}  gain {r['gain_over_base']:+.3f} "
              f"[{r['gain_ci'][0]:+.3f}, {r['gain_ci'][1]:+.3f}]")
    print(f"base pass@1 {base_point['value']:.3f}; chosen max_steps = {chosen}")


if __name__ == "__main__":
    main()
