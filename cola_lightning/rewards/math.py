"""Final-answer extraction and grading for math word problems (GSM8K, MATH, procedural arithmetic).

`extract_answer` finds the answer a response commits to; `score` compares it with a gold answer:
plain numbers exactly (1/2 == 0.5 == 18/36), everything else with math-verify (LaTeX, sets,
intervals, matrices, equations), after normalising away units, currency, percent and degree signs,
thousands separators and LaTeX spacing.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from cola_lightning.rewards.format import MATH_WORDS, stated_answer

# Thousands groups first so 1,234 stays whole; the lookbehinds keep "x2" and "5-3" from
# yielding "2" and "-3".
_NUMBER = re.compile(
    r"(?<![\w.)\]}])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
    r"|(?<![\w.)\]}])-?\.\d+"
)


def extract_answer(response: str) -> str | None:
    """The final answer of a model response, or None if it has none.

    Priority: the last `\\boxed{}`/`\\fbox{}`, the last `####` line, the last "The answer is ..."
    (case-insensitive, "the final answer is" too), the last `Answer:`/`A:` line, else the last
    number in the text (1,234 / -3 / 0.5 / 3/4).
    """
    if not isinstance(response, str):
        return None
    response = response.replace("\u2212", "-")  # the Unicode minus sign
    marked = stated_answer(response)
    if marked:
        return marked
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


_TEXT_CMD = r"\\(?:text|textrm|textbf|textit|mbox|mathrm|mathbf|emph)\s*"
_TRAILING_UNIT = re.compile(_TEXT_CMD + r"\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*$")
_SHORT_UNITS = {"cm", "mm", "km", "kg", "mg", "ft", "in", "yd", "mi", "lb", "lbs", "oz", "ml"}
_SHORT_UNITS |= {"m", "g", "s", "h", "hr", "min", "sq"}
# Words separated by required spaces: "[A-Za-z]+\s*" repeated would backtrack exponentially.
_TRAILING_WORDS = re.compile(r"(?<=[\d)\]}])\s+([A-Za-z]+\.?(?:\s+[A-Za-z]+\.?)*)(?:\^\{?\d\}?)?$")
_LEADING_WORDS = re.compile(r"^((?:[A-Za-z]+\s+)+)(?=[-.\d])")
_CHOICE = re.compile(r"\(?([A-Ea-e])\)?(?:[\s:.)]|$)")


def _is_unit_words(words: str) -> bool:
    """True for natural-language words after a number ("dollars", "sq ft"), not math ("pi")."""
    tokens = [token.rstrip(".").lower() for token in words.split()]
    return bool(tokens) and all(
        token not in MATH_WORDS and (len(token) >= 3 or token in _SHORT_UNITS) for token in tokens
    )


def _strip_text(answer: str) -> str:
    """Drop a trailing `\\text{ cm}` unit, then unwrap the remaining `\\text{...}` groups."""
    stripped = _TRAILING_UNIT.sub("", answer).strip()
    if stripped and stripped != answer:
        return _strip_text(stripped)
    unwrapped = re.sub(_TEXT_CMD + r"\{([^{}]*)\}", r"\1", answer)
    return unwrapped if unwrapped == answer else _strip_text(unwrapped)


def _strip_words(answer: str) -> str:
    """Drop words around a number: "about 18 dollars" -> "18" (but keep "2 pi", "3 or 4")."""
    trailing = _TRAILING_WORDS.search(answer)
    if trailing and _is_unit_words(trailing.group(1)):
        answer = answer[: trailing.start()].strip()
    leading = _LEADING_WORDS.match(answer)
    if leading and _is_unit_words(leading.group(1)):
        answer = answer[leading.end() :].strip()
    return answer


def normalize(answer: str) -> str:
    """An answer with formatting that never changes its value removed.

    Removes `$`, `\\(`/`\\[`, `\\left`/`\\right`, LaTeX spacing, currency, percent and degree
    signs, units (`\\text{ cm}`, "18 dollars"), thousands separators (1,234 / 10,\\!080), and
    rewrites `\\dfrac`/`\\tfrac` as `\\frac`.
    """
    s = answer.strip().replace("\\$", "").replace("$", "").replace("\u2212", "-")
    s = re.sub(r"\\[()\[\]]", "", s)
    s = re.sub(r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"(\d)(?:\{,\}|,\\!\s*)(?=\d{3}(?!\d))", r"\1,", s)
    s = re.sub(r"\\[!]|\\displaystyle", "", s)
    s = re.sub(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", "", s)
    s = re.sub(r"\\?%|\\percent", "", s)
    # "x=1 or x=-2" is the list "x=1, x=-2" (math-verify reads a list, not the word "or").
    s = re.sub(_TEXT_CMD + r"\{\s*(?:or|and)\s*\}|\s+(?:or|and)\s+", ", ", s)
    s = _strip_words(_strip_text(s).strip())
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return re.sub(r"\s+", " ", s).strip()


def _as_number(answer: str) -> Fraction | None:
    """A plain number (18, -0.5, .35, 3/4, \\frac{3}{4}, -\\frac34) as an exact fraction."""
    s = answer.replace(" ", "")
    frac = re.fullmatch(r"([-+]?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", s)
    if frac:
        sign, num1, num2, den1, den2 = frac.groups()
        s = f"{sign}{num1 or num2}/{den1 or den2}"
    match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+))(?:/(\d+))?", s)
    if not match:
        return None
    try:
        value = Fraction(Decimal(match.group(1)))
        return value / int(match.group(2)) if match.group(2) else value
    except (InvalidOperation, ZeroDivisionError, ValueError):
        return None


def _text_answer(answer: str) -> str | None:
    """A gold answer that is words ("Evelyn", "even", "(C)" -> "C"), lower-cased; else None."""
    choice = re.fullmatch(r"\(([A-E])\)", answer)
    if choice:
        return choice.group(1).lower()
    if re.fullmatch(r"[A-Za-z]{2,}(?: [A-Za-z]{2,})*", answer) and _is_unit_words(answer):
        return answer.lower()
    return None


def _text_equal(gold: str, pred: str) -> bool:
    """Compare with a word / multiple-choice gold: "(C)" accepts "C", "(C) 12" and "c"."""
    if len(gold) == 1:
        choice = _CHOICE.match(pred)
        return bool(choice) and choice.group(1).lower() == gold
    return pred.lower() == gold


# Inputs sympy could spend minutes or all memory on (9^{9^{9}}, 10^{1000000}, (10^9)!): those are
# compared as strings only, because math-verify runs here without its own timeout.
_TOO_HARD = re.compile(
    r"\^\s*\{[^{}]*\^"  # a power in an exponent: 9^{9^{9}}
    r"|\^\s*\(?\s*\d+\s*\)?\s*\^"  # 9^9^9
    r"|\^\s*\{?\s*\d{6,}"  # a six-digit exponent
    r"|\d{6,}!|[)}]!"  # factorials of big numbers or of expressions
)


def _symbolic_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict, with its signal-based timeouts off so it runs in any thread."""
    if len(gold) + len(pred) > 600 or _TOO_HARD.search(gold) or _TOO_HARD.search(pred):
        return False
    from math_verify import parse, verify  # sympy is slow to import: only when needed.

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


