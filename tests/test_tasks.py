"""Tasks: seeded, disjoint arithmetic splits; GSM8K / MATH / MATH-500 from local JSONL; subsets, few-shot examples
and prompt rendering; the verifier."""

import hashlib
import json
import random

import pytest

from conftest import REPO_ROOT

from recipes.tasks import TASKS, load_task
from recipes.tasks.arithmetic import split_of


def test_arithmetic_is_seeded_and_answers_are_right():
    a = load_task("arithmetic", split="train", size=50, seed=3, digits=2, terms=3, operators="+-*")
    b = load_task("arithmetic", split="train", size=50, seed=3, digits=2, terms=3, operators="+-*")
    assert a.problems == b.problems
    assert a.problems != load_task("arithmetic", split="train", size=50, seed=4, digits=2, terms=3, operators="+-*").problems
    for p in a.problems:
        expression = p.prompt.removeprefix("What is ").split("?")[0]
        terms = expression.split(" ")
        assert len(terms) == 5 and all(len(t) <= 2 for t in terms[::2])
        # independent evaluation: × first, then + and − left to right
        values, ops = [int(t) for t in terms[::2]], terms[1::2]
        while "*" in ops:
            i = ops.index("*")
            values[i : i + 2] = [values[i] * values[i + 1]]
            ops.pop(i)
        total = values[0]
        for op, v in zip(ops, values[1:]):
            total = total + v if op == "+" else total - v
        assert p.answer == str(total)


def test_max_operand_bounds_every_operand():
    task = load_task("arithmetic", split="test", size=200, seed=0, digits=2, max_operand=31)
    operands = [int(x) for p in task.problems for x in p.prompt.split("What is ")[1].split("?")[0].split(" + ")]
    assert max(operands) == 31 and min(operands) == 0
    assert all(int(p.answer) == sum(int(x) for x in p.prompt.split("What is ")[1].split("?")[0].split(" + "))
               for p in task.problems)


def test_arithmetic_splits_are_disjoint_for_any_seed():
    train = {p.prompt for s in range(3) for p in load_task("arithmetic", split="train", size=300, seed=s, digits=2).problems}
    test = {p.prompt for s in range(3) for p in load_task("arithmetic", split="test", size=300, seed=s, digits=2).problems}
    assert train and test and not train & test
    assert all(split_of(p.removeprefix("What is ").split("?")[0]) == "test" for p in test)


def test_test_one_in_sets_the_held_out_share_and_keeps_splits_disjoint():
    # operands 0..19 give 400 expressions; 1 in 2 by hash is 209 of them, enough for a 200-problem held-out set
    all_expressions = {f"{a} + {b}" for a in range(20) for b in range(20)}
    test = load_task("arithmetic", split="test", size=209, max_operand=19, test_one_in=2)
    train = load_task("arithmetic", split="train", size=191, max_operand=19, test_one_in=2)
    held_out = {p.prompt.split("What is ")[1].split("?")[0] for p in test.problems}
    trained = {p.prompt.split("What is ")[1].split("?")[0] for p in train.problems}
    assert held_out | trained == all_expressions and not held_out & trained
    assert all(split_of(e, 2) == "test" for e in held_out)
    with pytest.raises(ValueError, match=r"exceeds the 209 distinct test problems .* test_one_in=2"):
        load_task("arithmetic", split="test", size=210, max_operand=19, test_one_in=2)


def test_max_operands_bounds_each_position_and_enumerates_every_product():
    # one-digit times two-digit: 10 x 100 = 1000 expressions, 229 of them held out at 1 in 4
    every = {f"{a} * {b}" for a in range(10) for b in range(100)}
    held_out = {f"{a} * {b}" for a in range(10) for b in range(100) if split_of(f"{a} * {b}", 4) == "test"}
    options = {"operators": "*", "max_operands": [9, 99], "test_one_in": 4}
    test = load_task("arithmetic", split="test", size=len(held_out), seed=2, **options)
    train = load_task("arithmetic", split="train", size=len(every - held_out), seed=2, **options)
    expression = lambda p: p.prompt.removeprefix("What is ").removesuffix("? Answer with just the number.")
    assert {expression(p) for p in test.problems} == held_out
    assert {expression(p) for p in train.problems} == every - held_out
    for p in test.problems + train.problems:
        a, b = (int(x) for x in expression(p).split(" * "))
        assert p.answer == str(a * b)


