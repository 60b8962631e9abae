"""The procedural Countdown task and its reward."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest

from cola_lightning.data.countdown import CountdownProblem, countdown_problems, random_expression
from cola_lightning.rewards.countdown import evaluate, extract_expression, score

NUMBERS = (3, 7, 25, 50)


def _reachable(values: list[Fraction]) -> set[Fraction]:
    """Every value reachable from some of `values` (each at most once) with + - * /."""
    found = set(values)
    for i, j in itertools.permutations(range(len(values)), 2):
        rest = [v for k, v in enumerate(values) if k not in (i, j)]
        a, b = values[i], values[j]
        results = [a + b, a - b, a * b] + ([a / b] if b else [])
        for result in results:
            found |= _reachable([*rest, result])
    return found


def test_problems_are_deterministic_and_seeded():
    assert countdown_problems(5, seed=3) == countdown_problems(5, seed=3)
    assert countdown_problems(5, seed=3) != countdown_problems(5, seed=4)


def test_problems_are_solvable():
    for problem in countdown_problems(15, seed=1):
        assert len(problem.numbers) == 4
        assert problem.target not in problem.numbers
        assert Fraction(problem.target) in _reachable([Fraction(n) for n in problem.numbers])


def test_problem_text():
    problem = CountdownProblem(numbers=NUMBERS, target=72)
    assert problem.question == (
        "Using the numbers [3, 7, 25, 50], each at most once, with + - * / and parentheses, "
        "write an expression equal to 72."
    )
    assert problem.answer == "72"


def test_num_numbers_and_bad_arguments():
    assert all(len(p.numbers) == 3 for p in countdown_problems(4, seed=0, num_numbers=3))
    with pytest.raises(ValueError, match="num_numbers"):
        countdown_problems(1, num_numbers=1)
    with pytest.raises(ValueError, match="count"):
        countdown_problems(-1)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("Answer: 50 + 25 - 3", 1.0),
        ("(50 + 25) - 3 = 72", 1.0),
        ("72 = 50 + 25 - 3", 1.0),
        ("Let me try: 50 + 25 = 75, too big.\nSo: 50 + 25 - 3 = 72.", 1.0),
        ("<answer> (25 - 7) * (50 / 25 + 2) </answer>", 0.0),  # 25 used twice
        ("<answer>(7 - 3) * 25 - 28</answer>", 0.0),  # 28 is not given
        ("\\boxed{25 \\times 3 - 3}", 0.0),  # 3 used twice
        ("\\boxed{50 + 7 \\times 3 - 25 + 7 \\times 3}", 0.0),  # 7 and 3 used twice
        ("\\boxed{50 + 25 - 3}", 1.0),
        ("The expression 3 * (50 - 25) - 3 = 72", 0.0),  # 3 used twice
        ("Answer: 50 + 25 - 7", 0.0),  # 68
        ("Answer: 50 + 25 - 3 - 0", 0.0),  # 0 is not given
        ("Answer: 72", 0.0),  # no expression
        ("Answer: 50 + 25 - 3.0", 0.0),  # a float is not one of the numbers
        ("Answer: 50 ** 1 + 22", 0.0),
        ("Answer: __import__('os').system('true') + 72", 0.0),
        ("Answer: 50 / (25 - 25) + 3", 0.0),
        ("", 0.0),
        ("no idea", 0.0),
    ],
)
def test_score(response, expected):
    assert score(response, "72", NUMBERS) == expected


def test_division_is_exact_and_the_tolerance_is_1e6():
    assert score("6 / (3 / 6)", "12", [3, 6, 6]) == 1.0
    assert score("(3 + 7 / 7) * 2", "8", [3, 7, 7, 2]) == 1.0
    assert score("10 / 3", "3.3333", [10, 3]) == 0.0
    assert score("10 / 3", "3.333333", [10, 3]) == 1.0


def test_repeated_numbers_are_allowed_as_often_as_given():
    assert score("5 * 5 + 5", "30", [5, 5, 5]) == 1.0
    assert score("5 * 5 + 5", "30", [5, 5]) == 0.0


def test_generated_expressions_use_every_number_once_and_score():
    rng = random.Random(0)
    built = 0
    for _ in range(40):
        numbers = tuple(rng.randint(1, 20) for _ in range(4))
        result = random_expression(rng, numbers)
        if result is None:
            continue
        expression, value = result
        built += 1
        assert sorted(evaluate(expression)[1]) == sorted(numbers)
        assert score(f"Answer: {expression}", str(value), numbers) == 1.0
        assert score(f"Answer: {expression}", str(value + 1), numbers) == 0.0
    assert built >= 20


def test_evaluate_rejects_code():
    assert evaluate("(1 + 2) * 3 / 4") == (Fraction(9, 4), [1, 2, 3, 4])
    for bad in ["abs(-3)", "2 ** 3", "7 // 2", "x + 1", "1 if 1 else 2", "(" * 400 + "1"]:
        with pytest.raises(ValueError):
            evaluate(bad)


def test_extract_expression():
    assert extract_expression("first 1 + 2, then\nAnswer: (3 + 4) * 5") == "(3 + 4) * 5"
    assert extract_expression("2 \\times 3 \\div 1 = 6") == "2 * 3 / 1 = 6"
    assert extract_expression("no arithmetic, only 42") is None


def test_score_never_raises():
    assert score("1 + 1", "not a number", [1, 1]) == 0.0
    assert score("1 + 1", "2", ["x"]) == 0.0  # type: ignore[list-item]
    assert score(None, "2", [1, 1]) == 0.0  # type: ignore[arg-type]
