#!/usr/bin/env bash
# Install nemo_craft into the active Python environment (a venv is recommended).
#   bash scripts/install.sh          # the package and what the main job needs
#   bash scripts/install.sh test     # plus the test dependencies
# Without CUDA, torch is pinned to the CPU build first: a bare `torch` requirement would
# otherwise pull a multi-GB CUDA build. Inside a NeMo container torch is already there and
# is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extras="hf"
[ "${1:-}" = "test" ] && extras="hf,envs,test"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install torch
  else
    "$PY" -m pip install "torch==2.13.0"
  fi
fi
"$PY" -m pip install -e ".[${extras}]"
