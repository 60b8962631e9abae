"""A seeded procedural Countdown task: reach a target from given numbers with + - * /.

The CoLA paper's "enhanced thinking" experiment trains on this puzzle. Each target is built from a
random expression over all the numbers, so every problem has at least one solution; intermediate
results stay positive integers, as in the game show.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_OPS = ("+", "-", "*", "/")


@dataclass(frozen=True)
class CountdownProblem:
    """The numbers to use (each at most once) and the target to reach."""

    numbers: tuple[int, ...]
    target: int

    @property
    def question(self) -> str:
        """The puzzle in words."""
        return (
            f"Using the numbers {list(self.numbers)}, each at most once, with + - * / and "
            f"parentheses, write an expression equal to {self.target}."
        )

    @property
    def answer(self) -> str:
        """The target as text: the gold answer a reward compares with."""
        return str(self.target)


def _combine(rng: random.Random, a: tuple[str, int], b: tuple[str, int]) -> tuple[str, int] | None:
    """`a op b` for a random operator that keeps the value a positive integer, or None."""
    (left, x), (right, y) = a, b
    for op in rng.sample(_OPS, len(_OPS)):
        if op == "+":
            value = x + y
        elif op == "-" and x > y:
            value = x - y
        elif op == "*":
            value = x * y
        elif op == "/" and y > 1 and x % y == 0:
            value = x // y
        else:
            continue
        return f"({left} {op} {right})", value
    return None


def random_expression(rng: random.Random, numbers: tuple[int, ...]) -> tuple[str, int] | None:
    """A random expression using every number once, and its value; None on a dead end."""
    terms = [(str(n), n) for n in numbers]
    while len(terms) > 1:
        # Joining two random terms again and again gives every bracketing shape.
        i, j = rng.sample(range(len(terms)), 2)
        joined = _combine(rng, terms[i], terms[j])
        if joined is None:
            return None
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [joined]
    expression, value = terms[0]
    return expression[1:-1] if expression.startswith("(") else expression, value


def _make_problem(
    rng: random.Random, num_numbers: int, max_number: int, max_target: int
) -> CountdownProblem:
    """Draw numbers and an expression until the target is in range and not one of the numbers."""
    while True:
        numbers = tuple(rng.randint(1, max_number) for _ in range(num_numbers))
        built = random_expression(rng, numbers)
        if built and 1 <= built[1] <= max_target and built[1] not in numbers:
            return CountdownProblem(numbers=numbers, target=built[1])


def countdown_problems(
    count: int,
    seed: int = 0,
    num_numbers: int = 4,
    max_number: int = 50,
    max_target: int = 1000,
) -> list[CountdownProblem]:
    """`count` solvable problems, the same for the same seed on every machine.

    Args:
        count: number of problems.
        seed: random seed.
        num_numbers: numbers per problem (at least 2).
        max_number: the numbers are drawn from 1..max_number.
        max_target: targets stay in 1..max_target.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    if num_numbers < 2:
        raise ValueError(f"num_numbers must be >= 2, got {num_numbers}.")
    if max_number < 2 or max_target < 3:
        raise ValueError(
            f"Need max_number >= 2 and max_target >= 3, got {max_number}, {max_target}."
        )
    rng = random.Random(seed)
    return [_make_problem(rng, num_numbers, max_number, max_target) for _ in range(count)]
