"""Stage 2 on the quickstart: what fine-tuning bought, what it cost, and full vs LoRA vs QLoRA.

    python experiments/action_guided/measure.py quality \
        --before checkpoints/quickstart/behavior_cloning/last.ckpt \
        --after checkpoints/quickstart/action_guided/last.ckpt
    python experiments/action_guided/measure.py cost

`quality`: the world model's NLL on held-out response tokens (IDM codes), and the backbone's own
perplexity on held-out generic text (GSM8K test questions and MATH500 problems, never trained on),
before and after stage 2: capability preservation. `cost`: median step time and peak resident
memory of one stage-2 training step for full fine-tuning, LoRA and QLoRA on the embedded SmolLM2,
each in its own process (peak memory is per process), as ratios to full fine-tuning.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cola_lightning.checkpoints.format import load_stage
from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.files import read_field, read_jsonl
from cola_lightning.data.sft import PromptResponseDataModule
from cola_lightning.models.adapters import LoraSpec
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.stages.action_guided import ActionGuidedFinetuneModule
from cola_lightning.stages.optim import build_optimizer

SOURCE = "embedded:smollm2-135m"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data of the repo


def sft_data() -> PromptResponseDataModule:
    data = PromptResponseDataModule(
        arithmetic=ArithmeticCorpus(num_problems=600, seed=1),
        max_length=256,
        batch_size=8,
        tokenizer=SOURCE,
    )
    data.setup()
    return data


def generic_texts(per_file: int = 32) -> list[str]:
    """Held-out natural text the quickstart never trains on."""
    sources = ((f"{DATA}/gsm8k_test.jsonl", "question"), (f"{DATA}/math500_test.jsonl", "problem"))
    return [
        read_field(path, number, record, field)
        for path, field in sources
        for number, record in itertools.islice(read_jsonl(path), per_file)
    ]


@torch.no_grad()
def quality(checkpoint: str) -> dict:
    stage = load_stage(checkpoint).eval()
    data = sft_data()
    response_nll = statistics.mean(
        stage.world_model_nll(stage.features(b), stage.idm_codes(stage.features(b), b), b).item()
        for b in data.val_dataloader()
    )
    total, count = 0.0, 0
    for text in generic_texts():
        ids = stage.tokenizer(text, return_tensors="pt").input_ids
        hidden, _ = stage.model.hidden_states(ids)
        logits = stage.model.base_logits(hidden[:, :-1])
        total += torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return {
        "checkpoint": checkpoint,
        "response_wm_nll": round(response_nll, 4),
        "generic_text_perplexity": round(math.exp(total / count), 3),
        "generic_tokens": count,
    }


def cost(variant: str, init_from: str, repeats: int = 3) -> dict:
    backbone = {
        "full": BackboneSpec(source=SOURCE),
        "lora": BackboneSpec(source=SOURCE, lora=LoraSpec()),
        "qlora": BackboneSpec(source=SOURCE, quantization="nf4", lora=LoraSpec()),
    }[variant]
    stage = ActionGuidedFinetuneModule(backbone, init_from)
    stage.configure_model()
    # The first validation batch is not shuffled, so every variant times the same tokens.
    batch = next(iter(sft_data().val_dataloader()))
    optimizer = build_optimizer(stage.model, stage.optimizer_config)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        stage.training_step(batch, 0).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in stage.model.parameters() if p.requires_grad)
    return {
        "variant": variant,
        "step_s": round(statistics.median(times[1:]), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "trainable_params": trainable,
        "tokens_per_batch": int(batch["attention_mask"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["quality", "cost", "cost-one"])
    parser.add_argument("--before")
    parser.add_argument("--after")
    parser.add_argument("--init-from", default="checkpoints/quickstart/behavior_cloning/last.ckpt")
    parser.add_argument("--variant", default="full")
    args = parser.parse_args()
    if args.what == "quality":
        for checkpoint in (args.before, args.after):
            print(json.dumps(quality(checkpoint)), flush=True)
    elif args.what == "cost-one":
        print(json.dumps(cost(args.variant, args.init_from)), flush=True)
    else:
        results = []
        for variant in ("full", "lora", "qlora"):
            command = [sys.executable, __file__, "cost-one", "--variant", variant]
            output = subprocess.run(
                [*command, "--init-from", args.init_from],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
        full = results[0]
        for result in results:
            result["step_time_vs_full"] = round(result["step_s"] / full["step_s"], 2)
            result["peak_rss_vs_full"] = round(result["peak_rss_mb"] / full["peak_rss_mb"], 2)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
