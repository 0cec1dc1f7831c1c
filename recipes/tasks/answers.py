"""Final-answer extraction, equivalence and answer clusters for math tasks.

Extraction, flexible (the default; the CAT evaluation protocol): the last ``\\boxed{...}`` (nested braces balanced,
escaped ``\\{`` ignored; the brace-less ``\\boxed 2`` form too), else the last number in the text.
Extraction, strict (as lm-evaluation-harness's strict-match filters): the last ``\\boxed{...}``, else the last
explicit final-answer statement ("The answer is X", "The final answer is X", "Final answer: X", "#### X"), else,
where the prompt asks for the answer alone, a completion that is nothing but a number; no fallback to the last
number, and a completion cut off at the token limit has no answer.

Equivalence: answers that denote real numbers — plain numbers (thousands commas, ``\\$``, ``%``/``\\%`` and a
trailing ``\\text{unit}`` allowed: "18\\%" is 18, as GSM8K writes percentages) or constant expressions such as
``\\frac{1}{2}`` or ``2\\sqrt{2}`` — compare within a 1e−4 relative tolerance and never go further; anything else
(equations, sets, intervals, expressions in x, text) by its normalised string, then math-verify. The *answer key*
is a canonical string of an extracted answer; ``cluster_keys`` merges the keys of one pool's answers that are
equivalent, so that a majority vote counts ``\\frac{1}{2}`` and ``0.5`` (or ``x=2`` and ``2``) as one answer.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence

import sympy
from math_verify import parse, verify

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
NUMERIC_TOLERANCE = 1e-4
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|\\displaystyle|\$|\\text\{\s*\}|\s+")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")  # commas only as thousands
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


def as_number(answer: str) -> float | None:
    """``answer`` as a float if it is a plain number, else None.

    Allowed around the digits: thousands commas (1,200 but not 1,2, which is a pair), a leading ``$`` or ``\\$``,
    a trailing ``.``, ``%`` or ``\\%`` (the number of percent: "18\\%" is 18) and a trailing ``\\text{unit}``.
    """
    cleaned = _LATEX_NOISE.sub("", answer.replace("\\$", "").replace("\\%", "%"))
    cleaned = _UNIT.sub("", cleaned).rstrip(".,").removesuffix("%")
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None
    return float(cleaned.replace(",", ""))


def answer_key(answer: str | None) -> str | None:
    """Canonical key of one answer: numbers as their shortest exact form ("3.0" → "3", "\\$1,200" → "1200")."""
    if answer is None:
        return None
    number = as_number(answer)
    if number is not None:
        return str(int(number)) if number.is_integer() else repr(round(number, 6))
    key = _LATEX_NOISE.sub("", answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return key or None


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _parsed(expression: str, timeout: int | None):
    return parse(f"${expression}$", parsing_timeout=timeout)


@functools.lru_cache(maxsize=65536)
def _constant(expression: str, timeout: int | None) -> float | None:
    """The real number a constant expression (``\\frac{1}{2}``, ``2\\sqrt{2}``, ``7\\pi``) evaluates to, else None."""
    try:
        parsed = _parsed(expression, timeout)
        expr = parsed[0] if parsed else None
        if not isinstance(expr, sympy.Expr) or not expr.is_number:
            return None
        value = complex(expr.evalf())
    except Exception:  # noqa: BLE001  (sympy cannot evaluate it: not a plain constant)
        return None
    return value.real if value.imag == 0 and math.isfinite(value.real) else None


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


def real_value(answer: str) -> float | None:
    """The real number ``answer`` denotes: a plain number (``as_number``), else a constant expression, else None."""
    number = as_number(answer)
    return number if number is not None else _constant(answer, _timeout())


def _math_verify_equal(pred: str, gold: str) -> bool:
    timeout = _timeout()
    gold_parsed, pred_parsed = _parsed(gold, timeout), _parsed(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_equivalent(pred: str | None, gold: str) -> bool:
    """True when the extracted prediction denotes the gold answer.

    Two answers that denote real numbers (``real_value``) are equal within ``NUMERIC_TOLERANCE`` relative and are
    never passed to math-verify (whose leniency, e.g. 18% equal to both 18 and 0.18, would merge different numbers);
    a real number never equals an expression in free symbols or an interval; otherwise equal canonical keys, else
    math-verify.
    """
    if pred is None:
        return False
    key = answer_key(pred)
    if key is None:  # only LaTeX noise: nothing was answered (and it must not match an equally empty gold)
        return False
    a, b = real_value(pred), real_value(gold)
    if a is not None and b is not None:
        return abs(a - b) <= NUMERIC_TOLERANCE * max(1.0, abs(b))
    if (a is None) != (b is None) and _never_a_number(pred if a is None else gold, _timeout()):
        return False
    if key == answer_key(gold):
        return True
    try:
        return _math_verify_equal(pred, gold)
    except Exception:  # noqa: BLE001  (a sympy failure on a malformed answer means "not equal", never a crash)
        return False


def cluster_keys(answers: Sequence[str | None]) -> list[str | None]:
    """Answer keys of one pool (a problem's samples, a GRPO group) with equivalent answers merged.

    Each answer joins the first earlier cluster whose first answer it is equivalent to (``answers_equivalent``,
    the relation the correctness check uses, with that first answer as the reference), else opens a new cluster;
    every member gets the canonical ``answer_key`` of its cluster's first answer. Equal canonical keys share a
    cluster without a check, and each pair of distinct keys is checked at most once, so a pool costs at most one
    math-verify call per (distinct answer, cluster) pair. None (unparsed) stays None.
    """
    cluster_of_key: dict[str, int] = {}  # canonical key -> cluster index
    clusters: list[tuple[str, str]] = []  # (first answer, its canonical key)
    keys: list[str | None] = []
    for answer in answers:
        key = answer_key(answer)
        if key is None:
            keys.append(None)
            continue
        if key not in cluster_of_key:
            cluster_of_key[key] = next(
                (j for j, (first, _) in enumerate(clusters) if answers_equivalent(answer, first)), len(clusters))
            if cluster_of_key[key] == len(clusters):
                clusters.append((answer, key))
        keys.append(clusters[cluster_of_key[key]][1])
    return keys
