"""How much of one GRPO step's policy gradient is signal? Cosines between independent batches.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/rl/gradient_noise.py --batches 6

At the starting policy (the quickstart's re-cloned CoLA model), each of `--batches` disjoint
batches of training prompts (4 prompts x group 8, the learning.py workload) gives one GRPO policy
gradient. For independent batches E[g1 . g2] = |mean gradient|^2, so the cosine between two of
them measures signal against noise: near 1, a step's gradient is the expected direction; near 0,
it is mostly noise, and Adam (which normalises every coordinate) takes a full-size step along it.
Prints the pairwise cosines, and the cosine between the sums of the two halves (twice the
prompts per step). Needs the quickstart chain. Hardware: one core, ~1 minute per batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
from control import quickstart_latent_rl

from cola_lightning.rollout import rl_maths


def policy_gradient(module, records: list[dict], group: int) -> tuple[torch.Tensor, float]:
    """The flattened GRPO policy gradient of one batch, and the batch's fraction of signal."""
    result, rewards, _ = module.rollout(records, module.generation, keep_states=True)
    advantages = rl_maths.group_advantages(rewards, group)
    batch = module.with_states(module.actions_of(result))
    module.model.policy.zero_grad(set_to_none=True)
    module.policy_step(batch, advantages)["loss"].backward()
    flat = torch.cat([p.grad.flatten() for p in module.model.policy.parameters()])
    return flat, float((advantages.abs() > 1e-6).float().mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    module, loader = quickstart_latent_rl(args.prompts)
    module.set_training_modes()
    gradients, signal = [], []
    for batch in itertools.islice(loader, args.batches):
        records = [r for r in batch for _ in range(args.group)]
        gradient, fraction = policy_gradient(module, records, args.group)
        gradients.append(gradient)
        signal.append(fraction)
        print(json.dumps({"batch": len(gradients) - 1, "signal_frac": fraction}), flush=True)
    pairs = [cosine(a, b) for a, b in itertools.combinations(gradients, 2)]
    half = len(gradients) // 2
    halves = cosine(sum(gradients[:half]), sum(gradients[half : 2 * half]))
    summary = {
        "prompts_per_batch": args.prompts,
        "group": args.group,
        "signal_frac_mean": round(statistics.mean(signal), 3),
        "pairwise_cosine_mean": round(statistics.mean(pairs), 4),
        "pairwise_cosine_range": [round(min(pairs), 4), round(max(pairs), 4)],
        f"cosine_of_halves_{half * args.prompts}_prompts_each": round(halves, 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
