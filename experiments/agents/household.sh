#!/usr/bin/env bash
# The agent experiment on the built-in household tasks (issue 13): CoLA (stages 1 and 1b on the
# trajectories corpus, agent stage 2, policy re-clone, latent GRPO) against the token baseline (agent token SFT, token GRPO), with success on
# seen and unseen tasks before and after RL and the backbone's perplexity on natural text.
#   bash experiments/agents/household.sh [latent|token] && python experiments/agents/report.py
# Needs: the quickstart chain's behavior_cloning checkpoint (bash experiments/quickstart_chain.sh:
# the token SFT starts from its pretrained backbone) and ../shared/data/gsm8k_test.jsonl. Hardware: 2 CPU cores to themselves; the two methods run
# side by side, one core each (OMP_NUM_THREADS=1, taskset). RL_MINUTES (default 35) is both RL
# runs' wall-time budget: the same for the two methods. A step whose checkpoint or results file
# exists is skipped, so a killed run restarts where it stopped. Logs: runs/quickstart/agent_*;
# results: experiments/agents/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ckpt=checkpoints/quickstart
out=experiments/agents/results
mkdir -p "$out"
export OMP_NUM_THREADS=1

# cola CORE OUTPUT SUBCOMMAND ARGS...: runs the CLI on one core unless OUTPUT exists.
cola() {
    local core="$1" output="$2"
    shift 2
    if [ -e "$output" ]; then
        echo "skip: $output exists"
        return
    fi
    echo "$(date -u +%H:%M:%S) core $core: $*"
    taskset -c "$core" python -m cola_lightning "$@" --trainer.enable_progress_bar=false
}

# success SPLIT-RUN-NAME CONFIG CHECKPOINT: greedy episodes on the 32 seen and 32 unseen tasks.
success() {
    cola "$1" "runs/quickstart/$2" validate --config "configs/quickstart/$3.yaml" \
        --model.init_args.init_from="$4" --trainer.logger.init_args.name="$2"
}

# perplexity CORE STAGE: the backbone's (and the world model's) perplexity on GSM8K solutions.
perplexity() {
    cola "$1" "$out/$2_perplexity.json" validate --config configs/eval/perplexity.yaml \
        --model.init_args.init_from="$ckpt/$2/last.ckpt" \
        --model.init_args.results_file="$out/$2_perplexity.json"
}

latent_chain() {
    for stage in agent_latent_actions agent_behavior_cloning; do
        cola 0 "$ckpt/$stage/last.ckpt" fit --config "configs/quickstart/$stage.yaml"
    done
    cola 0 "$ckpt/agent_action_guided/last.ckpt" fit --config configs/quickstart/agent_action_guided.yaml
    cola 0 "$ckpt/agent_reclone/last.ckpt" fit --config configs/quickstart/agent_reclone.yaml
    success 0 agent_latent_before agent_latent_rl "$ckpt/agent_reclone/last.ckpt"
    cola 0 "$ckpt/agent_latent_rl/last.ckpt" fit --config configs/quickstart/agent_latent_rl.yaml \
        --trainer.max_time="00:00:${RL_MINUTES:-35}:00"
    for stage in agent_behavior_cloning agent_action_guided agent_latent_rl; do perplexity 0 "$stage"; done
}

token_chain() {
    cola 1 "$ckpt/agent_token_sft/last.ckpt" fit --config configs/quickstart/agent_token_sft.yaml
    success 1 agent_token_before agent_token_rl "$ckpt/agent_token_sft/last.ckpt"
    cola 1 "$ckpt/agent_token_rl/last.ckpt" fit --config configs/quickstart/agent_token_rl.yaml \
        --trainer.max_time="00:00:${RL_MINUTES:-35}:00"
    for stage in agent_token_sft agent_token_rl; do perplexity 1 "$stage"; done
}

chain="${1:-both}"  # `latent` or `token` runs one chain only
[ "$chain" = token ] || latent_chain > "$out/latent_chain.log" 2>&1 &
[ "$chain" = latent ] || token_chain > "$out/token_chain.log" 2>&1 &
wait
echo "$(date -u +%H:%M:%S) done; python experiments/agents/report.py"
