"""The ``catpot`` command: ``train``, ``demo``, ``experiment``, ``recipes``, ``plot``, ``weights`` (and ``eval``/``compare``).

Bad input (ValueError, TypeError, KeyError, OSError such as a missing file or an existing output_dir) ends in one line
``catpot: error: ...`` and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from recipes.config import Recipe, load_recipe, shipped_recipes

USER_ERRORS = (ValueError, TypeError, KeyError, OSError)  # OSError: missing files, existing output_dir, Hub misses


def dry_run(recipe: Recipe) -> dict:
    """What ``catpot train`` checks before it loads weights or touches output_dir (``recipes.train.check_recipe``)."""
    from recipes.train import check_recipe

    prepared = check_recipe(recipe, dry_run=True)
    eval_problems = len(prepared.eval_task) if prepared.eval_task is not None else 0
    return {"model": prepared.model, "task": recipe.task.name, "problems": len(prepared.task.problems),
            "trainer": type(prepared.args).__name__, "eval_problems": eval_problems, "output_dir": recipe.output_dir}


def cmd_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set or [])
    if args.dry_run:
        summary = dry_run(recipe)
        print(" ".join(f"{key}={value}" for key, value in summary.items()))
        return 0
    from recipes.train import train

    train(recipe, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from recipes.demo import run_demo

    run_demo(args.output_root, args.set or [])
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from recipes.experiment import run_experiment

    if args.seeds is not None:
        from recipes.experiment import run_seeds

        if args.seed is not None:
            raise ValueError("--seed and --seeds exclude each other")
        print(f"results: {run_seeds(args.directory, args.seeds, args.results, args.set or [], jobs=args.jobs)}")
        return 0
    print(f"results: {run_experiment(args.directory, args.results, args.set or [], jobs=args.jobs, seed=args.seed)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    root = Path(__file__).parent
    for path in shipped_recipes():
        first = path.read_text().splitlines()[0] if path.read_text() else ""
        print(f"{str(path.relative_to(root).with_suffix('')):40s} {first.lstrip('# ')}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import json

    from recipes.plotting import plot_differences, plot_results

    if args.differences:
        replicas = {Path(path).parent.name: json.loads(Path(path).read_text()) for path in args.results}
        print(plot_differences(replicas, args.output))
    else:
        print(plot_results(args.results, args.output, x=args.x))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from recipes.weight_tables import main as weight_tables

    print(weight_tables(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catpot", description="Compute-aligned training (CAT) and evaluation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)

    train = subparsers.add_parser("train", help="train from a recipe YAML (or a shipped recipe name)")
    train.add_argument("recipe", help="path to a recipe YAML, or a shipped recipe name such as 'demo'")
    train.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe field")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    train.add_argument("--dry-run", action="store_true", help="resolve config, model and task; do not train")
    train.set_defaults(func=cmd_train)

    demo = subparsers.add_parser("demo", help="CAT-GRPO pass@N vs plain GRPO on the embedded model (make demo)")
    demo.add_argument("--output-root", default="outputs/demo", help="directory of the two arms and the figure")
    demo.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field in both arms")
    demo.set_defaults(func=cmd_demo)

    experiment = subparsers.add_parser("experiment", help="train, evaluate and compare every arm in a directory")
    experiment.add_argument("directory", help="a directory of arm recipes, one of them baseline.yaml")
    experiment.add_argument("--results", default=None, help="where the committed results go (default results/NAME)")
    experiment.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field in every arm")
    experiment.add_argument("--jobs", type=int, default=1, help="arms trained at once, as separate processes (GPU)")
    experiment.add_argument("--seed", type=int, default=None,
                            help="replicate with every arm's seed set to this, into OUTPUT-seedS and results/NAME-seedS")
    experiment.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                            help="run --seed S for each S (results into RESULTS-seedS), then analyse across the seeds "
                                 "into RESULTS (default results/NAME)")
    experiment.set_defaults(func=cmd_experiment)

    recipes = subparsers.add_parser("recipes", help="list the shipped recipes")
    recipes.set_defaults(func=cmd_recipes)

    plot = subparsers.add_parser("plot", help="plot results.json files into one figure")
    plot.add_argument("results", nargs="+", help="results.json files (comparisons.json files with --differences)")
    plot.add_argument("--differences", action="store_true",
                      help="plot experiments' arm − baseline differences from their comparisons.json files")
    plot.add_argument("-o", "--output", required=True, help="output PNG")
    plot.add_argument("--x", default="k", help="x axis (default: k)")
    plot.set_defaults(func=cmd_plot)

    weights = subparsers.add_parser("weights", help="print the CAT weight tables and save a PNG")
    weights.add_argument("-o", "--output", default="outputs/cat_weights.png", help="output PNG")
    weights.set_defaults(func=cmd_weights)

    from recipes import eval_command

    eval_command.register(subparsers)
    return parser


def one_line(message) -> str:
    """A library's multi-line message as one line: the error line is one line whatever raised it."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    # TRL 1.16's own default (gradient_checkpointing=True) trips transformers 5.2x's rename warning on every run
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
        return status if isinstance(status, int) else 0  # eval/compare return their results for Python callers
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("catpot: interrupted (a train or eval run continues with the same command, --resume for train)",
              file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"catpot: error: {one_line(message)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
