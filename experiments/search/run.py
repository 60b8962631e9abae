"""Accuracy against compute for every search method on held-out procedural arithmetic.

    PYTHONPATH=$PWD python experiments/search/run.py \
      --init-from /work/main/checkpoints/quickstart/action_guided_reclone/last.ckpt \
      --q-from checkpoints/quickstart/q_learning/last.ckpt --problems 100 --minutes 40 \
      [--start 0 --threads 2 --batch 8 --runs greedy,mcts_q@3 --out experiments/search]

Loads the quickstart CoLA model and its Q-model once, then for each held-out problem (seed 2, the
val split of configs/quickstart/search.yaml) runs every method at every budget with the
non-oracle agreement scorer (or, with `--scorer q_value`, the Q-model's value), appending one
row per (problem, method, budget) to `--out`/rows.jsonl as it goes. `--batch` problems are
searched at once (`Searcher.search_many`: their decodes share batches; each result is as searched
alone, and `wall_s` is the batch's time over its problems); batches of problems are outer, so a
time limit cuts whole batches. Each row also records the oracle pick: whether any rollout the
search made is correct (an upper bound on any selection rule over those rollouts, labelled as an
oracle). `summarize.py` makes the table and plot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.models.adapters import LoraSpec
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.rewards.registry import resolve_reward
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.q_model import QModelConfig
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.search.searcher import Searcher
from cola_lightning.stages.search import SearchModule

COMMON = dict(depth=96, simulation_tokens=96, answer_tokens=96, chunk_tokens=24, max_chunks=4)
# (label, method, budget settings): two budgets per search method
RUNS = [
    ("greedy", "greedy", {}),
    ("greedy_token", "greedy_token", {}),
    ("bon_latent@4", "best_of_n_latent", {"samples": 4}),
    ("bon_latent@8", "best_of_n_latent", {"samples": 8}),
    ("bon_token@4", "best_of_n_token", {"samples": 4, "token_temperature": 0.7}),
    ("bon_token@8", "best_of_n_token", {"samples": 8, "token_temperature": 0.7}),
    ("mcts@1", "mcts", {"rounds": 1}),
    ("mcts@3", "mcts", {"rounds": 3}),
    ("mcts_q@3", "mcts_q", {"rounds": 3}),
    ("mcts_q@7", "mcts_q", {"rounds": 7}),
    # The reference stops at the first expansion that reaches EOS; on short answers that is after
    # one or two rounds whatever the budget. Without the stop the rounds are all spent.
    ("mcts_q_nostop@7", "mcts_q", {"rounds": 7, "stop_on_eos": False}),
    ("mcts_token@1", "mcts_token", {"rounds": 1}),
    ("mcts_token@3", "mcts_token", {"rounds": 3}),
]


def load(init_from: str, q_from: str | None, lora: bool) -> SearchModule:
    backbone = BackboneSpec(
        source="embedded:smollm2-135m",
        lora=LoraSpec(rank=16, alpha=32, dropout=0.05) if lora else None,
    )
    cola = CoLAConfig(num_codes=64, idm_layers=4, policy_layers=8, merge_layers=2)
    module = SearchModule(
        backbone, init_from, cola, q_from=q_from, q=QModelConfig(layers=2), stop_strings=[]
    )
    module.configure_model()
    module.model.eval()
    return module


def problems(tokenizer_source: SearchModule, count: int) -> list[dict]:
    data = TaskPromptDataModule(
        task="arithmetic", num_problems=600, seed=2, template="auto", val_size=200
    )
    data.tokenizer_name = None

    class _Trainer:  # the data module reads the stage's tokenizer through its trainer
        lightning_module = tokenizer_source

    data.trainer = _Trainer()
    data.setup("predict")
    return data.splits["val"][:count]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--q-from", default=None)
    parser.add_argument("--no-lora", action="store_true", help="a stage-1b checkpoint (no LoRA)")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--start", type=int, default=0, help="first problem (to split a sweep)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, default=8, help="problems searched at once (decodes batched)"
    )
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--runs", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--out", default="experiments/search")
    parser.add_argument(
        "--scorer",
        default="agreement",
        choices=["agreement", "q_value"],
        help="what scores a rollout; q_value (latent runs, needs --q-from) labels runs `<run>/q`",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load(args.init_from, args.q_from, lora=not args.no_lora)
    records = problems(module, args.start + args.problems)[args.start :]
    oracle = resolve_reward("arithmetic")
    scorer = Scorer(ScorerConfig(kind=args.scorer))
    suffix = "" if args.scorer == "agreement" else "/q"
    chosen = [r for r in RUNS if args.runs is None or r[0] in args.runs.split(",")]
    if module.q_model is None:
        chosen = [r for r in chosen if r[1] != "mcts_q"]
    out = Path(args.out) / "rows.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.minutes
    with out.open("a") as handle:
        for first in range(0, len(records), args.batch):
            if time.time() > deadline:
                print(f"time limit: stopped before problem {args.start + first}")
                break
            chunk = records[first : first + args.batch]
            indices = range(args.start + first, args.start + first + len(chunk))
            for label, method, budget in chosen:
                config = SearchConfig(method=method, **COMMON, **budget)
                searcher = Searcher(
                    module.model, module.tokenizer, config, scorer, module.q_model, ["<|im_end|>"]
                )
                generators = [torch.Generator().manual_seed(i) for i in indices]
                prompts = [r["prompt"] for r in chunk]
                results = searcher.search_many(prompts, chunk, generators)
                for index, record, result in zip(indices, chunk, results, strict=True):
                    line = row(index, label + suffix, method, record, result, oracle)
                    handle.write(json.dumps(line | {"scorer": args.scorer}))
                    handle.write("\n")
                handle.flush()
            print(f"problems {indices.start}-{indices.stop - 1} done", flush=True)


def row(index: int, label: str, method: str, record: dict, result, oracle) -> dict:
    """One output row: the chosen response and its correctness, the oracle pick, the cost."""
    return {
        "problem": index,
        "run": label,
        "method": method,
        "gold": str(record["answer"]),
        "correct": oracle(record["prompt"], result.response, record) >= 1.0,
        "oracle_pick_correct": any(
            oracle(record["prompt"], r, record) >= 1.0 for r in result.rollouts
        ),
        "response": result.response,
        "rollouts": len(result.rollouts),
        "score": result.score,
        "cost": result.cost.as_dict(),
    }


if __name__ == "__main__":
    main()
