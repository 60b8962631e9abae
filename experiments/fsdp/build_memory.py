"""Peak CPU memory of rank 0 building a CoLA model under FSDP2 against a plain single-process build.

    python experiments/fsdp/build_memory.py [--out experiments/fsdp/results_cpu.jsonl]

Saves a random Llama-style backbone (about 0.2B parameters, safetensors) to a temporary directory,
then builds the stage-1 CoLA model (about 0.4B parameters with IDM, policy and merge layers) in
fresh processes: once plain, once sharded over two gloo ranks (meta device, streamed weights). It
reports each build's peak resident memory above the process's memory after imports, with every
weight touched (so lazily memory-mapped files count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BACKBONE = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(rank: int, world: int, source: str, queue) -> None:
    from cola_lightning.models.backbone import Backbone, BackboneSpec, load_causal_lm
    from cola_lightning.models.cola import CoLAConfig, CoLAModel
    from cola_lightning.models.sharding import (
        ShardingConfig,
        build_sharded_cola_model,
        init_latent_parameters,
    )

    spec, cola = BackboneSpec(source=source, tokenizer="bytes"), CoLAConfig()
    before = current_mb()
    if world == 1:
        model = CoLAModel(Backbone(load_causal_lm(spec)), cola)
        init_latent_parameters(model, seed=0)
    else:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        model = build_sharded_cola_model(spec, cola, mesh, ShardingConfig(), seed=0)
        dist.barrier()
    # Touch every weight, so that lazily mapped file pages count as memory held.
    with torch.no_grad():
        for parameter in model.parameters():
            (parameter.to_local() if hasattr(parameter, "to_local") else parameter).sum()
    local = sum(
        p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters()
    )
    if rank == 0:
        queue.put(
            {
                "world_size": world,
                "rank0_parameters_held": local,
                "rank0_peak_above_imports_mb": round(peak_mb() - before, 1),
            }
        )
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, source: str) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=build, args=(r, world, source, queue)) for r in range(world)
    ]
    for process in processes:
        process.start()
    result = queue.get()
    for process in processes:
        process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/fsdp/results_cpu.jsonl")
    args = parser.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**BACKBONE))
        lm.save_pretrained(directory)
        backbone_parameters = sum(p.numel() for p in lm.parameters())
        del lm
        plain, sharded = measure(1, directory), measure(2, directory)
    plain["backbone_parameters"] = sharded["backbone_parameters"] = backbone_parameters
    ratio = sharded["rank0_peak_above_imports_mb"] / plain["rank0_peak_above_imports_mb"]
    sharded["peak_vs_plain"] = round(ratio, 3)
    with open(args.out, "a") as file:
        for result in (plain, sharded):
            print(json.dumps(result))
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
