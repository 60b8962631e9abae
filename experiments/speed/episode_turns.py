"""What keeping the KV caches across an episode's turns saves: agent rollouts with and without.

    python experiments/speed/episode_turns.py [--episodes 8] [--repeats 2] \
        [--config configs/quickstart/agent_latent_rl.yaml]

Needs the quickstart agent chain's checkpoint the config starts from (experiments/agents/run.sh).
Builds the config's module, then runs the same household validation episodes (same random
streams, so the same actions) with `episodes.cache_turns` on and off, alternating, in one process,
in latent and in token mode. Prints one JSON line per mode: seconds per rollout batch, backbone
positions computed, and the ratios; the episodes themselves must come out identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from lightning.pytorch.cli import LightningCLI

from cola_lightning.rollout.episodes import run_episodes


class ParseOnly(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.logger": False})


def build(config: str):
    cli = ParseOnly(args=[f"--config={config}"], run=False)
    module, data = cli.model, cli.datamodule
    module.configure_model()
    data.setup("fit")
    return module, data


def rollout(module, records, mode: str, cache_turns: bool):
    config = dataclasses.replace(module.episodes, cache_turns=cache_turns)
    streams = [torch.Generator().manual_seed(i) for i in range(len(records))]
    started = time.perf_counter()
    batch = run_episodes(
        module.model, module.tokenizer, module.generation, records, config, mode, streams
    )
    return time.perf_counter() - started, batch


def measure(module, records, mode: str, repeats: int) -> dict:
    seconds = {True: [], False: []}
    batches = {}
    for _ in range(repeats):
        for cache_turns in (True, False):
            took, batches[cache_turns] = rollout(module, records, mode, cache_turns)
            seconds[cache_turns].append(took)
    same = [a.token_ids for a in batches[True].episodes] == [
        b.token_ids for b in batches[False].episodes
    ]
    cached, prefilled = (sum(seconds[k]) / repeats for k in (True, False))
    positions = {k: batches[k].backbone_positions() for k in (True, False)}
    return {
        "mode": mode,
        "episodes": len(records),
        "turns_mean": batches[True].stats()["steps"],
        "generated_tokens": sum(len(ids) for ids in batches[True].token_ids),
        "same_episodes": same,
        "seconds_cached": round(cached, 2),
        "seconds_prefill_each_turn": round(prefilled, 2),
        "time_ratio": round(cached / prefilled, 3),
        "positions_cached": positions[True],
        "positions_prefill_each_turn": positions[False],
        "positions_ratio": round(positions[True] / positions[False], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart/agent_latent_rl.yaml")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    module, data = build(args.config)
    records = data.splits["unseen"][: args.episodes]
    module.model.eval()
    for mode in ("latent", "token"):
        print(json.dumps(measure(module, records, mode, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
