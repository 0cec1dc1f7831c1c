"""Answer extraction and equivalence, including every MATH-500 solution against its own answer."""

import json
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recipes.tasks import answers
from recipes.tasks.answers import answer_key, answers_equivalent, as_number, cluster_keys, extract_answer, last_boxed
from recipes.tasks.base import Problem, Task, Verdict


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
        ("7.00001", "7", False),  # different numbers, however close
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


# ------------------------------------------------------------------------------------------ numbers and clusters


@pytest.mark.parametrize("answer, number", [
    (r"\$1,200", 1200.0), ("1,200.", 1200.0), (r"18\%", 18.0), ("18%", 18.0), (r"18\text{ dollars}", 18.0),
    (r"5.4 \text{ cents}", 5.4), (r"10,\!080", 10080.0), (r"\$32,\!348", 32348.0), ("5,", 5.0), ("-.5", -0.5),
    ("1,2", None), ("3, 5, 7", None), ("12,34", None), (r"\frac{1}{2}", None), ("x=2", None),
])
def test_plain_numbers(answer, number):
    assert as_number(answer) == number


@pytest.mark.parametrize("pred, gold, equal", [
    (r"\$1,200", "1200", True),
    ("3, 5, 7", "357", False),  # a list is not a number with thousands commas
    ("1,2", "12", False),
    (r"18\%", "0.18", False),  # "18%" is the number of percent, 18
    ("x=2", "2", True),
    (r"18\text{ dollars}", "18", True),
])
def test_equivalence_of_written_numbers(pred, gold, equal):
    assert answers_equivalent(pred, gold) is equal


@pytest.mark.parametrize("forms", [
    [r"\frac{1}{2}", "0.5", r"\dfrac12"],
    ["x=2", "2", "2.0"],
    [r"2\sqrt{2}", r"\sqrt8", r"\sqrt{8}"],
    [r"18\%", "18", "18%"],
    [r"18\text{ dollars}", "18"],
    [r"\$1,200", "1200", "1,200"],
])
def test_equivalent_answers_share_one_cluster_whatever_their_order(forms):
    keys = cluster_keys([*forms, None, "12345"])
    assert len(set(keys[: len(forms)])) == 1 and keys[0] in {answer_key(f) for f in forms}
    assert keys[len(forms)] is None and keys[-1] == "12345"
    assert cluster_keys(forms[::-1]) == keys[: len(forms)]
    assert answer_key(r"\$1,200") == "1200"


def _written(value: Fraction, form: int) -> str:
    """``value`` (a decimal with at most 3 places) in one of the ways a completion or a gold answer writes it."""
    decimal = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    whole = value.denominator == 1
    forms = [decimal, f"{decimal}0" if not whole else f"{decimal}.0", rf"\${decimal}", rf"{decimal}\%",
             rf"{decimal}\text{{ apples}}", rf"\frac{{{2 * value.numerator}}}{{{2 * value.denominator}}}",
             f"x = {decimal}"]
    if whole:
        forms.append(f"{int(value):,}")
    return forms[form % len(forms)]


