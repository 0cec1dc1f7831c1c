"""`catpot experiment --seeds`: every saved checkpoint evaluated, the across-seed analysis checked against records."""

import gzip
import io
import json
import math
import statistics
import tarfile
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from recipes.cli import main
from core.files import deterministic_tar_gz, tar_gz_members
from evaluation.records import RECORDS_ARCHIVE, read_archived_records, read_records
from recipes.seed_analysis import t_quantile
from test_train_pipeline import TINY_RECIPE


def _pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _maj_at_k(samples: list[dict], k: int) -> float:
    """Brute force: every size-k subset votes; the plurality answer wins, ties shared; unparsed answers do not vote."""
    total = 0.0
    for subset in combinations(samples, k):
        votes = {}
        for s in subset:
            if s["answer_key"] is not None:
                votes.setdefault(s["answer_key"], []).append(s["correct"])
        if not votes:
            continue
        top = max(len(v) for v in votes.values())
        winners = [v for v in votes.values() if len(v) == top]
        total += sum(v[0] for v in winners) / len(winners)
    return total / math.comb(len(samples), k)


def _value(record: dict, strategy: str, k: int) -> float:
    samples = record["samples"]
    if strategy == "pass":
        return _pass_at_k(len(samples), sum(s["correct"] for s in samples), k)
    return _maj_at_k(samples, k)


def _records(directory: Path) -> dict[str, dict]:
    lines = (directory / "records.jsonl").read_text().splitlines()[1:]
    return {r["id"]: r for r in map(json.loads, lines)}


def test_t_quantile_matches_closed_forms():
    from statistics import NormalDist

    for p in (0.9, 0.975):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        assert t_quantile(p, 100_000) == pytest.approx(NormalDist().inv_cdf(p), rel=1e-4)


