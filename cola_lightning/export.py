"""Export a stage checkpoint as a Hugging Face-style directory.

    python -m cola_lightning.export --checkpoint checkpoints/quickstart/action_guided/last.ckpt \
        --out exports/quickstart

The stage is rebuilt from the checkpoint's own hyper-parameters (its `init_from` must still exist),
LoRA is merged, and the directory loads back with `init_from: <out>` and `source: <out>`, while its
backbone alone loads with `transformers.AutoModelForCausalLM.from_pretrained(<out>)`.

A sharded checkpoint (a directory written under FSDP2) is first consolidated into one file:

    python -m cola_lightning.export --checkpoint checkpoints/llama3_1_8b/latent_actions/last.ckpt \
        --consolidate checkpoints/llama3_1_8b/latent_actions/consolidated.ckpt [--out DIR]
"""

from __future__ import annotations

import argparse

from cola_lightning.checkpoints.export import export_cola
from cola_lightning.checkpoints.format import (
    consolidate_checkpoint,
    is_sharded_checkpoint,
    load_stage,
)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a stage's .ckpt file or directory")
    parser.add_argument("--out", help="a new (or empty) directory for the Hugging Face export")
    parser.add_argument("--consolidate", help="a new .ckpt file for a sharded checkpoint's tensors")
    parsed = parser.parse_args(args)
    checkpoint = parsed.checkpoint
    if is_sharded_checkpoint(checkpoint) and not parsed.consolidate:
        parser.error(f"{checkpoint} is sharded: give --consolidate FILE to write it as one file.")
    if parsed.consolidate:
        checkpoint = str(consolidate_checkpoint(checkpoint, parsed.consolidate))
        print(f"consolidated into {checkpoint}")
    if not parsed.out:
        if not parsed.consolidate:
            parser.error("give --out DIR (export) and/or --consolidate FILE (sharded checkpoints).")
        return
    stage = load_stage(checkpoint)
    out = export_cola(stage.model, stage.tokenizer, parsed.out)
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
