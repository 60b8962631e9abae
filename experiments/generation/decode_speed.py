"""Decode tokens/s of the engine against a no-cache loop and the backbone's own `generate`.

    python experiments/generation/decode_speed.py [--device cpu|cuda] [--dtype float32|bfloat16]
        [--batches 1 8] [--new-tokens 128] [--init-from checkpoints/.../last.ckpt]

Needs the embedded SmolLM2 (scripts/install.sh). Every variant generates exactly --new-tokens per
sequence (EOS off) from the same arithmetic prompts, in one process, so the ratios compare like with
like. Prints one JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cola_lightning.checkpoints.format import load_stage_checkpoint
from cola_lightning.data.arithmetic import arithmetic_problems
from cola_lightning.models.backbone import Backbone, BackboneSpec, load_tokenizer
from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.engine import GenerationConfig, Generator, left_pad
from cola_lightning.rollout.reference import generate_without_cache

SOURCE = "embedded:smollm2-135m"


def seconds(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--init-from", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = BackboneSpec(source=SOURCE, dtype=args.dtype)
    tokenizer = load_tokenizer(SOURCE)
    model = CoLAModel(Backbone.from_spec(spec))
    if args.init_from:
        load_stage_checkpoint(model, args.init_from)
    model = model.to(args.device).eval()
    config = GenerationConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    engine = Generator(model, tokenizer, config)
    engine.generate(engine.encode(["warm-up"]), "latent")
    for batch in args.batches:
        print(json.dumps(measure(engine, batch, args.device, args.dtype)), flush=True)


def measure(engine: Generator, batch: int, device: str, dtype: str) -> dict:
    """Times the four decoders on `batch` arithmetic prompts."""
    model, config = engine.model, engine.config
    steps, pad = config.max_new_tokens, engine.tokenizer.pad_token_id
    prompts = engine.encode([p.question for p in arithmetic_problems(batch, seed=1)])
    timings = {
        "engine_latent": seconds(lambda: engine.generate(prompts, "latent")),
        "engine_token": seconds(lambda: engine.generate(prompts, "token")),
        "no_cache_latent": seconds(
            lambda: generate_without_cache(model, prompts, steps, config.code, config.token, pad)
        ),
        "hf_generate": seconds(lambda: hf_generate(model, prompts, steps, pad, device)),
    }
    result = {"batch": batch, "new_tokens": steps, "device": device, "dtype": dtype}
    result.update({f"{k}_tok_s": round(batch * steps / v, 1) for k, v in timings.items()})
    result["speedup_vs_no_cache"] = round(timings["no_cache_latent"] / timings["engine_latent"], 2)
    result["latent_cost_vs_hf_generate"] = round(
        timings["engine_latent"] / timings["hf_generate"], 2
    )
    return result


def hf_generate(model: CoLAModel, prompts: list[list[int]], steps: int, pad: int, device: str):
    ids, mask = left_pad(prompts, pad)
    with torch.inference_mode():
        model.backbone.lm.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=pad,
        )


if __name__ == "__main__":
    main()
