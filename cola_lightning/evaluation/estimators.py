"""Estimators of sampled accuracy and their confidence intervals.

pass@k is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained
on Code"): from n samples of which c are correct, 1 - C(n - c, k) / C(n, k), the chance that k
samples drawn without replacement hold a correct one. maj@k votes over the first k samples'
extracted answers. Proportions get Wilson score intervals; means of per-prompt estimates (pass@k)
and perplexities get percentile bootstrap intervals over prompts or sequences.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples with c correct (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    # 1 - prod_{i = n-c+1}^{n} (1 - k / i), the numerically stable form of the ratio of binomials
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """Whether the most common answer among the first k samples is correct.

    Samples without an extracted answer (None) do not vote; ties go to the answer seen first.
    With no answer at all the vote fails.
    """
    if len(answers) != len(correct) or not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs k <= samples ({len(answers)}) and one score per answer.")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == top)
    return bool(correct[list(answers).index(winner)])


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sound near 0 and 1, unlike Wald)."""
    if n <= 0:
        raise ValueError("A confidence interval needs at least one trial.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of `statistic` over `values` (drawn with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("A confidence interval needs at least one value.")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(resamples, values.size))
    stats = np.array([statistic(values[row]) for row in draws])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def proportion(successes: Sequence[bool], confidence: float = 0.95) -> dict[str, float]:
    """A proportion with its Wilson interval, as results record it."""
    n, hits = len(successes), int(sum(bool(s) for s in successes))
    low, high = wilson_interval(hits, n, confidence)
    return {"value": hits / n, "ci_low": low, "ci_high": high, "n": n}


def mean_with_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """A mean with its bootstrap interval, as results record it."""
    low, high = bootstrap_interval(values, confidence=confidence)
    return {"value": float(np.mean(values)), "ci_low": low, "ci_high": high, "n": len(values)}
