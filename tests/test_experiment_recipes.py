"""The shipped experiments' arms are controlled comparisons: identical recipes except the objective."""

import dataclasses

import pytest

from recipes.config import RECIPES_DIR, load_recipe
from recipes.train import load_eval_task, load_train_task

EXPERIMENTS = sorted(p for p in (RECIPES_DIR / "experiments").iterdir() if p.is_dir())


def _without_objective(recipe) -> dict:
    data = dataclasses.asdict(recipe)
    data["train"] = {k: v for k, v in data["train"].items() if not k.startswith("cat_") or k == "cat_reduction"}
    data.pop("output_dir")
    return data


@pytest.mark.parametrize("directory", EXPERIMENTS, ids=lambda p: p.name)
def test_arms_differ_only_in_the_objective(directory):
    arms = {p.stem: load_recipe(p) for p in sorted(directory.glob("*.yaml"))}
    assert "baseline" in arms and arms["baseline"].train.cat_strategy == "none"
    reference = _without_objective(arms["baseline"])
    for name, recipe in arms.items():
        assert _without_objective(recipe) == reference, name
        assert recipe.output_dir.endswith(f"/{directory.name}/{name}")
    objectives = {tuple(v for k, v in sorted(dataclasses.asdict(r.train).items()) if k.startswith("cat_"))
                  for r in arms.values()}
    assert len(objectives) == len(arms)  # no two arms train the same objective


def test_sft_passn_arms_are_answer_only_sft_on_disjoint_full_splits():
    arms = {p.stem: load_recipe(p) for p in sorted((RECIPES_DIR / "experiments" / "sft_passn").glob("*.yaml"))}
    assert set(arms) == {"baseline", "passn4", "passn16", "passn64", "majority_n16_k4"}
    assert [(arms[f"passn{n}"].train.cat_strategy, arms[f"passn{n}"].train.cat_n) for n in (4, 16, 64)] == [
        ("pass", 4), ("pass", 16), ("pass", 64)]
    majority = arms["majority_n16_k4"].train
    assert (majority.cat_strategy, majority.cat_n, majority.cat_k) == ("maj", 16, 4)
    recipe = arms["baseline"]
    train = recipe.train
    assert (train.algorithm, train.sft_target, train.cat_reduction) == ("sft", "answer", "sequence_mean")
    assert train.trl["lr_scheduler_type"] == "constant"
    assert train.trl["max_steps"] % train.trl["save_steps"] == 0  # a checkpoint at every evaluated step, the last too
    assert max(recipe.eval.ks) == recipe.eval.n and set(recipe.eval.strategies) == {"pass", "maj"}
    held_out, trained = load_eval_task(recipe), load_train_task(recipe)
    assert len(held_out) >= 200
    assert not {p.prompt for p in held_out.problems} & {p.prompt for p in trained.problems}
    for task_of, size in ((load_eval_task, recipe.eval.size), (load_train_task, recipe.task.size)):
        # every problem of the split, so that the problems do not depend on the seed
        bigger = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, size=size + 1),
                                     task=dataclasses.replace(recipe.task, size=size + 1))
        with pytest.raises(ValueError, match="exceeds the"):
            task_of(bigger)
    seeds = [{p.prompt for p in load_eval_task(dataclasses.replace(recipe, seed=s)).problems} for s in (0, 1)]
    assert seeds[0] == seeds[1]