class _TimeoutNoticeFilter(logging.Filter):
    """Drops math-verify's "timeout is disabled" warning: timeouts are the caller's job here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutNoticeFilter())


def _numbers_equal(gold: Fraction, pred: Fraction) -> bool:
    """Exact, except that a gold with no finite decimal (1/3) accepts 6 significant digits."""
    if gold == pred:
        return True
    den = gold.denominator
    for prime in (2, 5):
        while den % prime == 0:
            den //= prime
    # An absolute tolerance would call 0.0000673 equal to 0.0000672: keep it relative.
    return den != 1 and abs(gold - pred) <= Fraction(1, 10**6) * abs(gold)


_EQUALS = re.compile(r"(?<![<>!=])=(?!=)")
_LIST = re.compile(r"[,;]|\\pm")


def answers_equal(gold: str, pred: str) -> bool:
    """Whether a predicted final answer equals a gold one (both as written, unnormalised)."""
    if len(gold) + len(pred) > 2000:  # no real final answer is this long
        return gold.strip() == pred.strip()
    gold_n, pred_n = normalize(gold), normalize(pred)
    if _EQUALS.search(pred_n) and not _EQUALS.search(gold_n) and not _LIST.search(pred_n):
        # "3 + 4 = 7" or "x = 7" answers 7; a gold equation ("y = 2x") keeps the whole pred.
        pred_n = _EQUALS.split(pred_n)[-1].strip()
    if not gold_n or not pred_n:
        return False
    if gold_n.replace(" ", "") == pred_n.replace(" ", ""):
        return True
    text = _text_answer(gold_n)
    if text is not None:
        return _text_equal(text, pred_n)
    gold_num, pred_num = _as_number(gold_n), _as_number(pred_n)
    if gold_num is not None and pred_num is not None:
        return _numbers_equal(gold_num, pred_num)
    return _symbolic_equal(gold_n, pred_n)


def score(response: str, reference: str | None) -> float:
    """1.0 if the response's final answer equals the gold `reference`, else 0.0; never raises.

    Args:
        response: model output.
        reference: the gold final answer (a MATH answer such as `\\frac{1}{2}` or a GSM8K number
            such as `1,234`); a full GSM8K solution ending in `#### N` works too.
    """
    try:
        if not isinstance(reference, str) or not reference.strip():
            return 0.0
        if "####" in reference or "\\boxed" in reference:
            reference = stated_answer(reference) or reference
        pred = extract_answer(response)
        return 1.0 if pred is not None and answers_equal(reference, pred) else 0.0
    except Exception:  # a grader must not crash training on odd text
        return 0.0