def test_system_prompt_replaces_the_default_system_turn():
    task = load_task("arithmetic", split="test", size=2, system_prompt="Answer with just the number.")
    assert task.messages(task.problems[0]) == [{"role": "system", "content": "Answer with just the number."},
                                               {"role": "user", "content": task.problems[0].prompt}]
    assert load_task("arithmetic", split="test", size=2).messages(task.problems[0])[0]["role"] == "user"


def test_arithmetic_verifier_and_answer_keys():
    task = load_task("arithmetic", split="test", size=3, digits=1)
    problem = task.problems[0]
    assert task.verify(f"The answer is {problem.answer}.", problem).correct
    wrong = task.verify(f"{int(problem.answer) + 1}", problem)
    assert not wrong.correct and wrong.answer_key == str(int(problem.answer) + 1)
    assert task.verify("I don't know", problem).answer_key is None
    assert task.messages(problem) == [{"role": "user", "content": problem.prompt}]


def test_math_datasets_from_local_jsonl(shared_data_dir):
    gsm = load_task("gsm8k", split="test", data_dir=shared_data_dir)
    assert len(gsm) == 1319 and gsm.problems[0].answer == "18" and "\\boxed{}" in gsm.problems[0].prompt
    math = load_task("math", split="train", data_dir=shared_data_dir, levels=[1, 2, 3])
    assert 0 < len(math) < 7500
    m500 = load_task("math500", split="test", data_dir=shared_data_dir, levels=[5])
    assert len(m500) == 134 and m500.problems[0].id.startswith("test/")
    small = load_task("math500", split="test", data_dir=shared_data_dir, size=10, seed=1)
    assert small.problems == load_task("math500", split="test", data_dir=shared_data_dir, size=10, seed=1).problems


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "chess"}, ValueError, r"task.name must be one of .* got 'chess'"),
        ({"name": "arithmetic", "split": "dev"}, ValueError, r"task.split .* got 'dev'"),
        ({"name": "arithmetic", "digits": 0}, ValueError, r"task.digits must be an int in \[1, 18\], got 0"),
        ({"name": "arithmetic", "operators": "/"}, ValueError, r"task.operators .* got '/'"),
        ({"name": "arithmetic", "size": 500, "digits": 1}, ValueError, r"task.size=500 exceeds the 80 distinct"),
        ({"name": "arithmetic", "max_operand": 0}, ValueError, r"task.max_operand must be an int in \[1, 10\*\*18\), got 0"),
        ({"name": "arithmetic", "test_one_in": 1}, ValueError, r"task.test_one_in must be an int >= 2, got 1"),
        ({"name": "arithmetic", "max_operands": [9]}, ValueError,
         r"task.max_operands must be a list of 2 positive ints .* got \[9\]"),
        ({"name": "arithmetic", "max_operands": [9, 0]}, ValueError, r"task.max_operands .* got \[9, 0\]"),
        ({"name": "arithmetic", "max_operands": [9, 9], "max_operand": 9}, ValueError,
         r"task.max_operands replaces task.max_operand"),
        ({"name": "arithmetic", "system_prompt": 3}, ValueError, r"task.system_prompt must be a non-empty string or null, got 3"),
        ({"name": "gsm8k", "split": "test", "data_dir": "/nonexistent"}, FileNotFoundError, r"task.data_dir: .*gsm8k/test.jsonl"),
        ({"name": "math500", "split": "train", "data_dir": "/tmp"}, ValueError, r"task.split for math500 .* got 'train'"),
        ({"name": "gsm8k", "split": "test", "digits": 2}, ValueError, r"unknown option\(s\) for task 'gsm8k'"),
    ],
)
def test_bad_task_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_task(**kwargs)


