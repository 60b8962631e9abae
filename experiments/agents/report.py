"""Reads an agent experiment's logs into experiments/agents/<environment>.json (issue 13).

    python experiments/agents/report.py --environment household

Needs the runs of experiments/agents/run.sh (a method or stage not run yet is left out). Per
method: success, score, steps and invalid actions on the seen and unseen validation tasks before
RL and at each RL validation (with a 95% Wilson interval on success), the training reward, signal
fraction, step count and step time of the RL run, and the backbone's perplexity on GSM8K
solutions after each stage.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SPLITS = ("seen", "unseen")
STATS = ("success", "score", "steps", "invalid_actions")
# environment -> (its logs, its runs' name prefix, validation episodes per split: val_per_task x
# task families in its configs)
ENVIRONMENTS = {
    "household": (Path("runs/quickstart"), "agent_", 32),
    "scienceworld": (Path("runs/scienceworld"), "", 8),
}
# method -> the stages whose backbone perplexity is reported (`pretrained`: SmolLM2 itself)
METHODS = {
    "latent": ("action_guided", "latent_rl"),
    "token": ("pretrained", "token_sft", "token_rl"),
}


def read_events(logs: Path) -> EventAccumulator:
    logdir = max(logs.glob("version_*"), key=lambda p: p.stat().st_mtime)
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return events


def wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a success rate p over n episodes."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 3), round(centre + half, 3)]


def validations(events: EventAccumulator, episodes: int) -> list[dict]:
    """Every validation point: per split the episode stats (success with its interval)."""
    tags = set(events.Tags()["scalars"])
    points = {}
    for split in SPLITS:
        for stat in STATS:
            tag = f"agent/{stat}/{split}"
            for event in events.Scalars(tag) if tag in tags else []:
                point = points.setdefault(event.step, {"step": event.step})
                point.setdefault(split, {})[stat] = round(event.value, 4)
    for point in points.values():
        for split in SPLITS:
            success = point[split]["success"]
            point[split]["success_ci"] = wilson(success, episodes)
    return [points[step] for step in sorted(points)]


def training(events: EventAccumulator) -> dict:
    """The RL run: steps taken, wall time, training reward and the share of rollouts with signal."""
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    rewards = [e.value for e in scalars["rl/reward_mean"]]
    seconds = [
        a.value + b.value
        for a, b in zip(scalars["timing/rollout_s"], scalars["timing/update_s"], strict=True)
    ]
    quarter = max(len(rewards) // 4, 1)
    return {
        "steps": len(rewards),
        "step_seconds_mean": round(statistics.mean(seconds), 1),
        "reward_first_quarter": round(statistics.mean(rewards[:quarter]), 4),
        "reward_last_quarter": round(statistics.mean(rewards[-quarter:]), 4),
        "signal_frac_mean": round(statistics.mean(e.value for e in scalars["rl/signal_frac"]), 4),
        "backbone_tokens": int(sum(e.value for e in scalars["rl/backbone_tokens"])),
        "kl_last": round(scalars["rl/kl"][-1].value, 5),
    }


def perplexity(path: Path) -> dict:
    metrics = json.loads(path.read_text())["metrics"]
    value = metrics["base_perplexity"]
    return {
        "value": round(value["value"], 3),
        "ci": [round(value["ci_low"], 3), round(value["ci_high"], 3)],
    }


def method_report(environment: str, method: str) -> dict:
    """What exists of one method's runs: before RL, the RL run, the perplexities."""
    logs, prefix, episodes = ENVIRONMENTS[environment]
    results = Path("experiments/agents/results") / environment
    report = {}
    if (logs / f"{prefix}{method}_before").exists():
        report["before_rl"] = validations(read_events(logs / f"{prefix}{method}_before"), episodes)[
            -1
        ]
    if (logs / f"{prefix}{method}_rl").exists():
        rl = read_events(logs / f"{prefix}{method}_rl")
        report["rl_validations"] = validations(rl, episodes)
        report["rl_training"] = training(rl)
    files = {stage: results / f"{stage}_perplexity.json" for stage in METHODS[method]}
    report["backbone_perplexity"] = {s: perplexity(f) for s, f in files.items() if f.exists()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environment", choices=list(ENVIRONMENTS), default="household")
    environment = parser.parse_args().environment
    report = {method: method_report(environment, method) for method in METHODS}
    Path(f"experiments/agents/{environment}.json").write_text(json.dumps(report, indent=1))
    for method, result in report.items():
        print(f"## {method}")
        points = [result["before_rl"]] if "before_rl" in result else []
        for point in points + result.get("rl_validations", []):
            label = "before RL" if point is points[0] else f"RL step {point['step']}"
            cells = [
                f"{split} {point[split]['success']:.3f} {point[split]['success_ci']}"
                for split in SPLITS
            ]
            print(f"  {label}: " + ", ".join(cells))
        print(f"  training: {result.get('rl_training')}")
        print(f"  perplexity: {result['backbone_perplexity']}")


if __name__ == "__main__":
    main()
