"""Reads the household agent experiment's logs into experiments/agents/household.json (issue 13).

    python experiments/agents/report.py

Needs the runs of experiments/agents/household.sh. Per method: success, score, steps and invalid
actions on the 32 seen and 32 unseen validation tasks before RL and at each RL validation (with a
95% Wilson interval on success), the training reward, signal fraction, step count and wall time of
the RL run, and the backbone's perplexity on GSM8K solutions after each stage.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LOGS = Path("runs/quickstart")
RESULTS = Path("experiments/agents/results")
OUT = Path("experiments/agents/household.json")
SPLITS = ("seen", "unseen")
STATS = ("success", "score", "steps", "invalid_actions")
EPISODES_PER_SPLIT = 32  # val_per_task 8 x four families (configs/quickstart/agent_*.yaml)
METHODS = {  # method -> (stages whose backbone perplexity is reported, before-RL run, RL run)
    "latent": (
        ("agent_behavior_cloning", "agent_action_guided", "agent_latent_rl"),
        "agent_latent",
    ),
    "token": (("behavior_cloning", "agent_token_sft", "agent_token_rl"), "agent_token"),
}


def read_events(name: str) -> EventAccumulator:
    logdir = max((LOGS / name).glob("version_*"), key=lambda p: p.stat().st_mtime)
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return events


def wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a success rate p over n episodes."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 3), round(centre + half, 3)]


def validations(events: EventAccumulator) -> list[dict]:
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
            point[split]["success_ci"] = wilson(success, EPISODES_PER_SPLIT)
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


def perplexity(stage: str) -> dict:
    metrics = json.loads((RESULTS / f"{stage}_perplexity.json").read_text())["metrics"]
    value = metrics["base_perplexity"]
    return {
        "value": round(value["value"], 3),
        "ci": [round(value["ci_low"], 3), round(value["ci_high"], 3)],
    }


def main() -> None:
    report = {}
    for method, (stages, prefix) in METHODS.items():
        rl = read_events(f"{prefix}_rl")
        report[method] = {
            "before_rl": validations(read_events(f"{prefix}_before"))[-1],
            "rl_validations": validations(rl),
            "rl_training": training(rl),
            "backbone_perplexity": {stage: perplexity(stage) for stage in stages},
        }
    OUT.write_text(json.dumps(report, indent=1))
    for method, result in report.items():
        print(f"## {method}")
        for point in [result["before_rl"], *result["rl_validations"]]:
            label = "before RL" if point is result["before_rl"] else f"RL step {point['step']}"
            cells = [
                f"{split} {point[split]['success']:.3f} {point[split]['success_ci']}"
                for split in SPLITS
            ]
            print(f"  {label}: " + ", ".join(cells))
        print(f"  training: {result['rl_training']}")
        print(f"  perplexity: {result['backbone_perplexity']}")


if __name__ == "__main__":
    main()
