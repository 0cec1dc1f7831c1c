"""benchmarks/gpu_suite.sh --smoke: every part of the GPU suite runs end to end on CPU and leaves its files in $OUT."""

import json
import os
import statistics
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO_ROOT

PARTS = ("sampler", "pot_overhead", "trainer_4bit", "arith_g8_100steps")


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "OUT": str(tmp / "out"), "PYTHON": sys.executable, "TMPDIR": str(tmp),
           "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert not list(tmp.glob("catpot-gpu-suite.*")), "the suite leaves no work folder behind"
    return tmp / "out"


def test_smoke_writes_five_files_with_every_part_passed(smoke_out):
    assert sorted(p.name for p in smoke_out.iterdir()) == [
        "arith_g8_100steps.tar.gz", "logs.tar.gz", "sampler.json", "summary.txt", "trainer_4bit.json"]
    summary = (smoke_out / "summary.txt").read_text()
    assert all(f"== {part}: exit 0" in summary for part in PARTS)
    assert "any part failed: 0" in summary
    with tarfile.open(smoke_out / "logs.tar.gz") as logs:
        assert {f"logs/{part}.log" for part in PARTS} <= set(logs.getnames())


def test_sampler_rates_and_ratios_agree(smoke_out):
    report = json.loads((smoke_out / "sampler.json").read_text())
    (row,) = report["rows"]
    assert (row["batch"], row["prompts"], row["n"]) == (8, 2, 4)
    rates = row["tokens_per_s"]
    assert set(rates) == {"sampler (dynamic cache)", "sampler (static cache)", "generate (dynamic cache)",
                          "generate_batch (continuous batching)"}  # the compiled variants need CUDA
    assert all(rate > 0 for rate in rates.values())
    for variant, by_baseline in row["ratios"].items():
        assert variant.startswith("sampler")
        assert by_baseline == pytest.approx({b: rates[variant] / rates[b] for b in rates if b.startswith("generate")})


def test_trainer_report_is_four_bit_with_medians_of_its_steps(smoke_out):
    report = json.loads((smoke_out / "trainer_4bit.json").read_text())
    assert report["load_in_4bit"] and report["linear4bit_layers"] > 0  # really NF4, not the fp32 tiny model
    times = report["step_times_s"]
    medians = {arm: statistics.median(times[arm]) for arm in ("plain", "cat")}
    assert report["median_step_s"] == medians
    assert report["ratio_cat_over_plain"] == pytest.approx(medians["cat"] / medians["plain"])
    assert all(peak > 2**20 for peak in report["peak_memory_bytes"]["plain"] + report["peak_memory_bytes"]["cat"])


def test_experiment_results_are_packed(smoke_out):
    with tarfile.open(smoke_out / "arith_g8_100steps.tar.gz") as packed:
        names = set(packed.getnames())
        comparisons = json.load(packed.extractfile("arith_g8_100steps/comparisons.json"))
        baseline = json.load(packed.extractfile("arith_g8_100steps/baseline.json"))
    assert {"arith_g8_100steps/passn8_log.json", "arith_g8_100steps/base.json"} <= names
    assert {c["arm"] for c in comparisons} == {"passn8_log", "base"}
    assert baseline["num_problems"] == 2 and baseline["n"] == 4
