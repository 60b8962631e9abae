"""Prints the evaluation results of experiments/eval/results/*.json as a markdown table.

python experiments/eval/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    print("| run | metric | value | 95% interval | n |")
    print("|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("*.json")):
        results = json.loads(path.read_text())
        for name, figure in results["metrics"].items():
            print(
                f"| {path.stem} | {name} | {figure['value']:.3f} | "
                f"[{figure['ci_low']:.3f}, {figure['ci_high']:.3f}] | {figure['n']} |"
            )


if __name__ == "__main__":
    main()
