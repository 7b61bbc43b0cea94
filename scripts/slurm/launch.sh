#!/usr/bin/env bash
# One node's torchrun agent of a multi-node nemo_craft run, built from SLURM's variables.
#
#   srun --ntasks-per-node=1 ... bash scripts/slurm/launch.sh [hydra overrides...]
#
# Every node runs one torchrun agent; the agents meet at a c10d rendezvous on the first node
# (MASTER_ADDR:MASTER_PORT, id = the SLURM job id) and start GPUS_PER_NODE ranks each, which run
# `python -m nemo_craft train checkpoint.resume=auto [overrides]`: a requeued job resumes from
# its last checkpoint. Each rank's stdout/stderr goes to its own file under
# $LOG_DIR/attempt<restart>/node<id>/ (and to the job log, prefixed with the rank).
#
# Reads: SLURM_JOB_ID, SLURM_NNODES, SLURM_NODEID, SLURM_JOB_NODELIST (for MASTER_ADDR when it is
# unset), SLURM_RESTART_COUNT, SLURM_GPUS_ON_NODE; and MASTER_ADDR, MASTER_PORT (default 29500),
# GPUS_PER_NODE, LOG_DIR (default logs/<job id>), TORCHRUN (default torchrun), PYTHON_MODULE
# (default nemo_craft). DRY_RUN=1 prints the command, shell-quoted, instead of running it.
set -euo pipefail

: "${SLURM_JOB_ID:?launch.sh runs inside a SLURM job step (srun): SLURM_JOB_ID is not set}"
: "${SLURM_NNODES:?SLURM_NNODES is not set}"
: "${SLURM_NODEID:?SLURM_NODEID is not set}"
if [[ -z "${MASTER_ADDR:-}" ]]; then
  MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" | head -n 1)"
fi
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
LOG_DIR="${LOG_DIR:-logs/${SLURM_JOB_ID}}"
TORCHRUN="${TORCHRUN:-torchrun}"
PYTHON_MODULE="${PYTHON_MODULE:-nemo_craft}"

cmd=(
  "${TORCHRUN}"
  --nnodes="${SLURM_NNODES}"
  --nproc-per-node="${GPUS_PER_NODE}"
  --node-rank="${SLURM_NODEID}"
  --rdzv-backend=c10d
  --rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}"
  --rdzv-id="${SLURM_JOB_ID}"
  --max-restarts=0
  --log-dir="${LOG_DIR}/attempt${SLURM_RESTART_COUNT:-0}/node${SLURM_NODEID}"
  --redirects=3
  --tee=3
  -m "${PYTHON_MODULE}" train checkpoint.resume=auto "$@"
)

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf -v line '%q ' "${cmd[@]}"
  printf '%s\n' "${line% }"
  exit 0
fi
mkdir -p "${LOG_DIR}"
exec "${cmd[@]}"