_numbers = st.builds(lambda units, places: Fraction(units, 10**places), st.integers(-10**9, 10**9),
                     st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(_numbers, _numbers, st.integers(0, 7), st.integers(0, 7))
@example(Fraction(-1), Fraction(-1), 3, 6)  # "-1\%" and "x = -1": math-verify alone reads the first as -0.01
def test_different_numbers_never_cluster_and_equal_ones_always_do(a, b, form_a, form_b):
    keys = cluster_keys([_written(a, form_a), _written(b, form_b)])
    assert (keys[0] == keys[1]) is (a == b)
    assert answers_equivalent(_written(a, form_a), _written(b, form_b)) is (a == b)


def test_neighbouring_large_integers_and_tiny_decimals_stay_apart():
    assert not answers_equivalent("100010", "100000") and not answers_equivalent("1234600", "1234567")
    assert not answers_equivalent("0.0002", "0.0001") and not answers_equivalent("0.00009", "0.00001")
    assert cluster_keys(["0.0001", "0", "0.0002", "10000", "10001"]) == ["0.0001", "0", "0.0002", "10000", "10001"]
    assert answer_key("1e-7") != answer_key("3e-7")


@pytest.mark.parametrize("pred, gold, equal", [
    ("1 2", "12", False), ("12 345", "12345", False),  # two numbers, not one
    ("1e5", "100000", True), ("2.5e-3", "0.0025", True),
    ("0.3333", r"\frac{1}{3}", False), (r"\frac{2}{6}", r"\frac{1}{3}", True),  # rationals compare exactly
    ("1.414", r"\sqrt{2}", True), ("1.41", r"\sqrt{2}", True), ("1.42", r"\sqrt{2}", False), ("1", r"\sqrt{2}", False),
    ("3.1416", r"\pi", True), ("3.1415", r"\pi", False),  # an irrational: rounded at the digits written
    (r"\frac{2000000000}{2}", "999999999", False),
])
def test_numbers_written_with_spaces_exponents_and_approximations(pred, gold, equal):
    assert answers_equivalent(pred, gold) is equal
    assert answers_equivalent(gold, pred) is equal  # the relation is symmetric


def test_spaced_digits_are_neither_a_strict_answer_nor_the_key_of_the_joined_number():
    assert extract_answer("7 7", strict=True, answer_alone=True) is None
    assert cluster_keys(["1 2", "12", "1, 2"]) == ["1,2", "12", "1,2"]


@settings(max_examples=30, deadline=None)
@given(st.permutations(["100000", "100010", r"\frac{1}{2}", "0.5", "x = 0.5", r"\sqrt{2}", "1.414", "1.4142", "7",
                        "7.0", None, r"\$7"]))
def test_clusters_do_not_depend_on_the_order_of_the_pool(pool):
    reference = ["100000", "100010", r"\frac{1}{2}", "0.5", "x = 0.5", r"\sqrt{2}", "1.414", "1.4142", "7", "7.0",
                 None, r"\$7"]
    expected = dict(zip(reference, cluster_keys(reference)))
    assert cluster_keys(pool) == [expected[answer] for answer in pool]


def test_clustering_checks_each_new_answer_once_per_cluster(monkeypatch):
    calls = []
    real = answers._math_verify_equal
    monkeypatch.setattr(answers, "_math_verify_equal", lambda p, g: calls.append((p, g)) or real(p, g))
    pool = [r"\frac{1}{2}", "0.5", r"\sqrt{2}", r"\frac{1}{2}", "x = 0.5", r"\sqrt{2}", None] * 9
    keys = cluster_keys(pool)
    assert len(set(keys) - {None}) == 2
    assert len(calls) <= 3  # "0.5" vs ½, √2 vs ½, "x = 0.5" vs ½: repeats reuse their canonical key


# ---------------------------------------------------------------------------------------------- strict answers


@pytest.mark.parametrize("text, strict, flexible", [
    (r"so \boxed{7}, not 8", "7", "7"),
    ("The answer is 18 dollars.", "18", "18"),
    ("Adding them up.\n#### 1,200", "1,200", "1,200"),
    (r"The final answer is $\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}", "2"),
    ("Final answer: 7\nCheck: 7 + 1 = 8", "7", "8"),
    ("The answer is 3/4.", "3/4", "4"),
    ("3 + 4 = 7", None, "7"),
    ("nothing", None, None),
])
def test_strict_extraction_needs_an_explicit_answer(text, strict, flexible):
    assert extract_answer(text, strict=True) == strict
    assert extract_answer(text) == flexible


def test_strict_mode_on_a_task():
    arithmetic = Task("arithmetic", [Problem("p", "What is 3 + 4? Answer with just the number.", "7")],
                      answer_alone=True)
    math = Task("math", [Problem("q", r"Compute 3 + 4. Put your final answer within \boxed{}.", "7")])
    for task in (arithmetic, math):
        problem = task.problems[0]
        assert task.verify("7", problem).correct and task.verify("so 3 + 4 = 7", problem).correct
        assert not task.verify("so 3 + 4 = 7", problem, strict=True).correct  # no explicit final answer
        assert task.verify(r"\boxed{7}", problem, strict=True).correct
        # cut off at the token limit: flexible still reads the last number, strict counts it wrong
        assert task.verify("3 + 4 = 7, and then 7", problem, finished=False).correct
        truncated = task.verify(r"\boxed{7}", problem, strict=True, finished=False)
        assert not truncated.correct and truncated.answer is None and truncated.answer_key is None
    assert arithmetic.verify(" 7.\n", arithmetic.problems[0], strict=True).correct  # the answer alone
    assert not math.verify("7", math.problems[0], strict=True).correct
    verdict = math.verify(r"it is \boxed{\$7}", math.problems[0])
    assert verdict == Verdict(True, "7", r"\$7")


def test_task_answer_keys_cluster_one_pool():
    task = Task("math", [])
    texts = [r"\boxed{\frac{1}{2}}", "it is 0.5", r"\boxed{x=2}", "so 2", "no number", r"\boxed{7}"]
    assert task.answer_keys(texts) == ["0.5", "0.5", "2", "2", None, "7"]  # each cluster's first key in sorted order
    assert task.answer_keys(texts, strict=True, finished=[True, True, True, True, True, False]) == [
        r"\frac{1}{2}", None, "x=2", None, None, None]
    assert task.answer_key("it is 0.5") == "0.5"  # one completion: its own canonical key
    with pytest.raises(ValueError, match="finished must hold one flag per completion, got 1 for 6"):
        task.answer_keys(texts, finished=[True])
