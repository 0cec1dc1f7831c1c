"""`catpot experiment`: every arm trained and evaluated on the same problems, paired comparisons, committed files."""

import json
import tarfile

import pytest
import yaml

from evaluation.metrics import paired_bootstrap, problem_values
from evaluation.records import RECORDS_ARCHIVE, read_archived_records, read_records
from recipes.cli import main
from test_train_pipeline import TINY_RECIPE


@pytest.mark.parametrize("jobs", [1, 2])
def test_experiment_compares_each_arm_with_the_baseline(tmp_path, capsys, jobs):
    arms = tmp_path / "arms"
    arms.mkdir()
    for arm, strategy in (("baseline", "none"), ("passn4", "pass")):
        recipe = json.loads(json.dumps(TINY_RECIPE))
        recipe["train"]["cat_strategy"] = strategy
        recipe["train"]["trl"]["max_steps"] = 1
        recipe["eval"].update(size=3, n=4, ks=[1, 4])
        recipe["logging"]["mode"] = "offline"
        recipe["output_dir"] = str(tmp_path / "runs" / arm)
        (arms / f"{arm}.yaml").write_text(yaml.safe_dump(recipe))
    results = tmp_path / "results"
    assert main(["experiment", str(arms), "--results", str(results), "--jobs", str(jobs)]) == 0
    assert "arm − baseline" in capsys.readouterr().out
    if jobs > 1:  # each arm trained in its own process, which logged its own progress
        assert all("catpot runs" in (tmp_path / "runs" / f"{arm}.log").read_text() for arm in ("baseline", "passn4"))
    for arm in ("baseline", "passn4", "base"):
        summary = json.loads((results / f"{arm}.json").read_text())
        assert summary["model"] == arm and summary["num_problems"] == 3
        _, records = read_archived_records(results / RECORDS_ARCHIVE, f"{arm}.records.jsonl")
        assert len(records) == 3 and all(len(r["samples"]) == 4 for r in records)
    for arm in ("baseline", "passn4"):  # the offline W&B run of every trained arm, ready for `wandb sync`
        with tarfile.open(results / "wandb" / f"{arm}.tar.gz") as tar:
            assert any(name.startswith(f"{arm}/offline-run-") and name.endswith(".wandb") for name in tar.getnames())
    for figure in ("pass_at_k.png", "maj_at_k.png", "difference_vs_baseline.png"):
        assert (results / figure).stat().st_size > 1000
    replicated = tmp_path / "replicas.png"  # replications overlay in one difference figure
    assert main(["plot", "--differences", str(results / "comparisons.json"), str(results / "comparisons.json"),
                 "-o", str(replicated)]) == 0
    assert replicated.stat().st_size > 1000
    # every comparison is the paired bootstrap of the two arms' per-problem values on the same problems
    records = {arm: {r["id"]: r for r in read_records(tmp_path / "runs" / arm / "eval" / "records.jsonl")[1]}
               for arm in ("baseline", "passn4", "base")}
    comparisons = json.loads((results / "comparisons.json").read_text())
    assert {(c["arm"], c["strategy"], c["k"]) for c in comparisons} == {
        (arm, s, k) for arm in ("passn4", "base") for s in ("pass", "maj") for k in (1, 4)}
    for c in comparisons:
        ids = sorted(records["baseline"])
        a = [problem_values(records["baseline"][i], c["strategy"], c["k"], "oracle")[0] for i in ids]
        b = [problem_values(records[c["arm"]][i], c["strategy"], c["k"], "oracle")[0] for i in ids]
        assert c["difference"] == pytest.approx(paired_bootstrap(a, b, seed=0).difference)
        assert c["difference"] == pytest.approx(sum(b) / 3 - sum(a) / 3)


def test_seed_replication_moves_every_arm_to_a_sibling_directory(tmp_path):
    from recipes.config import load_recipe
    from recipes.experiment import seed_overrides

    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe["output_dir"] = str(tmp_path / "runs" / "exp" / "passn4")
    path = tmp_path / "passn4.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert seed_overrides(path, ["train.trl.max_steps=3"], None) == ["train.trl.max_steps=3"]
    replica = load_recipe(path, seed_overrides(path, ["train.trl.max_steps=3"], 2))
    assert replica.seed == 2 and replica.train.trl["max_steps"] == 3
    assert replica.output_dir == str(tmp_path / "runs" / "exp-seed2" / "passn4")
    with pytest.raises(ValueError, match="--seed must be an int, got '1'"):
        seed_overrides(path, [], "1")


def test_difference_figure_draws_each_arm_and_replica_from_its_comparisons(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from recipes import plotting

    rows = [{"arm": arm, "strategy": s, "k": k, "difference": d + k / 100, "ci_low": d - 0.1, "ci_high": d + 0.1}
            for arm, d in (("cat", -0.05), ("base", -0.4)) for s in ("pass", "maj") for k in (1, 4)]
    figures = []
    monkeypatch.setattr(plotting.plt, "close", figures.append)  # keep the figure open to read what was drawn
    plotting.plot_differences({"seed0": rows, "seed1": rows[::-1]}, tmp_path / "d.png")
    (fig,) = figures
    for ax in fig.axes:
        arm_lines = ax.lines[1:]  # after the zero line; the "base" arm is left out by default
        assert [line.get_label() for line in arm_lines] == ["cat seed0", "cat seed1"]
        for line in arm_lines:  # sorted by k whatever the row order
            assert list(line.get_xdata()) == [1, 4] and list(line.get_ydata()) == pytest.approx([-0.04, -0.01])
    plt.close(fig)
