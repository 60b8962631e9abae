"""Is a rising RL training reward learning, or easier prompts? The starting policy on late prompts.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/rl/control.py --steps 40 60

Every seed of `learning.py` sees the same prompts in the same order (the data seed fixes it), so a
reward that rises over steps could come from the prompts. This rolls the *starting* model out on
the prompts of training steps [first, last) exactly as those steps did (same config, same group
size, same per-prompt random streams for seed 0) and prints its mean reward: the no-learning
baseline for that block of steps. Needs the quickstart chain. Hardware: one core, ~10 minutes.
"""

from __future__ import annotations

import argparse
import json

import torch
from lightning.pytorch.cli import LightningCLI

from cola_lightning.data.resumable import resumable_train_loader
from cola_lightning.rollout.engine import Generator, eval_mode
from cola_lightning.rollout.sampling import prompt_streams


class ParseOnly(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.logger": False})


def quickstart_latent_rl(prompts: int):
    """The latent RL module of configs/quickstart/latent_rl.yaml, built, and its training order."""
    cli = ParseOnly(
        args=[
            "--config=configs/quickstart/latent_rl.yaml",
            f"--data.init_args.batch_size={prompts}",
            "--data.init_args.val_size=200",
            "--data.init_args.tokenizer=embedded:smollm2-135m",
        ],
        run=False,
    )
    module, data = cli.model, cli.datamodule
    module.configure_model()
    data.setup()
    train = data.splits["train"]
    return module, resumable_train_loader(train, prompts, None, data.seed, collate_fn=list)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs=2, default=[40, 60])
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    module, loader = quickstart_latent_rl(args.prompts)
    rewards = []
    for step, batch in enumerate(loader):
        if step >= args.steps[1]:
            break
        if step < args.steps[0]:
            continue
        records = [r for r in batch for _ in range(args.group)]
        prompts = [r["prompt"] for r in records]
        # the streams training step `step` used: keyed by (seed, global step, prompt copy, prompt)
        streams = prompt_streams(prompts, module.device, args.seed, step)
        engine = Generator(module.model, module.tokenizer, module.generation)
        with torch.no_grad(), eval_mode(module.model):
            result = engine.generate(prompts, "latent", generator=streams)
        scores, _ = module.reward(prompts, result.texts, records)
        rewards.append(float(scores.mean()))
        print(json.dumps({"step": step, "reward": rewards[-1]}), flush=True)
    print(json.dumps({"steps": args.steps, "mean_reward": sum(rewards) / len(rewards)}))


if __name__ == "__main__":
    main()
