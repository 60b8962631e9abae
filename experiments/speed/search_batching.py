"""What searching several problems at once saves: `Searcher.search_many` against one at a time.

    PYTHONPATH=$PWD python experiments/speed/search_batching.py \
        --init-from checkpoints/quickstart/behavior_cloning/last.ckpt --no-lora \
        [--problems 8] [--runs greedy,bon_latent@4,mcts@1,mcts_token@1] [--threads 1]

Needs a quickstart checkpoint with a policy (1b or later; with a Q-model, `--q-from`, MCTS-Q too).
Loads the model once, then for each run of experiments/search/run.py searches the same held-out
problems one at a time and all at once, alternating (alone first), in one process with the same
random streams. Prints and appends to experiments/speed/results_search_batching_cpu.jsonl one
line per run: seconds for the problems each way, the ratio, and whether every answer and cost
came out the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "search"))
from run import COMMON, RUNS, load, problems  # noqa: E402

from cola_lightning.search.config import SearchConfig  # noqa: E402
from cola_lightning.search.scorers import Scorer, ScorerConfig  # noqa: E402
from cola_lightning.search.searcher import Searcher  # noqa: E402

OUT = Path(__file__).parent / "results_search_batching_cpu.jsonl"


def timed(call):
    started = time.perf_counter()
    results = call()
    return time.perf_counter() - started, results


def compare(module, records, label: str, method: str, budget: dict) -> dict:
    config = SearchConfig(method=method, **COMMON, **budget)
    searcher = Searcher(
        module.model,
        module.tokenizer,
        config,
        Scorer(ScorerConfig(kind="agreement")),
        module.q_model,
        ["<|im_end|>"],
    )
    prompts = [r["prompt"] for r in records]
    streams = lambda: [torch.Generator().manual_seed(i) for i in range(len(records))]  # noqa: E731
    alone_s, alone = timed(
        lambda: [
            searcher.search(p, r, g) for p, r, g in zip(prompts, records, streams(), strict=True)
        ]
    )
    together_s, together = timed(lambda: searcher.search_many(prompts, records, streams()))
    costs = lambda r: {k: v for k, v in r.cost.as_dict().items() if k != "wall_s"}  # noqa: E731
    return {
        "run": label,
        "problems": len(records),
        "alone_s": round(alone_s, 2),
        "together_s": round(together_s, 2),
        "time_ratio": round(together_s / alone_s, 3),
        "same_answers": [a.response for a in alone] == [t.response for t in together],
        "same_costs": [costs(a) for a in alone] == [costs(t) for t in together],
        "backbone_tokens_per_problem": sum(a.cost.backbone_tokens for a in alone) / len(alone),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--q-from", default=None)
    parser.add_argument("--no-lora", action="store_true", help="a stage-1b checkpoint (no LoRA)")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--runs", default="greedy,bon_latent@4,mcts@1,mcts_token@1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load(args.init_from, args.q_from, lora=not args.no_lora)
    records = problems(module, args.problems)
    checkpoint = args.init_from
    for label, method, budget in [r for r in RUNS if r[0] in args.runs.split(",")]:
        line = compare(module, records, label, method, budget)
        line |= {"checkpoint": checkpoint, "threads": args.threads}
        print(json.dumps(line), flush=True)
        with OUT.open("a") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
