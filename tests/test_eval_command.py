"""`catpot eval` / `catpot compare` end to end: SmolLM2 on CPU, resume after SIGKILL, reward models, bad input."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import LlamaConfig, LlamaForSequenceClassification

from cat.estimators import best_of_k_expected, majority_at_k
from evaluation.records import read_records
from evaluation.metrics import vote_weights
from evaluation.scorers import RewardModelScorer
from recipes.eval_command import (EvalConfig, evaluate_model, log_to_wandb, parameter_count, print_results_table,
                                  register)
from recipes.tasks import Task, load_task
from core.tiny_llama import tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def catpot(argv):
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def tiny_eval_argv(out, *extra):
    return ["eval", "--model", "tiny-llama", "--task", "arithmetic", "--limit", "6", "--n", "8", "--ks", "1,2,8",
            "--strategies", "pass,maj,avg,bon", "--max-new-tokens", "48", "--prompts-per-batch", "1",
            "--dtype", "float32", "--out", str(out), *extra]


@pytest.mark.slow
def test_end_to_end_smollm2_arithmetic(tmp_path, capsys):
    results = catpot(["eval", "--model", "smollm2-135m-instruct", "--task", "arithmetic", "--limit", "4", "--n", "4",
                      "--ks", "1,2,4", "--strategies", "pass,maj,bon", "--max-new-tokens", "64", "--dtype", "float32",
                      "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "4/4" in printed  # the progress bar over problems
    assert "accuracy" in printed and "95% CI" in printed and "unparsed" in printed  # the summary table
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["num_problems"] == 4 and on_disk["n"] == 4 and set(on_disk["curves"]) == {"pass", "maj", "bon"}
    _, records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 4 and all(len(r["samples"]) == 4 for r in records)
    correct = sum(s["correct"] for r in records for s in r["samples"])
    assert on_disk["curves"]["pass"][0]["value"] == pytest.approx(correct / 16)  # pass@1 = mean accuracy
    assert [p["value"] for p in on_disk["curves"]["bon"]] == pytest.approx([p["value"] for p in on_disk["curves"]["pass"]])
    point = on_disk["curves"]["maj"][-1]
    assert point["generated_tokens"] == sum(s["num_tokens"] for r in records for s in r["samples"])
    assert point["flops"] > 0 and point["ci_low"] <= point["value"] <= point["ci_high"]
    assert on_disk["unparsed"]["maj"] == sum(s["answer_key"] is None for r in records for s in r["samples"])
    assert (tmp_path / "accuracy_vs_k.png").stat().st_size > 0 and (tmp_path / "accuracy_vs_compute.png").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_resume_after_sigkill_gives_same_numbers(tmp_path, capsys, recwarn):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "recipes.eval_command", *tiny_eval_argv(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records_path = killed / "records.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if records_path.exists() and len(records_path.read_text().splitlines()) >= 3:  # header + 2 problems
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records_path.read_text().splitlines()
    assert 3 <= len(before) < 7, "the kill must land mid-evaluation"
    resumed = catpot(tiny_eval_argv(killed))
    # the killed process's W&B service may still hold its run id: the resumed evaluation must log somewhere anyway
    assert not [w for w in recwarn if "W&B disabled" in str(w.message)]
    after = records_path.read_text().splitlines()
    assert after[: len(before) - 1] == before[:-1]  # finished problems were kept, not redone (last may be torn)
    ids = [json.loads(line)["id"] for line in after[1:]]
    assert len(ids) == len(set(ids)) == 6
    uninterrupted = catpot(tiny_eval_argv(reference))
    strip = lambda res: {s: [{k: v for k, v in p.items() if k != "wall_time"} for p in pts]  # noqa: E731
                         for s, pts in res["curves"].items()}
    assert strip(resumed) == strip(uninterrupted)
    capsys.readouterr()
    rows = catpot(["compare", str(killed), str(reference)])
    assert rows and all(r["difference"] == 0 and r["within_noise"] for r in rows)
    assert "within noise" in capsys.readouterr().out


def tiny_reward_model():
    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).eval(), tok


def test_reward_model_scorer_batches_like_single_calls_and_drives_best_of_k(tiny, tmp_path):
    rm, rm_tok = tiny_reward_model()
    scorer = RewardModelScorer(rm, rm_tok, batch_size=3)
    completions = ["12", "a much longer answer 19", "7", "", "19"]
    batched = scorer("prompt: ", completions)
    for text, score in zip(completions, batched):
        with torch.no_grad():
            single = rm(**rm_tok(["prompt: " + text], return_tensors="pt")).logits[0, 0]
        assert score == pytest.approx(float(single), abs=1e-5)
    rm.save_pretrained(tmp_path / "rm")
    rm_tok.save_pretrained(tmp_path / "rm")
    model, tok = tiny
    task = load_task("arithmetic", split="test", size=2, seed=0)
    cfg = EvalConfig(n=4, ks=[1, 2, 4], strategies=["bon", "wmaj"], scorer=f"reward_model:{tmp_path / 'rm'}",
                     max_new_tokens=16)
    results = evaluate_model(model.eval(), tok, task, cfg, tmp_path / "out")
    _, records = read_records(tmp_path / "out" / "records.jsonl")
    for point in results["curves"]["bon"]:
        expected = sum(best_of_k_expected([s["scores"][cfg.scorer] for s in r["samples"]], point["k"],
                                          outcomes=[s["correct"] for s in r["samples"]]) for r in records) / 2
        assert point["value"] == pytest.approx(expected)
    for point in results["curves"]["wmaj"]:
        expected = sum(majority_at_k(
            [s["answer_key"] for s in r["samples"]], [s["correct"] for s in r["samples"]], point["k"],
            weights=vote_weights(cfg.scorer, [s["scores"][cfg.scorer] for s in r["samples"]])).value
            for r in records) / 2
        assert point["value"] == pytest.approx(expected)
    unparsed = sum(s["answer_key"] is None for r in records for s in r["samples"])
    assert unparsed > 0 and results["unparsed"] == {"bon": unparsed, "wmaj": unparsed}  # random text rarely parses
    prompt = tok.apply_chat_template(task.messages(task.problems[0]), tokenize=False, add_generation_prompt=True)
    assert [s["scores"][cfg.scorer] for s in records[0]["samples"]] == pytest.approx(
        scorer(prompt, [s["text"] for s in records[0]["samples"]]), abs=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=4, ks=[1, 8]), "k=8"),
    (dict(scorer="vibes"), "'vibes'"),
    (dict(strategies=["pass", "best"]), "'best'"),
    (dict(backend="vllm", strategies=["pass", "pot"]), "'pot' needs eval.backend 'hf'"),
    (dict(backend="vllm", scorer="self_certainty"), "'self_certainty' needs eval.backend 'hf'"),
    (dict(backend="tgi"), r"^eval.backend must be one of \('hf', 'vllm'\), got 'tgi'$"),
    (dict(stop=["\n"], strategies=["pot"]), r"^eval.stop needs eval.pot_mode 'episode' with strategy 'pot'"),
])
def test_bad_eval_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)


def test_pot_is_a_strategy_of_catpot_eval_only():
    from evaluation.config import STRATEGIES, MetricsConfig

    assert EvalConfig(strategies=[*STRATEGIES, "pot"]).strategies == [*STRATEGIES, "pot"]
    assert MetricsConfig(n=4, ks=[4, 1, 1], strategies=list(STRATEGIES)).ks == [1, 4]
    with pytest.raises(ValueError, match=r"^metrics.strategies must be from \('pass', .*\), got 'pot'$"):
        MetricsConfig(strategies=["pot"])


def test_bad_inputs_one_line_errors(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="task 'empty' has no problems"):
        evaluate_model(model, tok, Task("empty", []), EvalConfig(n=2, ks=[1]), tmp_path / "e")
    task = load_task("arithmetic", split="test", size=1, seed=0)
    evaluate_model(model.eval(), tok, task, EvalConfig(n=2, ks=[1], max_new_tokens=4), tmp_path / "r")
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['seed'\]\)") as err:
        evaluate_model(model, tok, task, EvalConfig(n=2, ks=[1], max_new_tokens=4, seed=1), tmp_path / "r")
    assert "\n" not in str(err.value)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="--backend vllm needs the vllm package") as err:
            catpot(tiny_eval_argv(tmp_path / "v", "--backend", "vllm"))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="scorer must be one of .* got .vibes."):
        catpot(tiny_eval_argv(tmp_path / "s", "--scorer", "vibes"))
    with pytest.raises(ValueError, match="every k must be <= n=8, got k=16"):
        catpot(tiny_eval_argv(tmp_path / "k", "--ks", "1,16"))
    from peft import LoraConfig, get_peft_model

    rm, _ = tiny_reward_model()  # hidden 32: a LoRA of it cannot sit on the hidden-64 tiny llama
    get_peft_model(rm, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="--adapter .* does not match the model") as err:
        catpot(tiny_eval_argv(tmp_path / "a", "--adapter", str(tmp_path / "adapter")))
    assert "\n" not in str(err.value)


def test_pot_strategy_curves_and_compute(tiny, tmp_path):
    model, tok = tiny
    task = load_task("arithmetic", split="test", size=2, seed=0)
    cfg = EvalConfig(n=2, ks=[1, 2], strategies=["pass", "pot"], pot_updates=[0, 2], pot_runs=2,
                     pot_segment_tokens=6, max_new_tokens=20)
    results = evaluate_model(model.eval(), tok, task, cfg, tmp_path)
    _, records = read_records(tmp_path / "records.jsonl")
    assert set(results["curves"]) == {"pass", "pot@0", "pot@2"}
    for budget in ("0", "2"):
        runs_of = [r["pot"][budget] for r in records]
        assert all(len(runs) == 2 for runs in runs_of)
        one, two = results["curves"][f"pot@{budget}"]
        assert one["value"] == pytest.approx(sum(run["correct"] for runs in runs_of for run in runs) / 4)
        assert two["value"] == pytest.approx(sum(any(run["correct"] for run in runs) for runs in runs_of) / 2)
        assert two["generated_tokens"] == pytest.approx(sum(run["generated_tokens"] for runs in runs_of for run in runs))
    # catpot compare pairs PoT curves too: an evaluation against itself differs by exactly 0 everywhere
    rows = catpot(["compare", str(tmp_path), str(tmp_path)])
    assert {(r["strategy"], r["k"]) for r in rows} == {(s, k) for s in ("pass", "pot@0", "pot@2") for k in (1, 2)}
    assert all(r["difference"] == 0 for r in rows)
    assert results["curves"]["pot@0"][0]["backward_tokens"] == 0
    assert results["curves"]["pot@2"][0]["backward_tokens"] > 0  # updates happened and are charged
    assert results["curves"]["pot@2"][0]["flops"] > results["curves"]["pot@2"][0]["forward_tokens"] * 2 * sum(
        p.numel() for p in model.parameters()) - 1


def test_results_table_shows_every_point_and_the_unparsed_count():
    point = lambda k, v: {"k": k, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "mc_stderr": 0.01,  # noqa: E731
                          "generated_tokens": 100 * k}
    results = {"model": "m", "task": "t", "num_problems": 3, "n": 4, "scorer": "oracle", "unparsed": {"wmaj": 5},
               "curves": {"wmaj": [point(1, 0.25), point(4, 0.625)]}}
    console = Console(record=True, width=120)
    print_results_table(results, console)
    rows = [line for line in console.export_text().splitlines() if "│" in line and "0." in line]
    cells = [[c.strip() for c in row.split("│")[1:-1]] for row in rows]
    assert cells == [["wmaj", "1", "0.250", "[0.150, 0.350]", "0.010", "100", "5"],
                     ["", "4", "0.625", "[0.525, 0.725]", "0.010", "400", ""]]


def test_wandb_failure_only_warns():
    point = {"k": 1, "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "generated_tokens": 8, "backward_tokens": 0,
             "flops": 1.0, "wall_time": 0.1}
    results = {"curves": {"pass": [point]}}
    with pytest.warns(RuntimeWarning, match="W&B logging failed.*AttributeError"):
        log_to_wandb(object(), results, [])  # not a run: has no .log


def test_parameter_count_on_meta_matches_the_loaded_model(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    assert parameter_count(str(tmp_path / "m")) == sum(p.numel() for p in model.parameters())


def test_task_options_and_pot_on_a_trained_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from core.models import load_pretrained

    model, _ = load_pretrained("tiny-llama", dtype="float32")
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # non-zero: a real change
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval"
    catpot(["eval", "--model", "tiny-llama", "--adapter", str(tmp_path / "adapter"), "--task", "arithmetic",
            "--task-option", "max_operand=19", "--task-option", "test_one_in=2", "--limit", "25", "--n", "2",
            "--ks", "1,2", "--strategies", "pass,pot", "--pot-updates", "0,1", "--pot-runs", "1",
            "--pot-segment-tokens", "2", "--max-new-tokens", "4", "--dtype", "float32", "--out", str(out)])
    with pytest.raises(ValueError, match="exceeds the 20 distinct test problems"):  # the default set is smaller
        load_task("arithmetic", split="test", size=25)
    expected = load_task("arithmetic", split="test", size=25, max_operand=19, test_one_in=2)
    _, records = read_records(out / "records.jsonl")
    assert [r["id"] for r in records] == [p.id for p in expected.problems]
    # ids do not depend on the options, prompts do: the character tokenizer counts the 2-digit operands
    _, tok = load_pretrained("tiny-llama", dtype="float32")
    prompt_tokens = [len(tok(tok.apply_chat_template(expected.messages(p), tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]) for p in expected.problems]
    assert [r["prompt_tokens"] for r in records] == prompt_tokens
    # PoT ran on the peft-wrapped model: budget 0 never updates, budget 1 updated the runs that outlived a segment
    assert all(run["backward_tokens"] == 0 for r in records for run in r["pot"]["0"])
    assert any(run["backward_tokens"] > 0 for r in records for run in r["pot"]["1"])
    with pytest.raises(ValueError, match="--task-option expects key=value, got 'max_operand'"):
        catpot(tiny_eval_argv(tmp_path / "o", "--task-option", "max_operand"))
    with pytest.raises(ValueError, match="task.test_one_in must be an int >= 2, got 1"):
        catpot(tiny_eval_argv(tmp_path / "o", "--task-option", "test_one_in=1"))
