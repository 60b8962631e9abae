"""The table of `run.py`'s rows: accuracy (Wilson 95% interval) against compute, per method.

    python experiments/search/summarize.py [--rows experiments/search/rows.jsonl]

Only problems that every listed run finished are counted, so the runs compare on the same
problems. Prints a markdown table and writes `summary.json` beside the rows.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(rows: list[dict]) -> list[dict]:
    by_run: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        by_run[row["run"]][row["problem"]] = row
    shared = set.intersection(*(set(problems) for problems in by_run.values()))
    table = []
    for run, problems in by_run.items():
        picked = [problems[p] for p in sorted(shared)]
        correct = sum(r["correct"] for r in picked)
        low, high = wilson(correct, len(picked))
        table.append(
            {
                "run": run,
                "problems": len(picked),
                "accuracy": correct / len(picked),
                "interval_95": [round(low, 3), round(high, 3)],
                "oracle_pick_accuracy": sum(r["oracle_pick_correct"] for r in picked) / len(picked),
                "backbone_tokens": sum(r["cost"]["backbone_tokens"] for r in picked) / len(picked),
                "wall_s": sum(r["cost"]["wall_s"] for r in picked) / len(picked),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="experiments/search/rows.jsonl")
    args = parser.parse_args()
    path = Path(args.rows)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    table = summarize(rows)
    print("| run | problems | accuracy | 95% interval | oracle pick | backbone tokens | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['run']} | {r['problems']} | {r['accuracy']:.3f} | {r['interval_95']} "
            f"| {r['oracle_pick_accuracy']:.3f} | {r['backbone_tokens']:.0f} | {r['wall_s']:.1f} |"
        )
    (path.parent / "summary.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
