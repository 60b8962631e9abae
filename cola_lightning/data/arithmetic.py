"""A procedural corpus of multi-step arithmetic word problems with worked solutions.

Generated from a seed, no files: the quickstart trains on it, and later stages use the same
problems as prompt/response pairs and as a task with verifiable answers, so every stage tells one
story on one kind of text.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ("Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Ines", "Kai", "Sara", "Tom")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "coins", "shells", "cards", "stamps")


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, a step-by-step solution ending in the answer, the answer."""

    question: str
    solution: str
    answer: int

    @property
    def text(self) -> str:
        """Question and solution as one training document."""
        return f"Question: {self.question}\nAnswer: {self.solution}"


# An operation turns (rng, total, item) into (question clause, solution clause, new total).
Operation = Callable[[random.Random, int, str], tuple[str, str, int]]


def _buy(rng: random.Random, total: int, item: str) -> tuple[str, str, int]:
    k = rng.randint(2, 20)
    return (
        f"buys {k} more {item}",
        f"After buying {k} more: {total} + {k} = {total + k}.",
        total + k,
    )


def _give(rng: random.Random, total: int, item: str) -> tuple[str, str, int]:
    k = rng.randint(1, max(1, total - 1))
    return (
        f"gives {k} {item} to a friend",
        f"After giving away {k}: {total} - {k} = {total - k}.",
        total - k,
    )


def _boxes(rng: random.Random, total: int, item: str) -> tuple[str, str, int]:
    boxes, each = rng.randint(2, 6), rng.randint(2, 9)
    gained = boxes * each
    return (
        f"gets {boxes} boxes with {each} {item} in each",
        f"The boxes hold {boxes} * {each} = {gained}, so {total} + {gained} = {total + gained}.",
        total + gained,
    )


def _double(rng: random.Random, total: int, item: str) -> tuple[str, str, int]:
    return (
        f"doubles the number of {item}",
        f"Doubling: {total} * 2 = {total * 2}.",
        total * 2,
    )


OPERATIONS: tuple[Operation, ...] = (_buy, _give, _boxes, _double)


def make_problem(rng: random.Random, min_steps: int = 2, max_steps: int = 4) -> Problem:
    """One problem with between `min_steps` and `max_steps` operations after the start."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = total = rng.randint(3, 30)
    clauses, steps = [], [f"{name} starts with {start} {item}."]
    for _ in range(rng.randint(min_steps, max_steps)):
        clause, step, total = rng.choice(OPERATIONS)(rng, total, item)
        clauses.append(clause)
        steps.append(step)
    question = (
        f"{name} has {start} {item}. {name} "
        + ", then ".join(clauses)
        + f". How many {item} does {name} have now?"
    )
    steps.append(f"The answer is {total}.")
    return Problem(question=question, solution="\n".join(steps), answer=total)


def arithmetic_problems(
    count: int, seed: int = 0, min_steps: int = 2, max_steps: int = 4
) -> list[Problem]:
    """`count` problems, the same for the same seed on every machine."""
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"Need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}.")
    rng = random.Random(seed)
    return [make_problem(rng, min_steps, max_steps) for _ in range(count)]
