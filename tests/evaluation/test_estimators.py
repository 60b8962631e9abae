"""pass@k, maj@k and the intervals against hand-computed cases."""

import math
import random

import pytest

from cola_lightning.evaluation.estimators import (
    bootstrap_interval,
    majority_at_k,
    pass_at_k,
    proportion,
    wilson_interval,
)


def test_pass_at_k_hand_computed():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is c / n
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 hold one of the 2 correct
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


def test_pass_at_k_is_the_chance_that_k_draws_hold_a_correct_one():
    rng = random.Random(0)
    samples = [True, False, False, True, False, False]
    hits = sum(any(rng.sample(samples, 3)) for _ in range(20000))
    assert hits / 20000 == pytest.approx(pass_at_k(6, 2, 3), abs=0.01)


def test_majority_at_k_hand_computed():
    answers = ["4", "5", "5", None, "4", "4"]
    correct = [True, False, False, False, True, True]
    assert majority_at_k(answers, correct, 1)  # "4"
    assert not majority_at_k(answers, correct, 3)  # "5" twice
    assert majority_at_k(answers, correct, 2)  # tie "4"/"5": first seen wins
    assert not majority_at_k(answers, correct, 4)  # None does not vote: "5" still leads
    assert majority_at_k(answers, correct, 6)  # "4" three times
    assert not majority_at_k([None, None], [False, False], 2)


def test_wilson_interval_of_a_known_proportion():
    # 8 of 10 at 95%: the textbook interval (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    result = proportion([True] * 8 + [False] * 2)
    assert result["value"] == 0.8 and result["n"] == 10


def test_wilson_interval_covers_the_true_proportion_about_95_percent_of_the_time():
    rng = random.Random(1)
    p, n, trials = 0.3, 50, 2000
    covered = 0
    for _ in range(trials):
        low, high = wilson_interval(sum(rng.random() < p for _ in range(n)), n)
        covered += low <= p <= high
    assert covered / trials == pytest.approx(0.95, abs=0.02)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_data():
    rng = random.Random(2)
    small = [rng.gauss(1.0, 1.0) for _ in range(30)]
    large = [rng.gauss(1.0, 1.0) for _ in range(600)]
    low_s, high_s = bootstrap_interval(small)
    low_l, high_l = bootstrap_interval(large)
    assert low_s < sum(small) / 30 < high_s
    assert (high_l - low_l) < (high_s - low_s) / 3
    # The 95% interval of a mean of N(1, 1) draws is about +-1.96 / sqrt(n).
    assert high_l - low_l == pytest.approx(2 * 1.96 / math.sqrt(600), rel=0.15)