def test_registry():
    assert set(TASKS) == {"arithmetic", "gsm8k", "math", "math500"}


def test_every_keyword_option_of_the_arithmetic_loader_is_a_valid_task_option():
    import inspect

    from recipes.tasks.arithmetic import OPTIONS, load_arithmetic

    keywords = set(inspect.signature(load_arithmetic).parameters) - {"split", "size", "seed", "prompt_template", "fewshot"}
    assert keywords == set(OPTIONS)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_size_takes_the_first_problems_unless_a_random_subset_is_asked_for(shared_data_dir):
    rows = _jsonl(shared_data_dir / "gsm8k" / "test.jsonl")
    first = load_task("gsm8k", split="test", size=5, data_dir=shared_data_dir)
    assert [p.prompt.split("\n\n")[0] for p in first.problems] == [r["question"] for r in rows[:5]]
    assert [p.answer for p in first.problems] == [r["final"] for r in rows[:5]]
    everything = load_task("gsm8k", split="test", data_dir=shared_data_dir).problems
    drawn = load_task("gsm8k", split="test", size=5, subset="random", seed=3, data_dir=shared_data_dir).problems
    assert drawn == random.Random(3).sample(everything, 5) and drawn != first.problems
    assert load_task("gsm8k", split="test", size=5000, data_dir=shared_data_dir).problems == everything


def test_arithmetic_sizes_extend_one_stream():
    small = load_task("arithmetic", split="test", size=20, max_operand=19, test_one_in=2).problems
    assert load_task("arithmetic", split="test", size=50, max_operand=19, test_one_in=2).problems[:20] == small


def test_the_committed_experiment_still_scores_the_same_against_its_recipe_problems():
    """The arith_g8 results were sampled from the recipe's problems: today's problems must give every committed
    sample the verdict it was recorded with (a changed problem changes its gold answer or its id). An integer
    answer is right exactly when its canonical key is the gold answer."""
    from evaluation.records import RECORDS_ARCHIVE, read_archived_records
    from recipes.config import load_recipe
    from recipes.train import load_eval_task

    task = load_eval_task(load_recipe(REPO_ROOT / "recipes" / "experiments" / "arith_g8" / "baseline.yaml"))
    _, records = read_archived_records(REPO_ROOT / "results" / "arith_g8" / RECORDS_ARCHIVE, "baseline.records.jsonl")
    assert [r["id"] for r in records] == [p.id for p in task.problems] and len(records) == 209
    keyed = [(s["answer_key"] == problem.answer, s["correct"]) for record, problem in zip(records, task.problems)
             for s in record["samples"] if s["answer_key"] is not None]
    assert len(keyed) > 6000 and all(matches == correct for matches, correct in keyed)


def test_fewshot_examples_come_from_the_train_split_and_never_from_the_problems(shared_data_dir):
    train_rows = _jsonl(shared_data_dir / "gsm8k" / "train.jsonl")
    test = load_task("gsm8k", split="test", size=4, data_dir=shared_data_dir, fewshot=3)
    assert [e.prompt.split("\n\n")[0] for e in test.fewshot] == [r["question"] for r in train_rows[:3]]
    assert all(e.completion.endswith(f"\\boxed{{{r['final']}}}.") for e, r in zip(test.fewshot, train_rows))
    assert set(test.data_sha256) == {"gsm8k/test.jsonl", "gsm8k/train.jsonl"}
    assert test.data_sha256["gsm8k/train.jsonl"] == hashlib.sha256(
        (shared_data_dir / "gsm8k" / "train.jsonl").read_bytes()).hexdigest()
    train = load_task("gsm8k", split="train", size=4, data_dir=shared_data_dir, fewshot=3)
    assert [p.prompt.split("\n\n")[0] for p in train.problems] == [r["question"] for r in train_rows[3:7]]
    m500 = load_task("math500", split="test", size=2, data_dir=shared_data_dir, fewshot=2, levels=[1])
    math_rows = [r for r in _jsonl(shared_data_dir / "math" / "train.jsonl") if "1" in str(r["level"])]
    assert [e.prompt.split("\n\n")[0] for e in m500.fewshot] == [r["problem"] for r in math_rows[:2]]
    arith = load_task("arithmetic", split="test", size=3, fewshot=4)
    assert all(split_of(e.prompt.removeprefix("What is ").split("?")[0]) == "train" for e in arith.fewshot)
    assert [e.completion for e in arith.fewshot] == [p.answer for p in load_task("arithmetic", size=4).problems]
    arith_train = load_task("arithmetic", size=3, fewshot=2)
    assert arith_train.problems == load_task("arithmetic", size=5).problems[2:]  # after its own examples


