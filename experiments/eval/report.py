"""Prints the evaluation results of experiments/eval/results/*.json as a markdown table.

    python experiments/eval/report.py
    python experiments/eval/report.py --paired BEFORE AFTER   # two result stems, same problems

`--paired` compares two runs problem by problem (greedy success, and the fraction of sampled
answers that are right, i.e. pass@1): the mean difference with a paired bootstrap 95% interval,
and how many problems greedy decoding gained and lost. Pairing removes the problems' own
difficulty from the noise, so it resolves smaller changes than two separate intervals.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def table() -> None:
    print("| run | metric | value | 95% interval | n |")
    print("|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("*.json")):
        results = json.loads(path.read_text())
        for name, figure in results["metrics"].items():
            print(
                f"| {path.stem} | {name} | {figure['value']:.3f} | "
                f"[{figure['ci_low']:.3f}, {figure['ci_high']:.3f}] | {figure['n']} |"
            )


def bootstrap(differences: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the resampled mean difference."""
    rng = random.Random(seed)
    means = sorted(
        statistics.fmean(rng.choices(differences, k=len(differences))) for _ in range(draws)
    )
    return means[int(0.025 * draws)], means[int(0.975 * draws)]


def paired(before: str, after: str) -> dict:
    runs = [
        json.loads((RESULTS / f"{stem}.json").read_text())["records"] for stem in (before, after)
    ]
    if [r["prompt"] for r in runs[0]] != [r["prompt"] for r in runs[1]]:
        raise ValueError(f"{before} and {after} were not run on the same problems in one order.")
    result = {"before": before, "after": after, "problems": len(runs[0])}
    for name, score in (
        ("greedy", lambda r: float(r["greedy_ok"])),
        ("pass@1", lambda r: statistics.fmean(r["samples_ok"])),
    ):
        differences = [score(b) - score(a) for a, b in zip(*runs, strict=True)]
        low, high = bootstrap(differences)
        result[name] = {"difference": round(statistics.fmean(differences), 4)}
        result[name] |= {"ci_low": round(low, 4), "ci_high": round(high, 4)}
    pairs = [(a["greedy_ok"], b["greedy_ok"]) for a, b in zip(*runs, strict=True)]
    result["greedy_gained"] = sum(1 for a, b in pairs if b and not a)
    result["greedy_lost"] = sum(1 for a, b in pairs if a and not b)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paired", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    print(json.dumps(paired(*args.paired))) if args.paired else table()


if __name__ == "__main__":
    main()
