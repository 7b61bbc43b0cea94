#!/usr/bin/env bash
# The checks that need a GPU, in one run, on one node (nemo_craft installed, or the repo on PYTHONPATH):
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: outputs/gpu_check
#
# 1. tests/gpu: NCCL and no CPU mode in the ranks, fp32 and bf16 training steps on CUDA, the dynamic
#    inference engine against the static one (skipped without flash-attn; TP2 with two GPUs);
# 2. the whole test suite on the GPU machine (its ranks stay on gloo unless NEMO_CRAFT_TEST_DEVICE=cuda:
#    it compares layouts bit for bit), which catches what only such a machine has (CUDA in the
#    parent process, JAX, NCCL);
# 3. the benchmarks on CUDA: one RL step by phase, CRAFT beside SDAR (scripts/bench_step.py), and the
#    loss's time and memory (scripts/bench_loss.py, bf16);
# 4. where vLLM is installed (bash scripts/install.sh vllm), rollout tokens/s of the static and vllm
#    backends (scripts/bench_rollout.py; tests/gpu/test_vllm_cuda.py runs in part 1);
# 5. a short bf16 training run of the default job (warm start, 6 RL steps, two validations).
#
# PYTHON (default python3) is the interpreter. Each part has its own time limit (seconds:
# GPU_CHECK_TIMEOUT, default 600) and its own log in OUT_DIR; a failing part does not stop the
# others, and the exit status is that of the first failure (2: no torch or no CUDA device).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_check}
limit=${GPU_CHECK_TIMEOUT:-600}
py=${PYTHON:-python3}
workers=${GPU_CHECK_WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

part() {  # part NAME COMMAND...: run, log to OUT_DIR/NAME.log, print the tail
    local name=$1; shift
    echo "== $name: $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$out/$name.log"
    echo "== $name: exit $rc"
    if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
}

if [ ! -d tests/gpu ]; then
    echo "gpu_check: no tests/ in $PWD; run it from a checkout (in the container: /workspace/nemo_craft, the mounted one)" >&2
    exit 2
fi
if ! "$py" -c "import pytest" 2>/dev/null; then
    echo "gpu_check: $py cannot import pytest; install the test extra: pip install '.[test]' (the container has it)" >&2
    exit 2
fi
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "gpu_check: $py cannot import torch; activate the environment or set PYTHON" >&2
    exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device on $(hostname)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpus.csv"
"$py" -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)" \
    | tee "$out/versions.txt"

part gpu_tests "$py" -m pytest tests/gpu -q -rs -p no:cacheprovider
xdist=()
if "$py" -c "import xdist" 2>/dev/null; then xdist=(-n "$workers"); fi
part suite "$py" -m pytest -m "not slow" -v "${xdist[@]}" -rfE --tb=short -p no:cacheprovider tests
part bench_step "$py" scripts/bench_step.py --device cuda --repeats 3
part bench_loss "$py" scripts/bench_loss.py --device cuda --tp 1 --dtype bfloat16 --quick
if "$py" -c "import vllm" 2>/dev/null; then  # rollout tokens/s: static vs vllm (bf16), prefix reuse across turns
    part bench_rollout "$py" scripts/bench_rollout.py --device cuda --columns static vllm --repeats 3
fi
part train "$py" -m nemo_craft train trainer.max_steps=6 trainer.val_every=3 model.params_dtype=bf16 \
    logging.progress_bar=false "run_dir=$out/train"
echo "gpu_check: logs in $out; exit $status"
exit $status
