"""python -m cola_lightning.atlas --checkpoint CKPT --texts FILE --out DIR [options]

Writes DIR/atlas.html (self-contained), DIR/atlas.json and TensorBoard files in DIR (view with
``tensorboard --logdir DIR``: TEXT for each code, HISTOGRAMS, PROJECTOR for the codebook).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cola_lightning.atlas.report import write_html, write_json, write_tensorboard
from cola_lightning.atlas.stats import build_atlas
from cola_lightning.checkpoints.export import load_cola
from cola_lightning.data.files import read_documents


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The action atlas of a CoLA checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint or export directory")
    parser.add_argument("--texts", required=True, help=".txt (blank-line separated) or .jsonl")
    parser.add_argument("--text-field", default="text", help="the jsonl field holding the text")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--max-texts", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--max-scored-steps", type=int, default=512)
    parser.add_argument("--prefix", action="append", help="a shared prefix (repeatable)")
    parser.add_argument("--continuation-tokens", type=int, default=12)
    parsed = parser.parse_args(args)
    model, tokenizer = load_cola(parsed.checkpoint)
    texts = read_documents(parsed.texts, parsed.text_field)[: parsed.max_texts]
    atlas = build_atlas(
        model,
        tokenizer,
        texts,
        max_length=parsed.max_length,
        max_scored_steps=parsed.max_scored_steps,
        prefixes=parsed.prefix,
        continuation_tokens=parsed.continuation_tokens,
    )
    out = Path(parsed.out)
    write_tensorboard(atlas, out)
    write_json(atlas, out / "atlas.json")
    print(f"wrote {write_html(atlas, out / 'atlas.html', f'Action atlas of {parsed.checkpoint}')}")


if __name__ == "__main__":
    main()
