#!/usr/bin/env bash
# The action atlas of a quickstart model on GSM8K test questions (text only, no answers).
#   bash experiments/eval/atlas.sh [CHECKPOINT] [OUT]
# Needs: the checkpoint (default: the quickstart's stage-1b one) and ../shared/data.
# Hardware: 2 CPU cores, a few minutes. Writes OUT/atlas.html, OUT/atlas.json, TensorBoard files.
set -euo pipefail
cd "$(dirname "$0")/../.."
checkpoint="${1:-checkpoints/quickstart/behavior_cloning/last.ckpt}"
out="${2:-runs/atlas/quickstart}"
python -m cola_lightning.atlas --checkpoint "$checkpoint" \
    --texts ../shared/data/gsm8k_test.jsonl --text-field question --out "$out" \
    --max-texts 48 --max-length 96 --max-scored-steps 384 \
    --prefix $'Question: Mia has 12 apples. She buys 5 more. How many apples does Mia have now?\nAnswer:' \
    --prefix "The weather today is" --prefix "def add(a, b):"
