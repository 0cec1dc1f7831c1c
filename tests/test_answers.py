"""Answer extraction and equivalence, including every MATH-500 solution against its own answer."""

import json

import pytest

from recipes.tasks.answers import answer_key, answers_equivalent, extract_answer, last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"the set \boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"answer: \boxed 2.", "2"),
        (r"\fbox{7}", "7"),
        (r"\boxed{\frac{1}{2}", None),  # cut off mid-answer
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("3 + 4 = 7", "7"), ("The answer is 1,000.", "1,000"), ("-12", "-12"), (r"x \boxed{5} y 9", "5"), ("none", None)],
)
def test_extract_answer_prefers_boxed_then_last_number(text, expected):
    assert extract_answer(text) == expected


def test_answer_keys_are_canonical():
    assert answer_key("3.0") == answer_key("3") == "3"
    assert answer_key("1,000") == "1000"
    assert answer_key(r"$\dfrac{1}{2}$") == answer_key(r"\frac{1}{2}")
    assert answer_key(None) is None
    assert answer_key("7") != answer_key("8")


@pytest.mark.parametrize(
    "pred, gold, equal",
    [
        ("7", "7", True),
        ("7.00001", "7", True),
        ("7.01", "7", False),
        ("0.5", r"\frac{1}{2}", True),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        (r"\frac{3}{4}", r"\frac{4}{3}", False),
        (r"\text{Evelyn}", r"\text{Evelyn}", True),
        (None, "1", False),
        (r"\frac{", "1", False),  # malformed: not equal, never a crash
        ("$ $", r"\,", False),  # LaTeX noise answers nothing, even against an equally empty gold
    ],
)
def test_equivalence(pred, gold, equal):
    assert answers_equivalent(pred, gold) is equal


def test_every_math500_solution_verifies_against_its_answer(shared_data_dir):
    rows = [json.loads(line) for line in (shared_data_dir / "math500" / "test.jsonl").open()]
    exact = sum(last_boxed(r["solution"]) == r["answer"] for r in rows)
    verified = sum(answers_equivalent(extract_answer(r["solution"]), r["answer"]) for r in rows)
    assert exact == len(rows) == 500
    assert verified == 500
    # and a wrong answer (the next problem's) is rejected almost always
    wrong = sum(answers_equivalent(extract_answer(a["solution"]), b["answer"]) for a, b in zip(rows, rows[1:]))
    assert wrong <= 5
