"""Stage-1 step time of the merge-form world model against the inject form (same process).

    python experiments/kernels/inject_vs_merge_step.py [--steps 8] [--rounds 2] [--layer 26]

The quickstart's stage 1 (embedded SmolLM2-135M, arithmetic corpus, 128-token rows, batch 8,
published block counts), once per form and round, the forms alternating (merge, inject, merge,
inject, ...) so that they share whatever else runs on the machine. A step is timed from batch
start to batch end (forward, backward, AdamW); the first two steps of every fit are warm-up.
Prints one JSON line: mean step seconds per form, the ratio, and each world model's parameters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L

from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.world_model import WorldModelSpec
from cola_lightning.stages.latent_actions import LatentActionModule

SOURCE = "embedded:smollm2-135m"
WARMUP_STEPS = 2


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= WARMUP_STEPS:
            self.steps.append(time.perf_counter() - self.started)


def fit(form: WorldModelSpec, steps: int) -> tuple[list[float], int]:
    """Step seconds of one short stage-1 fit, and the world model's parameter count."""
    L.seed_everything(0, verbose=False)
    module = LatentActionModule(BackboneSpec(source=SOURCE), cola=CoLAConfig(world_model=form))
    data = TextCorpusDataModule(arithmetic=ArithmeticCorpus(num_problems=200), seq_len=128)
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, data)
    return clock.steps, sum(p.numel() for p in module.model.world_model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layer", type=int, default=26)
    args = parser.parse_args()
    forms = {"merge": WorldModelSpec(), "inject": WorldModelSpec("inject", args.layer)}
    times: dict[str, list[float]] = {name: [] for name in forms}
    params = {}
    for _ in range(args.rounds):
        for name, form in forms.items():
            steps, params[name] = fit(form, args.steps)
            times[name] += steps
    merge, inject = (statistics.mean(times[n]) for n in forms)
    print(
        json.dumps(
            {
                "merge_step_s": round(merge, 3),
                "inject_step_s": round(inject, 3),
                "inject_over_merge": round(inject / merge, 3),
                "steps_each": len(times["merge"]),
                "world_model_params": params,
                "inject_layer": args.layer,
            }
        )
    )


if __name__ == "__main__":
    main()