def test_wandb_archive_is_byte_deterministic(tmp_path):
    run = tmp_path / "a" / "offline-run-1"
    (run / "files").mkdir(parents=True)
    (run / "run-1.wandb").write_bytes(b"\x00\x01binary")
    (run / "files" / "config.yaml").write_text("x: 1\n")
    (run / "logs").symlink_to(tmp_path / "nowhere")  # W&B's link into a temporary directory
    first = deterministic_tar_gz([run], "arm-seed0")
    (run / "files" / "config.yaml").touch()  # a new mtime must not change the bytes
    assert deterministic_tar_gz([run], "arm-seed0") == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["arm-seed0/offline-run-1", "arm-seed0/offline-run-1/files",
                                             "arm-seed0/offline-run-1/files/config.yaml",
                                             "arm-seed0/offline-run-1/run-1.wandb"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        assert tar.extractfile("arm-seed0/offline-run-1/run-1.wandb").read() == b"\x00\x01binary"
    assert gzip.decompress(first)  # a plain gzip stream


def test_records_archive_reads_back_every_record_and_names_a_missing_arm(tmp_path):
    lines = [json.dumps({"config": {"n": 2}}), json.dumps({"id": "p1", "samples": [{"correct": True}]}),
             json.dumps({"id": "p2", "samples": [{"correct": False}]})]
    members = {"a.records.jsonl": ("\n".join(lines) + "\n").encode(), "b.records.jsonl": (lines[0] + "\n").encode()}
    archive = tmp_path / RECORDS_ARCHIVE
    archive.write_bytes(tar_gz_members(members))
    assert tar_gz_members(dict(members)) == archive.read_bytes()  # the same members, the same bytes
    assert read_archived_records(archive, "a.records.jsonl") == ({"n": 2}, [json.loads(x) for x in lines[1:]])
    assert read_archived_records(archive, "b.records.jsonl") == ({"n": 2}, [])
    with pytest.raises(ValueError, match=r"has no 'c.records.jsonl'; it holds \['a.records.jsonl', 'b.records.jsonl'\]"):
        read_archived_records(archive, "c.records.jsonl")


def test_seeds_evaluate_every_checkpoint_and_aggregate_over_seeds(tmp_path, capsys):
    arms = tmp_path / "arms"
    arms.mkdir()
    for arm, strategy in (("baseline", "none"), ("passn4", "pass")):
        recipe = json.loads(json.dumps(TINY_RECIPE))
        recipe["train"] = {"algorithm": "sft", "cat_strategy": strategy, "cat_n": 4,
                           "trl": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
                                   "save_steps": 1, "gradient_checkpointing": False}}
        recipe["eval"].update(size=3, n=4, ks=[1, 4])
        recipe["logging"]["mode"] = "offline" if arm == "passn4" else "disabled"  # one arm's W&B runs suffice
        recipe["output_dir"] = str(tmp_path / "runs" / "exp" / arm)
        (arms / f"{arm}.yaml").write_text(yaml.safe_dump(recipe))
    results = tmp_path / "results" / "exp"
    results.mkdir(parents=True)  # where the benchmarks that designed the experiment left their reports
    designed = {name: f'{{"{name}": true}}' for name in ("pilot.json", "sizing.json")}
    for name, text in designed.items():
        (results / name).write_text(text)
    assert main(["experiment", str(arms), "--results", str(results), "--seeds", "0", "1"]) == 0
    assert all((results / name).read_text() == text for name, text in designed.items())
    assert "Arm − baseline at every step" in capsys.readouterr().out
    runs = {seed: tmp_path / "runs" / f"exp-seed{seed}" for seed in (0, 1)}
    for seed, run in runs.items():
        for arm in ("baseline", "passn4"):
            # checkpoint-1 evaluated; checkpoint-2 holds the final weights, whose evaluation is eval/ itself
            assert (run / arm / "eval" / "checkpoint-1" / "results.json").is_file()
            assert not (run / arm / "eval" / "checkpoint-2").exists()
            header = json.loads((run / arm / "eval" / "checkpoint-1" / "records.jsonl").read_text().splitlines()[0])
            from recipes.provenance import adapter_fingerprint

            assert header["config"]["source"]["trained_weights"] == adapter_fingerprint(run / arm / "checkpoint-1")
            _, records = read_archived_records(results.with_name(f"exp-seed{seed}") / RECORDS_ARCHIVE,
                                               f"{arm}.checkpoint-1.records.jsonl")
            _, final = read_records(run / arm / "eval" / "records.jsonl")
            assert [r["id"] for r in records] == [r["id"] for r in final]
    summary = json.loads((results / "seeds.json").read_text())
    assert summary["steps"] == [0, 1, 2] and summary["seeds"] == [0, 1] and summary["missing"] == []
    dirs = {(seed, arm, step): (run / "base" / "eval" if step == 0 else
                                run / arm / "eval" / ("checkpoint-1" if step == 1 else ""))
            for seed, run in runs.items() for arm in ("baseline", "passn4") for step in (0, 1, 2)}
    records = {key: _records(d) for key, d in dirs.items()}
    t1 = math.tan(math.pi * 0.475)  # Student t quantile 0.975 with 1 degree of freedom
    for row in summary["curves"]:
        per_seed = [sum(_value(r, row["strategy"], row["k"]) for r in records[(s, row["arm"], row["step"])].values())
                    / 3 for s in (0, 1)]
        assert [p["value"] for p in row["seeds"]] == pytest.approx(per_seed)
        assert row["mean"] == pytest.approx(sum(per_seed) / 2)
        half = t1 * statistics.stdev(per_seed) / math.sqrt(2)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["mean"] - half, row["mean"] + half))
    assert {(r["arm"], r["step"]) for r in summary["differences"]} == {("passn4", 1), ("passn4", 2)}
    for row in summary["differences"]:
        for p in row["seeds"]:
            a, b = records[(p["seed"], "baseline", row["step"])], records[(p["seed"], "passn4", row["step"])]
            expected = sum(_value(b[i], row["strategy"], row["k"]) - _value(a[i], row["strategy"], row["k"])
                           for i in a) / 3
            assert p["difference"] == pytest.approx(expected)
            assert p["ci_low"] <= p["difference"] + 1e-12 and p["difference"] <= p["ci_high"] + 1e-12
        assert row["mean"] == pytest.approx(sum(p["difference"] for p in row["seeds"]) / 2)
    for figure in ("at_k_step2.png", "vs_step.png", "difference_vs_step.png"):
        assert (results / figure).stat().st_size > 1000
    assert not (results / "wandb").exists()  # each seed's W&B runs are archived once, in that seed's results
    with tarfile.open(results.with_name("exp-seed1") / "wandb" / "passn4.tar.gz") as tar:
        assert any(name.endswith(".wandb") for name in tar.getnames())
    # the entry point `--jobs` starts per arm: a lost checkpoint evaluation comes back with the same samples
    from recipes.checkpoint_eval import main as evaluate_checkpoints_main
    from recipes.checkpoint_eval import pending
    from recipes.config import load_recipe

    lost = runs[1] / "passn4" / "eval" / "checkpoint-1"
    kept = {i: [s["text"] for s in r["samples"]] for i, r in _records(lost).items()}
    overrides = ["seed=1", f"output_dir={runs[1] / 'passn4'}"]
    (lost / "results.json").unlink(), (lost / "records.jsonl").unlink()
    assert pending(load_recipe(arms / "passn4.yaml", overrides)) == [1]
    evaluate_checkpoints_main([str(arms / "passn4.yaml"), *(f"--set={o}" for o in overrides)])
    assert {i: [s["text"] for s in r["samples"]] for i, r in _records(lost).items()} == kept
    # a rerun resumes everything: no sample is drawn again, the committed bytes stay the same
    before = {p: p.read_bytes() for p in [*results.rglob("*.json"), *results.rglob("*.gz"),
                                          *(tmp_path / "runs").rglob("records.jsonl")]}
    assert main(["experiment", str(arms), "--results", str(results), "--seeds", "0", "1"]) == 0
    assert all(p.read_bytes() == data for p, data in before.items())
