#!/usr/bin/env bash
# Evaluates the quickstart chain's models, one command per (model, benchmark, mode).
#   bash experiments/eval/run.sh [CHECKPOINT_ROOT] [STAGE ...]
#   RUNS="arithmetic:latent perplexity:token" bash experiments/eval/run.sh checkpoints/quickstart rlx_token_lr1e-4_s0
# Needs: the quickstart checkpoints (CHECKPOINT_ROOT defaults to checkpoints/quickstart) and
# ../shared/data. RUNS (benchmark:mode pairs, configs/eval/<benchmark>.yaml) defaults to the four
# below. Hardware: 2 CPU cores, about 15 minutes per stage; set OMP_NUM_THREADS=1 and pin with
# taskset to run two stages side by side. Writes experiments/eval/results/<stage>_<benchmark>_<mode>.json
# (TensorBoard under runs/eval/).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="${1:-checkpoints/quickstart}"
shift || true
stages=("${@:-behavior_cloning action_guided_reclone}")
out=experiments/eval/results
for stage in ${stages[@]}; do
    ckpt="$root/$stage/last.ckpt"
    for run in ${RUNS:-perplexity:latent arithmetic:latent arithmetic:token choice:token}; do
        benchmark="${run%%:*}" mode="${run##*:}"
        python -m cola_lightning validate --config "configs/eval/$benchmark.yaml" \
            --model.init_args.init_from="$ckpt" --model.init_args.mode="$mode" \
            --model.init_args.results_file="$out/${stage}_${benchmark}_${mode}.json" \
            --trainer.enable_progress_bar=false
    done
done
