"""Evaluation protocol: strict vs flexible answers, answer clusters and the finished flag in records and results."""

import pytest

from evaluation.records import read_records
from recipes.cli import main
from recipes.eval_command import EvalConfig, evaluate_model
from recipes.tasks import load_task
from recipes.tasks.answers import cluster_keys


def test_strict_and_flexible_score_the_same_samples_by_their_own_rules(tiny, tmp_path):
    model, tok = tiny
    task = load_task("arithmetic", split="test", size=3, seed=0)
    results, records = {}, {}
    for mode in ("flexible", "strict"):
        cfg = EvalConfig(n=6, ks=[1, 2, 6], strategies=["pass", "maj"], max_new_tokens=10, answer_mode=mode)
        results[mode] = evaluate_model(model.eval(), tok, task, cfg, tmp_path / mode)
        records[mode] = read_records(tmp_path / mode / "records.jsonl")[1]
    for flexible, strict, problem in zip(records["flexible"], records["strict"], task.problems):
        assert [s["text"] for s in flexible["samples"]] == [s["text"] for s in strict["samples"]]
        for record, is_strict in ((flexible, False), (strict, True)):
            samples = record["samples"]
            for s in samples:
                verdict = task.verify(s["text"], problem, strict=is_strict, finished=s["finished"])
                assert (s["correct"], s["answer"]) == (verdict.correct, verdict.answer)
            assert [s["answer_key"] for s in samples] == cluster_keys([s["answer"] for s in samples])
    samples = [s for r in records["strict"] for s in r["samples"]]
    assert not any(s["correct"] or s["answer"] is not None for s in samples if not s["finished"])
    parsed_flexibly = sum(s["answer"] is not None for r in records["flexible"] for s in r["samples"])
    assert parsed_flexibly > sum(s["answer"] is not None for s in samples)  # random text: digits, no statements
    rate = sum(s["finished"] for s in samples) / len(samples)
    assert results["flexible"]["finished_rate"] == results["strict"]["finished_rate"] == rate
    assert results["strict"]["unparsed"]["maj"] == sum(s["answer_key"] is None for s in samples)
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['answer_mode'\]\)"):
        evaluate_model(model, tok, task, EvalConfig(n=6, ks=[1], max_new_tokens=10, answer_mode="strict"),
                       tmp_path / "flexible")


def test_answer_mode_is_checked_in_the_config_and_on_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"eval.answer_mode must be one of \('flexible', 'strict'\), got 'lenient'"):
        EvalConfig(answer_mode="lenient")
    status = main(["eval", "--model", "tiny-llama", "--task", "arithmetic", "--answer-mode", "lenient",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.strip().count("\n") == 0
    assert "catpot: error: eval.answer_mode must be one of ('flexible', 'strict'), got 'lenient'" in err
