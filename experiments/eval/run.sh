#!/usr/bin/env bash
# Evaluates the quickstart chain's models, one command per (model, benchmark, mode).
#   bash experiments/eval/run.sh [CHECKPOINT_ROOT] [STAGE ...]
# Needs: the quickstart checkpoints (CHECKPOINT_ROOT defaults to checkpoints/quickstart) and
# ../shared/data. Hardware: 2 CPU cores, about 10 minutes per stage. Writes
# experiments/eval/results/<stage>_<benchmark>_<mode>.json (TensorBoard under runs/eval/).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="${1:-checkpoints/quickstart}"
shift || true
stages=("${@:-behavior_cloning action_guided_reclone}")
out=experiments/eval/results
for stage in ${stages[@]}; do
    ckpt="$root/$stage/last.ckpt"
    for run in "perplexity latent" "arithmetic latent" "arithmetic token" "choice token"; do
        set -- $run
        python -m cola_lightning validate --config "configs/eval/$1.yaml" \
            --model.init_args.init_from="$ckpt" --model.init_args.mode="$2" \
            --model.init_args.results_file="$out/${stage}_$1_$2.json" \
            --trainer.enable_progress_bar=false
    done
done
