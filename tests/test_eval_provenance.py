"""What an evaluation records about itself: provenance in results.json and records, per-problem prompts and gold
answers, the top-level summary; git, package and data identities computed independently."""

import argparse
import hashlib
import json
import subprocess

import pytest
import torch
import transformers
import trl

from conftest import REPO_ROOT
from evaluation.records import read_records
from recipes.eval_command import register
from recipes.provenance import git_revision, model_fingerprint
from recipes.tasks import load_task
from core.tiny_llama import tiny_tokenizer


def catpot(argv):
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_results_and_records_say_what_produced_them(tmp_path, shared_data_dir):
    out = tmp_path / "eval"
    results = catpot(["eval", "--model", "tiny-llama", "--task", "gsm8k", "--data-dir", str(shared_data_dir),
                      "--limit", "2", "--n", "3", "--ks", "1,3", "--strategies", "pass,maj", "--max-new-tokens", "6",
                      "--system-prompt", "Be brief.", "--fewshot", "1", "--dtype", "float32", "--out", str(out)])
    provenance = results["provenance"]
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert provenance["git"]["commit"] == head.stdout.strip()
    assert provenance["packages"]["torch"] == torch.__version__
    assert provenance["packages"]["transformers"] == transformers.__version__
    assert provenance["packages"]["trl"] == trl.__version__
    assert provenance["data"] == {"gsm8k/test.jsonl": sha256(shared_data_dir / "gsm8k" / "test.jsonl"),
                                  "gsm8k/train.jsonl": sha256(shared_data_dir / "gsm8k" / "train.jsonl")}
    tok = tiny_tokenizer()
    assert provenance["chat_template"] is True
    assert provenance["chat_template_sha256"] == hashlib.sha256(tok.chat_template.encode()).hexdigest()
    assert provenance["source"]["model"] == model_fingerprint("tiny-llama") and provenance["source"]["adapter"] is None
    assert json.loads((out / "results.json").read_text())["provenance"] == provenance
    header = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert header["provenance"] == provenance

    task = load_task("gsm8k", split="test", size=2, data_dir=shared_data_dir, system_prompt="Be brief.", fewshot=1)
    _, records = read_records(out / "records.jsonl")
    assert [r["prompt"] for r in records] == [task.render(p, tok) for p in task.problems]
    assert [r["gold"] for r in records] == [p.answer for p in task.problems] == ["18", "3"]
    assert "Be brief." in records[0]["prompt"] and task.fewshot[0].completion in records[0]["prompt"]
    assert all(s["stop"] is None for r in records for s in r["samples"])

    summary = results["summary"]
    assert list(results)[0] == "summary"  # a reader sees it first
    assert summary["finished_rate"] == results["finished_rate"]
    for strategy, points in results["curves"].items():
        assert summary["strategies"][strategy] == {
            "k_min": 1, "at_k_min": points[0]["value"], "k_max": 3, "at_k_max": points[-1]["value"],
            "unparsed_share": sum(s["answer_key"] is None for r in records for s in r["samples"]) / 6}


def test_an_evaluation_without_chat_template_records_plain_prompts_and_no_template_hash(tiny, tmp_path):
    from recipes.eval_command import EvalConfig, evaluate_model

    model, tok = tiny
    task = load_task("arithmetic", split="test", size=2, chat_template=False, fewshot=2,
                     prompt_template="Q: {expression}\nA:")
    results = evaluate_model(model.eval(), tok, task, EvalConfig(n=2, ks=[1, 2], max_new_tokens=4,
                                                                 stop=["\n"]), tmp_path)
    _, records = read_records(tmp_path / "records.jsonl")
    assert [r["prompt"] for r in records] == [task.prompt_text(p) for p in task.problems]
    assert "<|im_start|>" not in records[0]["prompt"] and records[0]["prompt"].count("Q: ") == 3
    assert results["provenance"]["chat_template"] is False and results["provenance"]["chat_template_sha256"] is None
    assert results["provenance"]["data"] == {}  # procedural problems: their identity is the seed and options
    header = read_records(tmp_path / "records.jsonl")[0]
    assert header["stop"] == ["\n"] and "subset" not in header  # a default subset stays out of the identity


def test_git_revision_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert git_revision(tmp_path) is None  # not a repository
    outer = tmp_path / "outer"
    (outer / "site-packages").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    assert git_revision(outer / "site-packages") is None  # installed inside some other repository
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert git_revision(REPO_ROOT) is None


@pytest.mark.parametrize("argv, message", [
    (["--subset", "middle"], r"task.subset must be one of \('first', 'random'\), got 'middle'"),
    (["--fewshot-format", "turns", "--no-chat-template"], "task.fewshot_format 'turns' needs a chat template"),
    (["--prompt-template", "What is {problem}?"], r"must contain \{expression\}"),
])
def test_bad_prompt_flags_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message) as error:
        catpot(["eval", "--model", "tiny-llama", "--task", "arithmetic", "--limit", "1", "--n", "1", "--ks", "1",
                "--out", str(tmp_path / "e"), *argv])
    assert "\n" not in str(error.value)
