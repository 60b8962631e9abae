"""The math grader: answer extraction, equivalence, and real GSM8K / MATH500 rows."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from cola_lightning.rewards import format as format_reward
from cola_lightning.rewards.math import extract_answer, normalize, score

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

# (response, gold reference, expected score)
CASES = [
    # integers, negatives, GSM8K style
    ("The answer is 18.", "18", 1.0),
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", 1.0),
    ("So she has 180 apples. The answer is 180.", "18", 0.0),
    ("The answer is 18.", "180", 0.0),
    ("The answer is -5.", "-5", 1.0),
    ("The answer is 5.", "-5", 0.0),
    ("The temperature falls to -12 by night", "-12", 1.0),
    # thousands separators, decimals, trailing zeros
    ("Answer: 1,234", "1234", 1.0),
    ("The total is 1234.", "1,234", 1.0),
    ("The answer is $1,234.50.", "1234.5", 1.0),
    ("The answer is 18.00", "18", 1.0),
    ("The answer is 18.5", "18", 0.0),
    ("\\boxed{10080}", "10,\\!080", 1.0),
    ("\\boxed{11,111,111,100}", "11,\\! 111,\\! 111,\\! 100", 1.0),
    ("\\boxed{0.35625}", ".35625", 1.0),
    ("\\boxed{0.0000673}", ".0000672", 0.0),
    ("\\boxed{3.21}", "3.21", 1.0),
    # units, currency, percent, degrees
    ("The answer is 18 dollars.", "18", 1.0),
    ("The answer is $18.", "18", 1.0),
    ("\\boxed{\\$18}", "18", 1.0),
    ("\\boxed{\\$32,348}", "\\$32,\\!348", 1.0),
    ("The answer is 18 cm.", "18", 1.0),
    ("\\boxed{18 \\text{ cm}}", "18", 1.0),
    ("\\boxed{5.4}", "5.4 \\text{ cents}", 1.0),
    ("\\boxed{864}", "864 \\mbox{ inches}^2", 1.0),
    ("\\boxed{15 \\text{ cm}^2}", "15\\mbox{ cm}^2", 1.0),
    ("\\boxed{25\\%}", "25", 1.0),
    ("The answer is 25%.", "25\\%", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{90}", "90^\\circ", 1.0),
    ("\\boxed{30^{\\circ}}", "30^\\circ", 1.0),
    ("\\boxed{40^\\circ}", "30^\\circ", 0.0),
    # fractions: 1/2 == 0.5 == \frac{1}{2} == \dfrac12
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("The answer is 1/2.", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\tfrac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\frac{2}{4}}", "\\frac12", 1.0),
    ("\\boxed{2}", "\\frac{1}{2}", 0.0),
    ("The answer is 1/2.", "2", 0.0),
    ("The answer is 3/4.", "0.75", 1.0),
    ("\\boxed{-\\frac{3}{8}}", "-\\frac{3}{8}", 1.0),
    ("\\boxed{\\frac{3}{8}}", "-\\frac{3}{8}", 0.0),
    ("\\boxed{\\frac{9}{5}}", "1\\frac{4}{5}", 1.0),
    ("\\boxed{0.3333333}", "\\frac{1}{3}", 1.0),
    ("\\boxed{0.33}", "\\frac{1}{3}", 0.0),
    ("\\boxed{\\frac{17}{50}}", "\\dfrac{17}{50}", 1.0),
    # LaTeX expressions
    ("\\boxed{10\\sqrt{2}}", "10\\sqrt{2}", 1.0),
    ("\\boxed{\\sqrt{200}}", "10\\sqrt{2}", 1.0),
    ("\\boxed{10\\sqrt{3}}", "10\\sqrt{2}", 0.0),
    ("\\boxed{3 \\sqrt{5}}", "3\\sqrt5", 1.0),
    ("\\boxed{2\\pi}", "2\\pi", 1.0),
    ("\\boxed{\\pi}", "2\\pi", 0.0),
    ("\\boxed{6-5i}", "6 - 5i", 1.0),
    ("\\boxed{2(k+1)}", "2k+2", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{\\sqrt{3}}{3}", 1.0),
    ("\\boxed{\\frac{1}{\\sqrt{3}}}", "\\frac{\\sqrt{3}}{3}", 1.0),
    ("\\boxed{y = 2x + 3}", "y = 2x + 3", 1.0),
    ("\\boxed{x=5}", "5", 1.0),
    ("\\boxed{5}", "x=5", 1.0),
    # tuples, sets, intervals, matrices
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\frac{\\pi}{2})", 1.0),
    ("\\boxed{(3,-1)}", "(3, -1)", 1.0),
    ("\\boxed{(-1, 3)}", "(3, -1)", 0.0),
    ("\\boxed{-2, 1}", "1,-2", 1.0),
    ("\\boxed{(3,4]}", "(3,4]", 1.0),
    ("\\boxed{[3,4]}", "(3,4]", 0.0),
    ("\\boxed{(-\\infty, 0]}", "(-\\infty,0]", 1.0),
    ("\\boxed{[-2, 7]}", "x \\in [-2,7]", 1.0),
    ("\\boxed{(0, 9) \\cup (9, 36)}", "(0,9) \\cup (9,36)", 1.0),
    ("\\boxed{1 \\pm \\sqrt{19}}", "1 \\pm \\sqrt{19}", 1.0),
    ("\\boxed{1+\\sqrt{19}}", "1 \\pm \\sqrt{19}", 0.0),
    ("\\boxed{18, 19}", "18", 0.0),
    (
        "\\boxed{\\begin{pmatrix} \\frac15 \\\\ -\\frac{18}{5} \\end{pmatrix}}",
        "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
        1.0,
    ),
    (
        "\\boxed{\\begin{pmatrix} 1/5 \\\\ 18/5 \\end{pmatrix}}",
        "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
        0.0,
    ),
    # words, multiple choice, bases
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1.0),
    ("The answer is (C).", "\\text{(C)}", 1.0),
    ("\\boxed{C}", "\\text{(C)}", 1.0),
    ("\\boxed{B}", "\\text{(C)}", 0.0),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1.0),
    ("The answer is Evelyn.", "\\text{Evelyn}", 1.0),
    ("\\boxed{Navin}", "\\text{Evelyn}", 0.0),
    ("\\boxed{52_8}", "52_8", 1.0),
    ("\\boxed{4210_{5}}", "4210_{5}", 1.0),
    # boxed: nesting, \fbox, several (last wins), priority over other forms
    ("First guess \\boxed{5}, corrected: \\boxed{7}", "7", 1.0),
    ("First guess \\boxed{5}, corrected: \\boxed{7}", "5", 0.0),
    ("\\fbox{42}", "42", 1.0),
    ("$\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}", 1.0),
    ("18 + 0 = 18, so the total is \\boxed{20}", "18", 0.0),
    ("The answer is 5. Wait, recheck: \\boxed{7}", "5", 0.0),
    ("Done: \\boxed{7} and then \\boxed{}", "7", 1.0),
    # ####, "The answer is", Answer:/A:, priorities
    ("The answer is 5.\n#### 6", "6", 1.0),
    ("#### Step 1\nShe buys 3 and 2.\n#### 5", "5", 1.0),
    ("Answer: 5\nOn reflection the answer is 6.", "6", 1.0),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac34", 1.0),
    ("THE ANSWER IS 12", "12", 1.0),
    ("So the final answer is:\n\n$$42$$", "42", 1.0),
    ("The answer is 18 because 9 * 2 = 18.", "18", 1.0),
    ("The answer is approximately 18.", "18", 1.0),
    ("The answer is 3.14.", "3.14", 1.0),
    ("**Answer:** 42", "42", 1.0),
    ("Answer: 42 apples", "42", 1.0),
    ("Q: How many?\nA: 42", "42", 1.0),
    ("What the answer is. First, 3 + 4 = 7", "7", 1.0),
    ("Let me check my answer: 3 + 4 = 7. Yes.", "7", 1.0),
    ("The answer is 18, not 20.", "18", 1.0),
    ("The answer is not 5. The total is 7", "7", 1.0),
    ("A: Janet has 16 eggs. She eats 3 and bakes 4, so 16-3-4=9 and 9*2=18", "18", 1.0),
    ("The answer is \u22125.", "-5", 1.0),
    # equations, lists, powers
    ("\\boxed{x=1 \\text{ or } x=-2}", "1,-2", 1.0),
    ("\\boxed{x=1 \\text{ or } x=-2}", "-2", 0.0),
    ("\\boxed{f(x) = 2x+2}", "2x+2", 1.0),
    ("\\boxed{0}", "5x - 7y + 11z + 4 = 0", 0.0),
    ("\\boxed{x \\le 5}", "5", 0.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    ("\\boxed{-2x}", "y = -2x", 1.0),
    ("\\boxed{2x}", "y = -2x", 0.0),
    ("\\boxed{\\textbf{(C)} 12}", "\\text{(C)}", 1.0),
    ("\\boxed{East}", "\\text{east}", 1.0),
    ("\\boxed{2416_8}", "2516_8", 0.0),
    ("\\boxed{10\\,000}", "10000", 1.0),
    ("\\boxed{\\frac{1}{2}}", "50\\%", 0.0),
    # last-number fallback
    ("She has 3 apples and buys 4 more, so 7 in total", "7", 1.0),
    ("She has 3 apples and buys 4 more, so 7 in total, times 10 is 70", "7", 0.0),
    # reference forms
    ("The answer is 18.", "Janet sells 9 eggs at $2 each.\n#### 18", 1.0),
    ("The answer is 18.", None, 0.0),
    ("The answer is 18.", "", 0.0),
    # empty and garbage responses
    ("", "18", 0.0),
    ("no idea", "18", 0.0),
    ("\\boxed{", "18", 0.0),
    ("\x00\x01 \U0001f4a5 }}{{ $$ \\\\", "18", 0.0),
    ("\\boxed{9^{9^{9}}}", "3", 0.0),
]


def test_the_table_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("response, reference, expected", CASES)
def test_score(response, reference, expected):
    assert score(response, reference) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("\\boxed{\\frac{a}{\\sqrt{b}}} later", "\\frac{a}{\\sqrt{b}}"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\boxed 5", "5"),
        ("x\n#### 1,234\n", "1,234"),
        ("The Final Answer Is $7$.", "7"),
        ("Answer: (B)", "(B)"),
        ("A: 12", "12"),
        ("it costs $1,234.50 in total", "1,234.50"),
        ("from 3 to -4.5", "-4.5"),
        ("5-3", "3"),
        ("about 3/4 of them", "3/4"),
        ("nothing here", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("$18$", "18"),
        ("\\$1,234", "1234"),
        ("10,\\!080", "10080"),
        ("\\left( 1, 2 \\right)", "( 1, 2 )"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("45^{\\circ}", "45"),
        ("12\\%", "12"),
        ("7 \\text{ cm}", "7"),
        ("\\text{Evelyn}", "Evelyn"),
        ("18 square feet", "18"),
        ("2 \\pi", "2 \\pi"),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("So \\boxed{4}.", 1.0),
        ("#### 4", 1.0),
        ("The answer is 4.", 1.0),
        ("Answer: 4", 1.0),
        ("2 + 2 = 4", 0.0),
        ("#### Step 1", 0.0),
        ("", 0.0),
    ],
)
def test_format_score(response, expected):
    assert format_reward.score(response) == expected


def test_score_never_raises_on_odd_types():
    assert score(None, "1") == 0.0  # type: ignore[arg-type]
    assert score("\\boxed{1}", 1) == 0.0  # type: ignore[arg-type]


def test_score_works_off_the_main_thread():
    # math-verify's default signal-based timeouts raise outside the main thread.
    results: list[float] = []
    cases = [("\\boxed{\\sqrt{200}}", "10\\sqrt{2}"), ("\\boxed{(3,4]}", "(3,4]")]
    worker = threading.Thread(target=lambda: results.extend(score(r, g) for r, g in cases))
    worker.start()
    worker.join(timeout=60)
    assert results == [1.0, 1.0]


def _rows(name: str, count: int) -> list[dict]:
    path = SHARED_DATA / name
    assert path.is_file(), f"{path} is missing: the tests need ../shared/data beside the repo"
    with path.open() as f:
        return [json.loads(line) for line in itertools.islice(f, count)]


def test_math500_solutions_score_their_answers():
    rows = _rows("math500_test.jsonl", 50)
    misses = [(r["unique_id"], r["answer"]) for r in rows if score(r["solution"], r["answer"]) < 1]
    print("MATH500 misses:", misses)
    assert len(rows) - len(misses) >= 48


def test_gsm8k_solutions_score_their_answers():
    rows = _rows("gsm8k_test.jsonl", 50)
    golds = [row["answer"].split("####")[-1].strip() for row in rows]
    assert all(score(row["answer"], gold) == 1.0 for row, gold in zip(rows, golds, strict=True))
    # The gold is the last number of the solution, so a wrong number must not match it.
    assert not any(score(f"#### {int(gold) + 1}", gold) for gold in golds)
