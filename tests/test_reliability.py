"""No command loses or mixes data: safe --overwrite, exact resume, atomic files, locks, one-line errors.

Kill cases run the real ``catpot`` in a subprocess and SIGKILL it; the tiny Llama keeps each under ~40 s.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evaluation.records import RecordsFile, read_records
from recipes.cli import main
from test_train_pipeline import TINY_RECIPE

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
TINY_EVAL = ["--model", "tiny-llama", "--task", "arithmetic", "--limit", "2", "--n", "2", "--ks", "1,2",
             "--strategies", "pass,maj", "--max-new-tokens", "3", "--dtype", "float32"]


def recipe_file(tmp_path: Path, output_dir: Path | str | None = None, name: str = "recipe.yaml", **sections) -> Path:
    """The tiny GRPO recipe of the pipeline tests with some sections replaced, written as YAML."""
    data = json.loads(json.dumps(TINY_RECIPE))
    data["output_dir"] = str(output_dir if output_dir is not None else tmp_path / "run")
    data["logging"] = {"mode": "disabled"}
    for section, value in sections.items():
        data[section] = {**data.get(section, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def catpot(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipes.cli", *argv], env=ENV, capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", 300), **kwargs)


def start_catpot(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recipes.cli", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition(), "the process ended (or timed out) before the point to kill it at"


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("catpot: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def fake_training_dir(path: Path, marker: bool) -> dict:
    """A training output_dir as catpot leaves it (the parts the refusal tests look at); returns its results."""
    path.mkdir(parents=True)
    results = {"model": "run", "train": {"global_step": 2}, "curves": {}}
    (path / "results.json").write_text(json.dumps(results))
    (path / "recipe.yaml").write_text("seed: 0\n")
    (path / "checkpoint-2").mkdir()
    if marker:
        (path / ".catpot-run").write_text(json.dumps({"kind": "train"}))
    return results


# --overwrite deletes only catpot's own run directories, and only after everything was validated


@pytest.mark.parametrize("where", ["dot", "cwd", "parent_of_cwd", "home"])
def test_overwrite_never_deletes_the_working_directory_its_parents_or_home(tmp_path, monkeypatch, capsys, where):
    project, home = tmp_path / "project", tmp_path / "home"
    for directory in (project, home):
        directory.mkdir()
        (directory / "notes.txt").write_text("keep me")
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(home))
    output_dir = {"dot": ".", "cwd": str(project), "parent_of_cwd": str(tmp_path), "home": str(home)}[where]
    recipe = recipe_file(tmp_path, output_dir)
    assert main(["train", str(recipe), "--overwrite"]) == 2
    one_line_error(capsys.readouterr().err, "refusing to delete")
    assert (project / "notes.txt").read_text() == (home / "notes.txt").read_text() == "keep me"


def test_an_empty_output_dir_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["train", str(recipe_file(tmp_path)), "--overwrite", "--set", "output_dir="]) == 2
    one_line_error(capsys.readouterr().err, "output_dir must be a non-empty path")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_overwrite_refuses_a_directory_catpot_did_not_create(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", str(recipe_file(tmp_path, out)), "--overwrite"]) == 2
    one_line_error(capsys.readouterr().err, str(out), ".catpot-run")
    assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_validates_everything_first_then_replaces_only_a_catpot_run(tmp_path, capsys):
    out = tmp_path / "run"
    fake_training_dir(out, marker=True)
    (out / "stale.txt").write_text("from the earlier run")
    bad_data = recipe_file(tmp_path, out, task={"name": "gsm8k", "split": "test", "data_dir": str(tmp_path / "none")})
    bad_model = recipe_file(tmp_path, out, "bad_model.yaml", model={"name": "no-such-model"})
    for recipe, needle in ((bad_data, "task.data_dir"), (bad_model, "model.name")):
        assert main(["train", str(recipe), "--overwrite"]) == 2
        one_line_error(capsys.readouterr().err, needle)
        assert (out / "stale.txt").is_file() and (out / "results.json").is_file()
    assert main(["train", str(recipe_file(tmp_path, out)), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and not (out / "checkpoint-2" / "stale").exists()
    assert json.loads((out / "results.json").read_text())["train"]["global_step"] == 2
    assert json.loads((out / ".catpot-run").read_text())["kind"] == "train"


def test_deletable_checks_refuse_roots_and_other_kinds(tmp_path):
    from recipes.run_dir import check_deletable, write_marker

    for path in ("/", "", "  "):
        with pytest.raises(ValueError):
            check_deletable(path, "train", "output_dir")
    write_marker(tmp_path, "eval")
    with pytest.raises(FileExistsError, match="belongs to a catpot eval run"):
        check_deletable(tmp_path, "train", "output_dir")


# Evaluation records are resumed only from the same prompts, options, precision and adapter content


def test_eval_refuses_records_made_with_other_options_precision_or_adapter(tmp_path, tiny, capsys):
    from peft import LoraConfig, get_peft_model

    out = tmp_path / "eval"
    assert main(["eval", *TINY_EVAL, "--out", str(out)]) == 0
    capsys.readouterr()
    for extra, differs in ((["--task-option", "digits=2"], "prompts_sha256"), (["--dtype", "bfloat16"], "source")):
        assert main(["eval", *TINY_EVAL, *extra, "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, "another configuration", differs)

    adapter = tmp_path / "adapter"
    model, _ = tiny
    for seed in (0, 1):  # the same path, retrained: new weights
        import torch

        torch.manual_seed(seed)
        lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        lora.save_pretrained(adapter)
        model = lora.unload()
        code = main(["eval", *TINY_EVAL, "--adapter", str(adapter), "--out", str(tmp_path / "adapted")])
        assert code == (0 if seed == 0 else 2)
    one_line_error(capsys.readouterr().err, "another configuration", "source")
    header, _ = read_records(out / "records.jsonl")
    assert set(header["versions"]) >= {"catpot", "transformers"} and header["source"]["dtype"] == "torch.float32"


# A run killed after its last step resumes without training again, and its evaluation comes from one model


@pytest.mark.parametrize("kill_at", ["last_checkpoint", "evaluation"])
def test_run_killed_after_its_last_step_resumes_without_training_again(tmp_path, kill_at):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, out, eval={"size": 4, "n": 4, "ks": [1, 4], "max_new_tokens": 24,
                                              "prompts_per_batch": 1})
    process = start_catpot("train", str(recipe))
    records = out / "eval" / "records.jsonl"
    points = {"last_checkpoint": lambda: (out / "checkpoint-2" / "cat_state.json").is_file(),
              "evaluation": lambda: records.is_file() and len(records.read_text().splitlines()) >= 2}
    wait_for(points[kill_at], process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()

    resumed = catpot("train", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["global_step"] == 2
    assert [e["step"] for e in results["train"]["log_history"] if "loss" in e] == [1, 2]
    assert "training finished at step 2" in resumed.stdout

    # every record comes from the adapter in final/: an uninterrupted evaluation of it gives the same samples
    from recipes.config import load_recipe
    from recipes.eval_command import evaluate_model
    from recipes.train import eval_source, load_eval_task, load_trained

    loaded = load_recipe(recipe)
    model, tokenizer = load_trained(loaded, out / "final")
    fresh = evaluate_model(model.eval(), tokenizer, load_eval_task(loaded), loaded.eval, tmp_path / "fresh",
                           model_name="run", source=eval_source(loaded, out / "final"))
    texts = lambda path: {r["id"]: [s["text"] for s in r["samples"]] for r in read_records(path)[1]}  # noqa: E731
    assert texts(records) == texts(tmp_path / "fresh" / "records.jsonl") and len(texts(records)) == 4
    assert results["curves"]["pass"] == [{**p, "wall_time": q["wall_time"]}
                                         for p, q in zip(fresh["curves"]["pass"], results["curves"]["pass"])]


# Every rewrite is atomic; a torn checkpoint file does not make a checkpoint complete


def test_kill_during_a_records_rewrite_keeps_every_record(tmp_path):
    config = {"model": "m", "n": 1}
    path = tmp_path / "records.jsonl"
    records = [{"id": f"p{i:05d}", "samples": [{"text": "x" * 3000}]} for i in range(10_000)]
    clean = "\n".join(json.dumps(line) for line in [{"config": config}, *records]) + "\n"
    path.write_text(clean + '{"id": "p10000", "samp')  # the torn last line of a killed evaluation
    code = ("import json, sys\nfrom evaluation.records import RecordsFile\n"
            "RecordsFile(sys.argv[1], json.loads(sys.argv[2]))")
    process = subprocess.Popen([sys.executable, "-c", code, str(path), json.dumps(config)], env=ENV)
    deadline, killed = time.monotonic() + 120, False
    while process.poll() is None and time.monotonic() < deadline:
        # the rewrite has begun: in place (the file shrinks) or into a temporary file beside it; kill it mid-write
        if path.stat().st_size < len(clean) or any(tmp_path.glob(".records.jsonl.*.tmp")):
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    process.wait()
    assert killed, "the rewrite finished before it could be killed"
    _, kept = read_records(path)
    assert len(kept) == 10_000
    assert RecordsFile(path, config).done.keys() == {r["id"] for r in records}
    assert path.read_text() == clean
    assert not list(tmp_path.glob(".records.jsonl.*.tmp"))  # the killed rewrite's temporary file is cleaned up


def _disk_full(imports: str, action: str, limit: int) -> subprocess.CompletedProcess:
    """Run ``action`` with files capped at ``limit`` bytes: a write beyond it fails with EFBIG, as on a full disk."""
    code = (f"{imports}\nimport resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n{action}")
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)


def test_a_failed_write_keeps_the_previous_cat_state_and_records(tmp_path):
    state = tmp_path / "cat_state.json"
    state.write_text(json.dumps({"reward_history": {"capacity": 4000, "values": [0.5] * 100}}))
    before = state.read_text()
    done = _disk_full("from cat.estimators import RewardHistory\nfrom trainers.checkpointing import save_cat_state",
                      f"h = RewardHistory(4000)\nh.append([0.25] * 1000)\nsave_cat_state({str(tmp_path)!r}, h)", 256)
    assert done.returncode != 0 and "File too large" in done.stderr
    assert state.read_text() == before
    records = tmp_path / "records.jsonl"
    records.write_text('{"config": {"n": 1}}\n' + "".join(json.dumps({"id": f"p{i}", "s": "x" * 50}) + "\n"
                                                          for i in range(20)) + '{"id": "p20", "s"')
    before = records.read_text()
    done = _disk_full("from evaluation.records import RecordsFile", f"RecordsFile({str(records)!r}, {{'n': 1}})", 512)
    assert done.returncode != 0 and "File too large" in done.stderr
    assert records.read_text() == before


def test_a_torn_trainer_or_cat_state_does_not_make_a_checkpoint_complete(tmp_path):
    from recipes.train import last_complete_checkpoint

    for step in (2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (tmp_path / f"checkpoint-{step}" / "cat_state.json").write_text(json.dumps({"reward_history": {}}))
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hi')
    assert last_complete_checkpoint(tmp_path, "sft") == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (tmp_path / "checkpoint-3" / "cat_state.json").write_text('{"reward_his')
    assert last_complete_checkpoint(tmp_path, "grpo") == str(tmp_path / "checkpoint-2")
    assert last_complete_checkpoint(tmp_path, "sft") == str(tmp_path / "checkpoint-3")


# A directory of one kind of run is never written by another


@pytest.mark.parametrize("marker", [False, True])
def test_eval_refuses_a_training_output_dir(tmp_path, capsys, marker):
    out = tmp_path / "run"
    results = fake_training_dir(out, marker)
    assert main(["eval", *TINY_EVAL, "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, "--out", "train run")
    assert json.loads((out / "results.json").read_text()) == results
    assert not (out / "records.jsonl").exists()


def test_train_refuses_an_evaluation_directory(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", *TINY_EVAL, "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    for flag in ("--resume", "--overwrite"):
        assert main(["train", str(recipe_file(tmp_path, out)), flag]) == 2
        one_line_error(capsys.readouterr().err, "eval run")
    assert sorted(p.name for p in out.iterdir()) == before


# One process per directory


def test_a_second_resume_fails_naming_the_first_ones_pid(tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, out, train={**TINY_RECIPE["train"], "trl": {**TINY_RECIPE["train"]["trl"],
                                                                                "max_steps": 400}},
                         eval={"enabled": False})
    first = start_catpot("train", str(recipe))
    try:
        wait_for(lambda: (out / "checkpoint-1" / "trainer_state.json").is_file(), first)
        second = catpot("train", str(recipe), "--resume", timeout=120)
        assert second.returncode == 2
        one_line_error(second.stderr, f"pid {first.pid}", "in use")
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def _hold_lock(directory: Path) -> subprocess.Popen:
    code = (f"import time\nfrom core.files import DirectoryLock\n"
            f"DirectoryLock({str(directory)!r}, 'catpot').acquire()\nprint('held', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_eval_and_experiment_take_their_directory_lock(tmp_path, capsys):
    arms = tmp_path / "arms"
    arms.mkdir()
    recipe_file(arms, tmp_path / "runs" / "baseline", "baseline.yaml")
    for directory, argv in ((tmp_path / "eval", ["eval", *TINY_EVAL, "--out", str(tmp_path / "eval")]),
                            (tmp_path / "results", ["experiment", str(arms), "--results", str(tmp_path / "results")])):
        holder = _hold_lock(directory)
        try:
            assert main(argv) == 2
            one_line_error(capsys.readouterr().err, f"pid {holder.pid}")
        finally:
            holder.kill()
            holder.wait()
    assert not (tmp_path / "runs").exists()  # the experiment stopped before training any arm


# A failed start leaves nothing behind; everything that needs no model is checked before it is loaded


@pytest.mark.parametrize(("override", "needle"), [
    ("task.data_dir=/nonexistent/data", "/nonexistent/data"),
    ("train.trl.max_steps=ten", "train.trl.max_steps"),
    ("train.trl.learning_rate=nan", "train.trl.learning_rate"),
    ("model.lora_r=0", "model.lora_r"),
    ("train.trl.per_device_train_batch_size=4", "cat_normalize"),
    ("train.trl.output_dir=elsewhere", "train.trl.output_dir"),
])
def test_bad_fields_fail_before_the_model_loads_and_leave_no_output_dir(tmp_path, capsys, override, needle):
    extra = ["--set", "task.name=gsm8k", "--set", "task.split=test"] if "data_dir" in override else []
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, out)
    for dry_run in (["--dry-run"], []):
        assert main(["train", str(recipe), *dry_run, "--set", override, *extra]) == 2
        one_line_error(capsys.readouterr().err, needle)
        assert not out.exists() and not (tmp_path / "elsewhere").exists()


def test_a_start_that_failed_after_taking_the_directory_does_not_block_the_next(tmp_path):
    from recipes.run_dir import has_content, open_run_dir

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with open_run_dir(out, "train", "output_dir"):
            raise RuntimeError("model load failed")
    assert sorted(p.name for p in out.iterdir()) == [".catpot-run", ".catpot.lock"] and not has_content(out)
    with open_run_dir(out, "train", "output_dir"):  # a fresh start, no --resume needed
        pass


# W&B side files never stop a run


def test_an_unwritable_wandb_run_id_warns_and_training_goes_on(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".catpot-run").write_text(json.dumps({"kind": "train"}))
    (out / "wandb_run_id").mkdir()  # neither readable nor writable as a file
    recipe = recipe_file(tmp_path, out, logging={"mode": "offline"}, eval={"enabled": False})
    resumed = catpot("train", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "W&B run id" in resumed.stderr and "Traceback" not in resumed.stderr
    assert json.loads((out / "results.json").read_text())["train"]["global_step"] == 2
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))  # the run was logged all the same


# Bad input is one line naming the field or file, exit 2


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


SMALL_TASK = "task:\n  size: 8\n"  # the default task's 200 problems exceed the 80 one-digit sums
GSM8K_ROW = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}


@pytest.mark.parametrize(("name", "yaml_text", "overrides", "needles"), [
    ("list", "- model\n- task\n", [], ["r.yaml", "mapping"]),
    ("string", "just some words\n", [], ["r.yaml", "mapping"]),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", [], ["r.yaml", "not a text file"]),
    ("duplicate_keys", f"{SMALL_TASK}model:\n  name: tiny-llama\nmodel:\n  name: smollm2-135m-instruct\n", [],
     ["r.yaml", "duplicate key 'model'"]),
    ("unknown_option", SMALL_TASK, ["task.options.digitz=2"], ["task.options.digitz", "valid options: digits"]),
    ("huge_digits", SMALL_TASK, ["task.options.digits=5000"], ["task.digits", "5000"]),
    ("empty_model_name", SMALL_TASK, ["model.name="], ["model.name"]),
    ("malformed_jsonl", SMALL_TASK, ["task.name=gsm8k", "task.split=test"], ["test.jsonl line 2", "not valid JSON"]),
    ("missing_field", SMALL_TASK, ["task.name=gsm8k", "task.split=test"], ["test.jsonl line 3", "'question'"]),
])
def test_bad_input_is_one_line_naming_the_field_or_file(tmp_path, capsys, name, yaml_text, overrides, needles):
    path = tmp_path / "r.yaml"
    path.write_bytes(yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode())
    if name in ("malformed_jsonl", "missing_field"):
        rows = [GSM8K_ROW, '{"question": "broken', GSM8K_ROW] if name == "malformed_jsonl" else \
            [GSM8K_ROW, GSM8K_ROW, {"answer": "#### 3"}]
        _jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl", rows)
        overrides = [*overrides, f"task.data_dir={tmp_path / 'data'}"]
    code = main(["train", str(path), "--dry-run", *[a for o in overrides for a in ("--set", o)]])
    assert code == 2
    one_line_error(capsys.readouterr().err, *needles)


def test_debug_still_shows_the_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: a\nmodel:\n  name: b\n")
    with pytest.raises(ValueError, match="duplicate key"):
        main(["--debug", "train", str(path), "--dry-run"])


def test_a_string_field_keeps_the_text_of_an_override():
    from recipes.config import load_recipe

    recipe = load_recipe("demo", ["logging.run_name=inf", "output_dir=2024", "logging.run_name=inf"])
    assert recipe.logging.run_name == "inf" and recipe.output_dir == "2024"
    assert load_recipe("demo", ["train.trl.learning_rate=1e-5"]).train.trl["learning_rate"] == 1e-5


def test_damaged_records_files_are_one_line_errors_naming_file_and_line(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", *TINY_EVAL, "--out", str(out)]) == 0
    capsys.readouterr()
    lines = (out / "records.jsonl").read_text().splitlines()
    for text, needles in (("\n".join([lines[0], '{"samples": []}', lines[1]]) + "\n", ["line 2", "'id'"]),
                          ("[1, 2]\n", ["line 1", "not a records header"]),
                          ("garbage\n" + "\n".join(lines[1:]) + "\n", ["line 1", "not a records header"]),
                          ("\n".join([lines[0], "not json", lines[1]]) + "\n", ["line 2", "not valid JSON"])):
        (out / "records.jsonl").write_text(text)
        assert main(["eval", *TINY_EVAL, "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, str(out / "records.jsonl"), *needles)
        assert (out / "records.jsonl").read_text() == text  # never rewritten when damaged


def test_a_corrupt_adapter_is_named_by_file(tmp_path, capsys, tiny):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(tiny[0], LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["eval", *TINY_EVAL, "--adapter", str(adapter), "--out", str(tmp_path / "eval")]) == 2
    one_line_error(capsys.readouterr().err, str(weights), "corrupt")
    recipe = recipe_file(tmp_path, tmp_path / "run", model={"adapter": str(adapter)})
    assert main(["train", str(recipe), "--dry-run"]) == 2
    one_line_error(capsys.readouterr().err, "model.adapter", str(weights))
    (adapter / "adapter_config.json").write_text("{not json")
    assert main(["train", str(recipe), "--dry-run"]) == 2
    one_line_error(capsys.readouterr().err, str(adapter / "adapter_config.json"))


# Model cache housekeeping


def test_stale_staging_directories_are_removed_and_a_live_converters_kept(tmp_path):
    from core.models import STAGING_OWNER, remove_stale_staging

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dirs = {}
        for label, pid, age in (("dead", finished.stdout.strip(), 0), ("live", str(live.pid), 0),
                                ("old_unowned", None, 7200), ("young_unowned", None, 0)):
            path = tmp_path / f".smollm2-135m-instruct-{label}"
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"partial")
            if pid is not None:
                (path / STAGING_OWNER).write_text(pid)
            os.utime(path, (time.time() - age, time.time() - age))
            dirs[label] = path
        removed = remove_stale_staging(tmp_path, "smollm2-135m-instruct")
        assert sorted(p.name for p in removed) == sorted(dirs[k].name for k in ("dead", "old_unowned"))
        assert dirs["live"].is_dir() and dirs["young_unowned"].is_dir()
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_corrupt_cache_is_rebuilt_and_a_killed_conversion_cleaned_up(tmp_path, capsys):
    """A killed conversion's staging directory goes at the next conversion, which a corrupt cache triggers; the new
    cache has ordinary permissions."""
    from core import models

    cache = tmp_path / "cache"
    cache.mkdir()
    code = "from core.models import embedded_checkpoint; import sys; embedded_checkpoint(cache_dir=sys.argv[1])"
    killed = subprocess.Popen([sys.executable, "-c", code, str(cache)], env=ENV, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(cache.glob(".smollm2-135m-instruct-*")), killed)
    time.sleep(1.0)  # inside the conversion
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (staging,) = cache.glob(".smollm2-135m-instruct-*")
    shutil.copytree(models.embedded_checkpoint(), cache / "smollm2-135m-instruct")  # the shared, converted cache
    weights = cache / "smollm2-135m-instruct" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    previous = os.umask(0o022)
    try:
        model, _ = models.load_pretrained("smollm2-135m-instruct", cache_dir=cache, dtype="float32",
                                          load_in_4bit=False)
    finally:
        os.umask(previous)
    assert "rebuilding it" in capsys.readouterr().err
    assert sum(p.numel() for p in model.parameters()) > 100e6
    assert not staging.exists()
    target = cache / "smollm2-135m-instruct"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()} == {0o644}
    assert models.cache_problem(target) is None


def test_cache_check_finds_truncated_missing_and_garbage_files(tmp_path):
    from core.models import COMPLETE_MARKER, cache_problem

    target = tmp_path / "model"
    target.mkdir()
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(64, 64)}, target / "model.safetensors")
    (target / "config.json").write_text("{}")
    sizes = {p.name: p.stat().st_size for p in target.iterdir()}
    (target / COMPLETE_MARKER).write_text(json.dumps({"files": sizes}))
    assert cache_problem(target) is None
    (target / "config.json").write_text("{}  ")
    assert "config.json is 4 bytes" in cache_problem(target)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"\x00" * sizes["model.safetensors"])
    assert "model.safetensors" in cache_problem(target)
    (target / "model.safetensors").unlink()
    assert "model.safetensors is missing" in cache_problem(target)
    (target / COMPLETE_MARKER).unlink()
    assert cache_problem(target) == "no completion marker"



def test_a_directory_with_only_a_final_folder_is_not_taken_for_an_older_training_run(tmp_path):
    from recipes.run_dir import check_kind, kind_of

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "notes.txt").write_text("mine")
    assert kind_of(tmp_path) is None
    with pytest.raises(FileExistsError, match="did not write"):
        check_kind(tmp_path, "train", "output_dir")
    (tmp_path / "recipe.yaml").write_text("seed: 0\n")  # what every older catpot training run wrote first
    assert kind_of(tmp_path) == "train"
