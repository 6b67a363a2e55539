#!/usr/bin/env bash
# The AVX2-only path on any x86-64 machine: run the dtype and packing tests, and
# `agentkit run --dtype bf16 --n 5` on the real model, under qemu user-mode emulation of a
# Haswell CPU (AVX2, no AVX-512, no AVX-NE-CONVERT), where oneDNN's packed bf16 kernels do
# not exist. Slow (the model run takes ~30 minutes emulated); needs root for apt-get.
#
#   bash bench/avx2_emulated.sh            # from the repository root, with .venv installed
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user; }
export HF_HUB_OFFLINE=1 COLUMNS=100
emulate() { qemu-x86_64 -cpu Haswell "$@" 2> >(grep -v '^qemu-x86_64: warning' >&2); }
emulate .venv/bin/python -c "import torch; print('ATen CPU capability:', torch.backends.cpu.get_cpu_capability())"
emulate .venv/bin/python -m pytest -q -p no:cacheprovider -rs tests/test_transformers.py tests/test_llm_protocol.py \
    -k "bf16 or pack or dtype or speed"
store="$(mktemp -d)/runs.db"
time emulate .venv/bin/python -m agentkit.cli run --dtype bf16 --n 5 --store "$store"
