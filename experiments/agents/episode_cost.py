"""What an agent episode costs: gold trajectory length in tokens and turns, and environment time.

    python experiments/agents/episode_cost.py --environment household --tasks place heat_place
    python experiments/agents/episode_cost.py --environment scienceworld \
        --tasks find-living-thing find-non-living-thing --env-args '{"max_steps": 30}'
    python experiments/agents/episode_cost.py --environment household --variations 40 \
        --tasks place clean_place heat_place cool_place --env-args '{"gold": "search"}' \
        --out experiments/agents/episode_cost_household_search.json

Walks the gold actions of `--variations` training variations per task through the environment
(the same code path stage 2's data takes) and writes experiments/agents/episode_cost_<env>.json:
per task the mean and maximum tokens of a gold episode (prompt, actions and observations, in the
embedded SmolLM2 tokenizer), the action tokens among them, the turns, and the environment's
seconds per step. With the household run's measured seconds per trained token this says what
ScienceWorld would cost on the same CPU (docs/benchmarks.md, "Agent tasks").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from cola_lightning.data.trajectories import AgentTasks, gold_pieces
from cola_lightning.models.backbone import load_tokenizer
from cola_lightning.rollout.episodes import EpisodeFormat


def task_cost(tasks: AgentTasks, task: str, count: int, tokenizer) -> dict:
    env = tasks.make()
    records = [r for r in tasks.splits()["train"] if r["task"] == task][:count]
    totals, actions, turns, seconds = [], [], [], []
    for record in records:
        started = time.perf_counter()
        pieces = gold_pieces(env, record, EpisodeFormat())
        steps = sum(is_action for _, is_action in pieces)
        seconds.append((time.perf_counter() - started) / steps)
        lengths = [(len(tokenizer(text).input_ids), mine) for text, mine in pieces]
        totals.append(sum(n for n, _ in lengths))
        actions.append(sum(n for n, mine in lengths if mine))
        turns.append(steps)
    return {
        "episodes": len(records),
        "tokens_mean": round(statistics.mean(totals), 1),
        "tokens_max": max(totals),
        "action_tokens_mean": round(statistics.mean(actions), 1),
        "turns_mean": round(statistics.mean(turns), 2),
        "env_seconds_per_step": round(statistics.mean(seconds), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environment", default="household")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--env-args", default="{}", help="the environment's arguments, as JSON")
    parser.add_argument("--variations", type=int, default=10)
    parser.add_argument("--out", default=None, help="default: episode_cost_<environment>.json")
    args = parser.parse_args()
    tasks = AgentTasks(args.environment, json.loads(args.env_args), args.tasks, val_per_task=4)
    tokenizer = load_tokenizer("embedded:smollm2-135m")
    result = {task: task_cost(tasks, task, args.variations, tokenizer) for task in args.tasks}
    out = Path(args.out or f"experiments/agents/episode_cost_{args.environment}.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
