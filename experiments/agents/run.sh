#!/usr/bin/env bash
# The agent experiment (issue 13): CoLA (stages 1 and 1b on the gold trajectories corpus, agent
# stage 2, policy re-clone, latent GRPO) against the token baseline (SFT on the same trajectories,
# token GRPO): success on seen and unseen tasks before and after RL, and the backbone's perplexity
# on natural text after each stage.
#   ENVIRONMENT=household bash experiments/agents/run.sh [latent|token]
#   python experiments/agents/report.py --environment household
# ENVIRONMENT: household (configs/quickstart/agent_*.yaml, the default) or scienceworld
# (configs/scienceworld/*.yaml; Java 17 and the `agents` extra). Needs: the quickstart chain's
# behavior_cloning checkpoint (bash experiments/quickstart_chain.sh: the token SFT starts from its
# pretrained backbone) and ../shared/data/gsm8k_test.jsonl. Hardware: 2 CPU cores to themselves;
# the two methods run side by side, one core each (OMP_NUM_THREADS=1, taskset). Both RL runs take
# the same steps (the RL configs' max_steps); RL_MINUTES (default 35) caps each. A step whose
# checkpoint, logs or results file exists is skipped, so a killed run restarts where it stopped.
# Results: experiments/agents/results/<environment>/ (and the chains' logs there).
set -euo pipefail
cd "$(dirname "$0")/../.."
environment="${ENVIRONMENT:-household}"
case "$environment" in
    household) folder=quickstart prefix=agent_ ;;
    scienceworld) folder=scienceworld prefix="" ;;
    *) echo "run.sh: unknown ENVIRONMENT '$environment'; use household or scienceworld" >&2; exit 2 ;;
esac
out="experiments/agents/results/$environment"
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

# fit CORE STAGE [ARGS...]: trains a stage of this environment's chain.
fit() {
    local core="$1" stage="$2"
    shift 2
    cola "$core" "checkpoints/$folder/$prefix$stage/last.ckpt" fit \
        --config "configs/$folder/$prefix$stage.yaml" "$@"
}

# success CORE METHOD START: greedy episodes on the seen and unseen validation tasks, before RL.
success() {
    cola "$1" "runs/$folder/$prefix${2}_before" validate --config "configs/$folder/$prefix${2}_rl.yaml" \
        --model.init_args.init_from="checkpoints/$folder/$prefix$3/last.ckpt" \
        --trainer.logger.init_args.name="$prefix${2}_before"
}

# perplexity CORE STAGE: the backbone's (and the world model's) perplexity on GSM8K solutions.
# STAGE `pretrained` is the quickstart's 1b checkpoint, whose backbone is SmolLM2 itself.
perplexity() {
    local checkpoint="checkpoints/$folder/$prefix$2/last.ckpt"
    if [ "$2" = pretrained ]; then
        checkpoint=checkpoints/quickstart/behavior_cloning/last.ckpt
    fi
    cola "$1" "$out/${2}_perplexity.json" validate --config configs/eval/perplexity.yaml \
        --model.init_args.init_from="$checkpoint" --model.init_args.results_file="$out/${2}_perplexity.json"
}

latent_chain() {
    for stage in latent_actions behavior_cloning action_guided reclone; do fit 0 "$stage"; done
    success 0 latent reclone
    fit 0 latent_rl --trainer.max_time="00:00:${RL_MINUTES:-35}:00"
    for stage in action_guided latent_rl; do perplexity 0 "$stage"; done
}

token_chain() {
    fit 1 token_sft
    success 1 token token_sft
    fit 1 token_rl --trainer.max_time="00:00:${RL_MINUTES:-35}:00"
    for stage in pretrained token_sft token_rl; do perplexity 1 "$stage"; done
}

chain="${1:-both}"  # `latent` or `token` runs one chain only
[ "$chain" = token ] || latent_chain > "$out/latent_chain.log" 2>&1 &
[ "$chain" = latent ] || token_chain > "$out/token_chain.log" 2>&1 &
wait
echo "$(date -u +%H:%M:%S) done; python experiments/agents/report.py --environment $environment"
