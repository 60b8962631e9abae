"""Step overhead of stage 1 over a forward pass of the frozen backbone alone (same batch, process).

    python experiments/quickstart/stage1_overhead.py [--batch 8] [--seq 128] [--repeats 5]

Needs the embedded SmolLM2 (scripts/install.sh). Prints a JSON line: median seconds of the backbone
forward (no autograd, as stage 1 computes it), of a full stage-1 training step (backbone forward,
inverse dynamics model, Gumbel straight-through codes, world model, lm_head, backward, AdamW step),
and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.stages.latent_actions import LatentActionModule
from cola_lightning.stages.optim import OptimizerConfig, build_optimizer


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    module = LatentActionModule(BackboneSpec(source="embedded:smollm2-135m"))
    module.configure_model()
    data = TextCorpusDataModule(
        arithmetic=ArithmeticCorpus(num_problems=200),
        seq_len=args.seq,
        batch_size=args.batch,
        tokenizer="embedded:smollm2-135m",
    )
    data.setup()
    batch = next(iter(data.train_dataloader()))
    optimizer = build_optimizer(module.model, OptimizerConfig())

    def backbone_forward():
        with torch.no_grad():
            module.features(batch)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()

    forward = median_seconds(backbone_forward, args.repeats)
    step = median_seconds(training_step, args.repeats)
    tokens = args.batch * args.seq
    print(
        json.dumps(
            {
                "batch": args.batch,
                "seq": args.seq,
                "threads": torch.get_num_threads(),
                "backbone_forward_s": round(forward, 3),
                "stage1_step_s": round(step, 3),
                "ratio": round(step / forward, 2),
                "stage1_tokens_per_s": round(tokens / step, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
