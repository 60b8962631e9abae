"""The table of `run.py`'s rows: accuracy (Wilson 95% interval) against compute, per method.

    python experiments/search/summarize.py [--rows experiments/search/rows.jsonl]

Only problems that every listed run finished are counted, so the runs compare on the same
problems. Prints a markdown table and writes `summary.json` beside the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import re
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
    greedy = [by_run["greedy"][p] for p in sorted(shared)] if "greedy" in by_run else None
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
                **(against_greedy(picked, greedy) if greedy else {}),
            }
        )
    return table


def against_greedy(picked: list[dict], greedy: list[dict]) -> dict:
    """Problems this run gets right that greedy misses (wins), the reverse (losses), and how
    often it returns greedy's very response (rows that record it)."""
    pairs = list(zip(picked, greedy, strict=True))
    same = [a["response"] == g["response"] for a, g in pairs if "response" in a and "response" in g]
    return {
        "wins_vs_greedy": sum(a["correct"] and not g["correct"] for a, g in pairs),
        "losses_vs_greedy": sum(g["correct"] and not a["correct"] for a, g in pairs),
        "same_response_as_greedy": round(sum(same) / len(same), 3) if same else None,
    }


def plot(table: list[dict], path: Path) -> None:
    """Accuracy (Wilson 95% bars) against backbone tokens per problem; budgets of one method joined,
    latent runs solid, token runs dashed; the oracle pick as hollow markers (an upper bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in table:
        by_method[re.sub(r"@\d+", "", r["run"])].append(r)  # bon_latent@4/q -> bon_latent/q
    for method, runs in by_method.items():
        runs.sort(key=lambda r: r["backbone_tokens"])
        x = [r["backbone_tokens"] for r in runs]
        y = [r["accuracy"] for r in runs]
        low = [r["accuracy"] - r["interval_95"][0] for r in runs]
        high = [r["interval_95"][1] - r["accuracy"] for r in runs]
        style = "o--" if "token" in method else "o-"
        line = axes.errorbar(x, y, yerr=[low, high], fmt=style, capsize=3, label=method)
        colour = line[0].get_color()
        axes.plot(x, [r["oracle_pick_accuracy"] for r in runs], "o", mfc="none", color=colour)
        for r in runs:
            budget = r["run"].partition("@")[2].split("/")[0]
            point = (r["backbone_tokens"], r["accuracy"])
            axes.annotate(budget, point, textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("backbone tokens computed per problem")
    axes.set_ylabel("accuracy (hollow: oracle pick, an upper bound)")
    axes.set_title(f"Search on {table[0]['problems']} held-out arithmetic problems")
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="experiments/search/rows.jsonl")
    args = parser.parse_args()
    path = Path(args.rows)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    table = summarize(rows)
    print(
        "| run | problems | accuracy | 95% interval | oracle pick | backbone tokens | wall s "
        "| wins/losses vs greedy | greedy's response |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        same = r.get("same_response_as_greedy") or "-"
        print(
            f"| {r['run']} | {r['problems']} | {r['accuracy']:.3f} | {r['interval_95']} "
            f"| {r['oracle_pick_accuracy']:.3f} | {r['backbone_tokens']:.0f} | {r['wall_s']:.1f} "
            f"| {r.get('wins_vs_greedy', '-')}/{r.get('losses_vs_greedy', '-')} | {same} |"
        )
    (path.parent / "summary.json").write_text(json.dumps(table, indent=1) + "\n")
    plot(table, path.parent / "accuracy_vs_compute.png")


if __name__ == "__main__":
    main()
