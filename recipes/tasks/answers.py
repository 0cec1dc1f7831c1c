"""Final-answer extraction, equivalence and answer clusters for math tasks.

Extraction, flexible (the default; the CAT evaluation protocol): the last ``\\boxed{...}`` (nested braces balanced,
escaped ``\\{`` ignored; the brace-less ``\\boxed 2`` form too), else the last number in the text.
Extraction, strict (as lm-evaluation-harness's strict-match filters): the last ``\\boxed{...}``, else the last
explicit final-answer statement ("The answer is X", "The final answer is X", "Final answer: X", "#### X"), else,
where the prompt asks for the answer alone, a completion that is nothing but a number; no fallback to the last
number, and a completion cut off at the token limit has no answer.

Equivalence: answers that denote real numbers are compared as numbers and never go further. Two plain numbers
(thousands commas, ``\\$``, ``%``/``\\%`` and a trailing ``\\text{unit}`` allowed: "18\\%" is 18, as GSM8K writes
percentages; ``1e5`` notation too) are equal only when their exact values are, and so are rational constant
expressions (``\\frac{1}{2}`` is 0.5, never 0.50001); a written decimal stands for an irrational constant such as
``2\\sqrt{2}`` when the constant rounds to it at the digits written (``_numbers_equal``). Anything else (equations, sets, intervals, expressions in x, text)
by its normalised string, then math-verify. The *answer key* is a canonical string of an extracted answer;
``cluster_keys`` merges the keys of one pool's answers that are equivalent, so that a majority vote counts
``\\frac{1}{2}`` and ``0.5`` (or ``x=2`` and ``2``) as one answer.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

import sympy
from math_verify import parse, verify

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
MIN_APPROXIMATION_DIGITS = 3  # a decimal stands for an irrational constant only with this many significant digits
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|\\displaystyle|\$|\\text\{\s*\}|\s+")
_PLAIN_NUMBER = re.compile(  # commas only as thousands separators; an exponent as programming languages write it
    r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_SPACED_DIGITS = re.compile(r"\d\s+[-+]?\.?\d")  # "1 2" is two numbers, never 12
_SPACED_DIGITS_GAP = re.compile(r"(?<=\d)\s+(?=[-+]?\.?\d)")
_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}$")  # "18\text{ dollars}", "5.4 \text{ cents}"
_FINAL_STATEMENT = re.compile(r"####|\b(?:final answer|the answer)\b\s*(?:is\b|:|=)", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"(?:\\?\$\s*)?(" + NUMBER.pattern + r")(?=\s+[A-Za-z]{2,}|\s*$)")

logging.getLogger("math_verify").setLevel(logging.ERROR)


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), or None."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    i = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")
    if i < len(text) and text[i] == " ":  # "\boxed 2": the token after the space
        token = text[i + 1 :].split()
        return token[0].rstrip("$.") if token else None
    if i >= len(text) or text[i] != "{":
        return None
    depth, j = 0, i
    while j < len(text):
        if text[j] == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            j += 2
            continue
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None  # unbalanced: the model stopped mid-answer


def last_number(text: str) -> str | None:
    matches = NUMBER.findall(text)
    return matches[-1] if matches else None


def final_statement(text: str) -> str | None:
    """X of the last "The (final) answer is X", "Final answer: X" or "#### X" in ``text``, or None.

    X is a leading number (units after it dropped: "18 dollars." → "18"), an inline ``$...$`` expression, or the
    rest of the sentence.
    """
    matches = list(_FINAL_STATEMENT.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip(" \t:").split("\n")[0].strip()
    if rest.startswith("$") and not rest.startswith("$$") and "$" in rest[1:]:
        rest = rest[1 : rest.index("$", 1)]
    else:
        rest = re.split(r"\.(?:\s|$)", rest)[0]
    number = _LEADING_NUMBER.match(rest.rstrip("."))
    answer = number.group(1) if number else rest.strip().rstrip(".")
    return answer or None


def extract_answer(text: str, *, strict: bool = False, answer_alone: bool = False) -> str | None:
    """Flexible: the last boxed expression, else the last number, else None.

    Strict: the last boxed expression, else the last final-answer statement (``final_statement``), else — with
    ``answer_alone`` (the prompt asks for just the answer) — the whole completion if it is one number, else None.
    """
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    if not strict:
        return last_number(text)
    statement = final_statement(text)
    if statement is not None:
        return statement
    alone = text.strip().rstrip(".").strip()
    if answer_alone and as_number(alone) is not None:
        return alone
    return None


def exact_number(answer: str) -> Fraction | None:
    """The exact value of ``answer`` if it is a plain number, else None.

    Allowed around the digits: thousands commas (1,200 but not 1,2, which is a pair), a leading ``$`` or ``\\$``,
    a trailing ``.``, ``%`` or ``\\%`` (the number of percent: "18\\%" is 18) and a trailing ``\\text{unit}``.
    Digits separated by white space ("1 2") are not one number.
    """
    if _SPACED_DIGITS.search(answer):
        return None
    cleaned = _LATEX_NOISE.sub("", answer.replace("\\$", "").replace("\\%", "%"))
    cleaned = _UNIT.sub("", cleaned).rstrip(".,").removesuffix("%")
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None
    return Fraction(Decimal(cleaned.replace(",", "")))


def as_number(answer: str) -> float | None:
    """``exact_number`` as a float."""
    number = exact_number(answer)
    return None if number is None else float(number)


def answer_key(answer: str | None) -> str | None:
    """Canonical key of one answer: numbers as their shortest exact form ("3.0" → "3", "\\$1,200" → "1200")."""
    if answer is None:
        return None
    number = exact_number(answer)
    if number is not None:
        if number.denominator == 1:
            return str(number.numerator)
        return format(Decimal(number.numerator) / Decimal(number.denominator), "f")  # exact: a decimal's value
    separated = _SPACED_DIGITS_GAP.sub(",", answer)  # "1 2" lists two numbers, like "1, 2": never the key of 12
    key = _LATEX_NOISE.sub("", separated).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return key or None


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _parsed(expression: str, timeout: int | None):
    return parse(f"${expression}$", parsing_timeout=timeout)


@functools.lru_cache(maxsize=65536)
def _constant(expression: str, timeout: int | None) -> Fraction | Decimal | None:
    """The real number a constant expression denotes: exactly (a Fraction) when it is rational (``\\frac{1}{2}``,
    ``\\sqrt{4}``), else to 40 significant digits (a Decimal: ``2\\sqrt{2}``, ``7\\pi``); None for anything else."""
    try:
        parsed = _parsed(expression, timeout)
        expr = parsed[0] if parsed else None
        if not isinstance(expr, sympy.Expr) or not expr.is_number or expr.is_real is False:
            return None
        expr = sympy.nsimplify(expr) if expr.is_Float else sympy.simplify(expr)
        if expr.is_Rational:
            return Fraction(int(expr.p), int(expr.q))
        value = expr.evalf(40)
        if not value.is_real or not value.is_finite:
            return None
        return Decimal(str(value))
    except Exception:  # noqa: BLE001  (sympy cannot evaluate it: not a plain constant)
        return None


@functools.lru_cache(maxsize=65536)
def _never_a_number(expression: str, timeout: int | None) -> bool:
    """True for an expression in free symbols (``x^2+1``) or an interval: neither can equal a real constant."""
    try:
        parsed = _parsed(expression, timeout)
    except Exception:  # noqa: BLE001
        return False
    expr = parsed[0] if parsed else None
    if isinstance(expr, sympy.Expr):
        return bool(expr.free_symbols)
    return isinstance(expr, (sympy.Interval, sympy.Union))


def _numbers_equal(pred: str, gold: str) -> bool | None:
    """Whether two answers that both denote real numbers are equal; None when one of them does not denote one.

    Rational values (plain decimals, ``\\frac{a}{b}``) compare exactly. A written decimal d approximates an
    irrational constant c when c rounded to d's written decimal places is d and d has at least
    ``MIN_APPROXIMATION_DIGITS`` significant digits (1.41 and 1.414 for √2, not 1); two irrational constants are
    equal when they agree to 30 significant digits. A rational never equals an irrational.
    """
    timeout = _timeout()
    values = []
    for answer in (pred, gold):
        exact = exact_number(answer)
        values.append((exact, _decimal_places(answer)) if exact is not None else (_constant(answer, timeout), None))
    (a, places_a), (b, places_b) = values
    if a is None or b is None:
        return None
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return abs(a - b) <= abs(b) * Decimal("1e-30")
    (written, places), constant = ((a, places_a), b) if isinstance(a, Fraction) else ((b, places_b), a)
    if places is None or _significant_digits(written) < MIN_APPROXIMATION_DIGITS:
        return False  # a rational constant (\frac13) is never an irrational one
    quantum = Decimal(1).scaleb(-places)
    return constant.quantize(quantum) == Decimal(written.numerator) / Decimal(written.denominator)


def _decimal_places(answer: str) -> int:
    """Digits written after the decimal point of a plain number (``exact_number`` must accept ``answer``)."""
    match = re.search(r"\.(\d+)", answer)
    return len(match.group(1)) if match else 0


def _significant_digits(value: Fraction) -> int:
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f").replace("-", "").replace(".", "")
    return len(text.lstrip("0"))


def denotes_number(answer: str) -> bool:
    return exact_number(answer) is not None or _constant(answer, _timeout()) is not None


@functools.lru_cache(maxsize=65536)
def _math_verify_equal(pred: str, gold: str) -> bool:
    timeout = _timeout()
    gold_parsed, pred_parsed = _parsed(gold, timeout), _parsed(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_equivalent(pred: str | None, gold: str) -> bool:
    """True when the extracted prediction denotes the gold answer (a symmetric relation).

    Two answers that denote real numbers are compared by ``_numbers_equal`` and are never passed to math-verify
    (whose leniency, e.g. 18% equal to both 18 and 0.18, would merge different numbers); a real number never equals
    an expression in free symbols or an interval; otherwise equal canonical keys, else math-verify (a plain number
    passed as its canonical key, so its ``\\%``, ``\\$`` or unit means what ``exact_number`` says).
    """
    if pred is None:
        return False
    key = answer_key(pred)
    if key is None:  # only LaTeX noise: nothing was answered (and it must not match an equally empty gold)
        return False
    numeric = _numbers_equal(pred, gold)
    if numeric is not None:
        return numeric
    pred_number, gold_number = denotes_number(pred), denotes_number(gold)
    if pred_number != gold_number and _never_a_number(gold if pred_number else pred, _timeout()):
        return False
    gold_key = answer_key(gold)
    if key == gold_key:
        return True
    # a plain number goes to math-verify as its key: "-1\%" means -1 here, while math-verify would read -0.01
    plain = (key if exact_number(pred) is not None else pred, gold_key if exact_number(gold) is not None else gold)
    try:
        return _math_verify_equal(*plain)
    except Exception:  # noqa: BLE001  (a sympy failure on a malformed answer means "not equal", never a crash)
        return False


def cluster_keys(answers: Sequence[str | None]) -> list[str | None]:
    """Answer keys of one pool (a problem's samples, a GRPO group) with equivalent answers merged.

    The distinct canonical keys of the pool are taken in sorted order; each joins the first cluster whose
    representative (its first key in that order) it is equivalent to (``answers_equivalent``, the relation the
    correctness check uses), else opens a new cluster; every member gets its cluster's representative key. The
    result depends only on the set of answers, not on their order in the pool, and each pair of distinct keys is
    checked at most once. None (unparsed) stays None.
    """
    keys = [answer_key(answer) for answer in answers]
    written = {}  # canonical key -> one answer as written with that key (the first), for the equivalence check
    for answer, key in zip(answers, keys):
        if key is not None:
            written.setdefault(key, answer)
    representatives: list[str] = []
    cluster_of: dict[str, str] = {}
    for key in sorted(written):
        home = next((r for r in representatives if answers_equivalent(written[key], written[r])), None)
        if home is None:
            representatives.append(key)
            home = key
        cluster_of[key] = home
    return [None if key is None else cluster_of[key] for key in keys]