def test_prompts_render_as_chat_turns_chat_text_or_plain_text():
    from core.tiny_llama import tiny_tokenizer

    tok = tiny_tokenizer()
    chat = load_task("arithmetic", split="test", size=2, fewshot=2, system_prompt="Be exact.")
    problem, (one, two) = chat.problems[0], chat.fewshot
    assert chat.messages(problem) == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": one.prompt}, {"role": "assistant", "content": one.completion},
        {"role": "user", "content": two.prompt}, {"role": "assistant", "content": two.completion},
        {"role": "user", "content": problem.prompt}]
    assert chat.render(problem, tok) == tok.apply_chat_template(chat.messages(problem), tokenize=False,
                                                                add_generation_prompt=True)
    inline = load_task("arithmetic", split="test", size=2, fewshot=2, fewshot_format="text")
    assert inline.messages(problem) == [{"role": "user", "content": (
        f"{one.prompt} {one.completion}\n\n{two.prompt} {two.completion}\n\n{problem.prompt}")}]
    plain = load_task("arithmetic", split="test", size=2, fewshot=2, system_prompt="Be exact.", chat_template=False,
                      prompt_template="Q: {expression} =")
    expression = problem.prompt.removeprefix("What is ").split("?")[0]
    assert plain.render(plain.problems[0], tok) == (
        f"Be exact.\n\nQ: {one.prompt.removeprefix('What is ').split('?')[0]} = {one.completion}\n\n"
        f"Q: {two.prompt.removeprefix('What is ').split('?')[0]} = {two.completion}\n\nQ: {expression} =")
    assert plain.prompt(plain.problems[0]) == plain.render(plain.problems[0], None)  # TRL gets the same text
    assert plain.completion("7") == " 7" and chat.completion("7") == [{"role": "assistant", "content": "7"}]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"subset": "middle"}, r"task.subset must be one of \('first', 'random'\), got 'middle'"),
        ({"subset": "random"}, r"task.subset 'random' does not apply to arithmetic"),
        ({"fewshot": -1}, r"task.fewshot must be an int >= 0, got -1"),
        ({"fewshot_format": "turns", "chat_template": False}, r"task.fewshot_format 'turns' needs a chat template"),
        ({"fewshot_format": "list"}, r"task.fewshot_format must be one of \('turns', 'text'\), got 'list'"),
        ({"prompt_template": "What is {problem}?"}, r"task.prompt_template for arithmetic must contain \{expression\}"),
        ({"system_prompt": " "}, r"task.system_prompt must be a non-empty string or null, got ' '"),
    ],
)
def test_bad_prompt_and_subset_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_task("arithmetic", split="test", size=2, **kwargs)


def test_bad_dataset_prompt_input(shared_data_dir):
    with pytest.raises(ValueError, match=r"task.prompt_template for gsm8k must contain \{problem\}, got 'Q: \{q"):
        load_task("gsm8k", split="test", data_dir=shared_data_dir, prompt_template="Q: {question}")
    with pytest.raises(ValueError, match=r"task.fewshot=9999 exceeds the 7473 problems of gsm8k's train split"):
        load_task("gsm8k", split="test", data_dir=shared_data_dir, fewshot=9999)
