"""Countdown reward: does the response's final expression reach the target with the given numbers?

The expression is parsed with `ast` and evaluated by walking the tree over exact fractions: only
numbers, + - * / and parentheses are accepted, so nothing in a response is ever executed.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from cola_lightning.rewards.format import stated_answer

# Runs of arithmetic within a line: digits, spaces, + - * / ( ) and "=" ("25 + 50 - 3 = 72").
_ARITHMETIC = re.compile(r"[\d \t+\-*/().=]+")
_HAS_OPERATOR = re.compile(r"\d[ \t)]*[-+*/][ \t(]*\d")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_SYMBOLS = {"\\times": "*", "\\cdot": "*", "×": "*", "·": "*", "\\div": "/", "÷": "/"}
_SYMBOLS |= {"−": "-", "\\left": "", "\\right": "", "$": "", "\\(": "", "\\)": ""}
_BINARY = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}
_MAX_LENGTH = 300  # longer "expressions" are not answers, and deep nesting strains `ast`


def _runs(text: str) -> list[str]:
    """The arithmetic runs of `text` that use an operator, in order."""
    for symbol, plain in _SYMBOLS.items():
        text = text.replace(symbol, plain)
    runs = [run.strip(" .=\t") for run in _ARITHMETIC.findall(text)]
    return [run for run in runs if _HAS_OPERATOR.search(run)]


def extract_expression(response: str) -> str | None:
    """The last arithmetic expression of a response, or None.

    Looks, in order, in the last `<answer>...</answer>`, the stated answer (`\\boxed{}`,
    `Answer:` line, ...), then the whole text, and takes the last run of arithmetic there; an
    "=" chain such as `25 + 50 - 3 = 72` comes back whole.
    """
    tags = _ANSWER_TAG.findall(response)
    for source in (tags[-1] if tags else "", stated_answer(response) or "", response):
        runs = _runs(source)
        if runs:
            return runs[-1]
    return None


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """The exact value of an allowed expression tree, appending every number it uses."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, used)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        # Evaluate both sides before dividing so every number used is recorded.
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        return left / right  # ZeroDivisionError: not a valid expression
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"not allowed in a Countdown expression: {type(node).__name__}")


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """Value of an arithmetic expression and the numbers it uses, without `eval`.

    Raises:
        ValueError: anything but integers, + - * / and parentheses; a division by zero; or an
            expression over 300 characters.
    """
    if len(expression) > _MAX_LENGTH:
        raise ValueError(f"expression longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        used: list[int] = []
        return _evaluate(tree, used), used
    except (SyntaxError, ZeroDivisionError, RecursionError) as error:
        raise ValueError(f"not a valid expression: {expression!r}") from error


def _solves(expression: str, target: Fraction, allowed: Counter[int]) -> bool:
    """Whether `expression` uses only the allowed numbers and equals the target."""
    try:
        value, used = evaluate(expression)
    except ValueError:
        return False
    return not Counter(used) - allowed and abs(value - target) <= Fraction(1, 10**6)


def score(response: str, reference: str, numbers: Sequence[int]) -> float:
    """1.0 if the response's last expression reaches `reference` with `numbers`, else 0.0.

    Each number may be used at most as often as it appears in `numbers`, and no other number at
    all. In an "=" chain (`25 + 50 - 3 = 72`) any side that is a valid solution counts. Never
    raises.

    Args:
        response: model output.
        reference: the target, as text ("72").
        numbers: the numbers the puzzle gives.
    """
    try:
        target = Fraction(str(reference).strip())
        allowed = Counter(int(n) for n in numbers)
        expression = extract_expression(response)
        if expression is None:
            return 0.0
        sides = expression.split("=")
        return 1.0 if any(_solves(side, target, allowed) for side in sides if side.strip()) else 0.0
    except Exception:  # a reward must not crash training on odd text
        return 0.0
