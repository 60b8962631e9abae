"""Stage 1 from the feature cache against stage 1 running the frozen backbone (same process).

    python experiments/speed/feature_cache.py [--problems 2000] [--steps 10]

The quickstart's stage 1 (configs/quickstart/latent_actions.yaml: the embedded SmolLM2-135M, the
arithmetic corpus, 128-token rows, batch 8, published block counts) is fitted from a bf16 cache,
and every other step has its cached states taken away, so that step runs the backbone instead:
the two kinds of step alternate on one module and one optimiser, and share whatever else runs on
the machine. A step is timed from batch start to batch end (forward, backward, AdamW); reading a
batch from the cache is timed apart (cached loader against the plain one) and added to the cached
step. This runs twice: with the default AdamW, then with torch's fused AdamW (a second fit that
opens the cache). Writing is timed from the fit's start to its first batch; opening
(fingerprints, manifest check) likewise in the second fit. `--problems` below 2000 writes a
smaller corpus to keep the run short; the quickstart corpus's size and write time are then scaled
by its token count (the size is exactly linear in it). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule
from cola_lightning.data.feature_cache import FeatureCacheConfig
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.stages.latent_actions import LatentActionModule
from cola_lightning.stages.optim import OptimizerConfig

SOURCE = "embedded:smollm2-135m"
QUICKSTART_PROBLEMS = 2000
WARMUP_STEPS = 2


class AlternateSteps(L.Callback):
    """Odd steps lose their cached states (and run the backbone); times both kinds of step."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {"cached": [], "backbone": []}
        self.fit_started = self.until_train = self.step_started = 0.0

    def on_fit_start(self, trainer, module) -> None:  # before the module's: the cache's write
        self.fit_started = time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self.until_train = time.perf_counter() - self.fit_started

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx % 2:
            del batch["hidden"]  # the same dict goes on to training_step
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= WARMUP_STEPS:
            kind = "backbone" if batch_idx % 2 else "cached"
            self.times[kind].append(time.perf_counter() - self.step_started)


def fit(module, data, steps: int) -> AlternateSteps:
    callback = AlternateSteps()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, data)
    return callback


def seconds_per_batch(rows) -> float:
    """Mean seconds to fetch a batch of 8 rows, over one pass."""
    start = time.perf_counter()
    batches = sum(1 for _ in DataLoader(rows, 8))
    return (time.perf_counter() - start) / batches


def corpus_tokens(problems: int, tokenizer: str | None = None) -> TextCorpusDataModule:
    return TextCorpusDataModule(
        arithmetic=ArithmeticCorpus(num_problems=problems, seed=0),
        seq_len=128,
        batch_size=8,
        val_fraction=0.05,
        tokenizer=tokenizer,
    )


def tokens(data: TextCorpusDataModule) -> int:
    return sum(rows.tokens.numel() for rows in (data.train_set, data.val_set))


def ratios(callback: AlternateSteps, read: float) -> dict:
    backbone = statistics.median(callback.times["backbone"])
    cached = statistics.median(callback.times["cached"]) + read
    return {
        "step_backbone_s": round(backbone, 3),
        "step_cached_s": round(cached, 3),
        "ratio": round(cached / backbone, 3),
        "steps_each": len(callback.times["cached"]),
        "steps_cached_s": [round(t, 2) for t in callback.times["cached"]],
        "steps_backbone_s": [round(t, 2) for t in callback.times["backbone"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=QUICKSTART_PROBLEMS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    directory = Path(tempfile.mkdtemp(prefix="feature_cache_"))
    optimizer = OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    module = LatentActionModule(
        BackboneSpec(source=SOURCE),
        optimizer=optimizer,
        feature_cache=FeatureCacheConfig(dir=str(directory), dtype="bfloat16"),
    )
    data = corpus_tokens(args.problems)
    written = fit(module, data, WARMUP_STEPS + 2 * args.steps)  # writes the cache
    module.optimizer_config = dataclasses.replace(optimizer, fused=True)
    fused = fit(module, data, WARMUP_STEPS + 2 * args.steps)  # opens it
    read = seconds_per_batch(data.loader_rows("train")) - seconds_per_batch(data.train_set)
    size = sum(path.stat().st_size for path in directory.iterdir())
    shutil.rmtree(directory)
    quickstart = corpus_tokens(QUICKSTART_PROBLEMS, SOURCE)
    quickstart.setup()
    scale = tokens(quickstart) / tokens(data)
    result = {
        "problems": args.problems,
        "tokens": tokens(data),
        "threads": torch.get_num_threads(),
        "cache_read_s_per_batch": round(read, 4),
        "adamw": ratios(written, read),
        "fused_adamw": ratios(fused, read),
        "cache_bytes": size,
        "write_s": round(written.until_train, 1),
        "open_s": round(fused.until_train, 2),
        "quickstart_tokens": tokens(quickstart),
        "quickstart_cache_bytes": round(size * scale),
        "quickstart_write_s": round(written.until_train * scale, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
