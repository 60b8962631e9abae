#!/usr/bin/env bash
# The quickstart chain every experiment starts from: stage 1, 1b, 2 (LoRA) and the policy re-clone,
# then (with `search`) the solutions and the Q-model that MCTS-Q needs.
#   bash experiments/quickstart_chain.sh [search]
# Needs: scripts/install.sh. Hardware: 2 CPU cores to themselves: about 35 minutes for the chain,
# 10 more with `search` (shared cores make it several times slower). Writes
# checkpoints/quickstart/<stage>/last.ckpt and TensorBoard logs under runs/quickstart/; a stage
# whose checkpoint exists is skipped, so a killed chain restarts where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
stages=(latent_actions behavior_cloning action_guided action_guided_reclone)
if [ "${1:-}" = search ]; then
    stages+=(sample_solutions q_learning)
fi
for stage in "${stages[@]}"; do
    command=fit output="checkpoints/quickstart/$stage/last.ckpt"
    if [ "$stage" = sample_solutions ]; then
        command=predict output=outputs/quickstart/solutions.jsonl
    fi
    if [ -f "$output" ]; then
        echo "skip $stage: $output exists"
        continue
    fi
    echo "$(date -u +%H:%M:%S) $command $stage"
    python -m cola_lightning "$command" --config "configs/quickstart/$stage.yaml" \
        --trainer.enable_progress_bar=false
done
echo "$(date -u +%H:%M:%S) done"
