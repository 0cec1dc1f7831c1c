"""Final-answer extraction and equivalence for math tasks.

Extraction (the CAT evaluation protocol, cat_paper.md §9): the last ``\\boxed{...}`` (nested braces balanced,
escaped ``\\{`` ignored; the brace-less ``\\boxed 2`` form too), else the last number in the text.
Equivalence: numbers compare within a 1e−4 relative tolerance; anything else goes through math-verify, then a
normalised string comparison. The *answer key* used for majority vote is a canonical string of the extracted answer.
"""

from __future__ import annotations

import logging
import re
import threading

from math_verify import parse, verify

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
NUMERIC_TOLERANCE = 1e-4
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|\\displaystyle|\$|\\text\{\s*\}|\s+")

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


def extract_answer(text: str) -> str | None:
    """The last boxed expression, else the last number, else None."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return last_number(text)


def as_number(answer: str) -> float | None:
    """``answer`` as a float if it is a plain number (commas, a leading $, a trailing . or % allowed)."""
    cleaned = _LATEX_NOISE.sub("", answer).replace(",", "").rstrip(".%")
    cleaned = cleaned.removeprefix("\\$")
    try:
        return float(cleaned)
    except ValueError:
        return None


def answer_key(answer: str | None) -> str | None:
    """Canonical key for voting: numbers as their shortest exact form ("3.0" → "3", "1,000" → "1000")."""
    if answer is None:
        return None
    number = as_number(answer)
    if number is not None:
        return str(int(number)) if number.is_integer() else repr(round(number, 6))
    key = _LATEX_NOISE.sub("", answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return key or None


def _math_verify_equal(pred: str, gold: str) -> bool:
    # math-verify's timeouts use signal.alarm, which only works in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_equivalent(pred: str | None, gold: str) -> bool:
    """True when the extracted prediction denotes the gold answer."""
    if pred is None:
        return False
    a, b = as_number(pred), as_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= NUMERIC_TOLERANCE * max(1.0, abs(b))
    key = answer_key(pred)
    if key is None:  # only LaTeX noise: nothing was answered (and it must not match an equally empty gold)
        return False
    if key == answer_key(gold):
        return True
    try:
        return _math_verify_equal(pred, gold)
    except Exception:  # noqa: BLE001  (a sympy failure on a malformed answer means "not equal", never a crash)
        return False
