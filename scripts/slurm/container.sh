# The srun flags that put a job's tasks in its container, and the ranks per node. Sourced by
# train.sbatch and sweep_array.sbatch (after CODE_DIR and LOG_DIR are set); the two modes differ
# only in these flags:
#
#   CONTAINER_IMAGE=/path/image.sqsh (or a registry image): pyxis/enroot's --container-* flags; the
#       checkout is mounted at /workspace/nemo_craft, LOG_DIR and EXTRA_MOUNTS at their paths, and
#       every absolute path among the run's overrides (model.hf_path=/lustre/hf/Qwen3-8B,
#       env.config.corpus_path=/data/wiki.jsonl) at the same path (its directory, for a file), so
#       what the command line names is what the ranks see. Outputs (run_dir, checkpoint.dir, a
#       *cache_dir) are created first; an input path that does not exist on this node and is not
#       under an EXTRA_MOUNTS destination stops the job before srun, naming it.
#   CONTAINER_IMAGE=none: bare mode, the tasks run on the node's own Python environment in
#       CODE_DIR (the environment of `sbatch`, PATH and a venv's activation included, is passed on
#       as SLURM does by default). For clusters without pyxis, and for the tests on a CPU machine.
#
# container_setup OVERRIDES...  sets SRUN_CONTAINER (an array of srun flags) or returns 2 after one
#                               line on stderr.
# ranks_per_node                sets GPUS_PER_NODE (what launch.sh reads): the GPUs SLURM gave the
#                               job on this node, or NPROC_PER_NODE where it gave none
#                               (sbatch --gpus-per-node=0 on a CPU node); NPROC_PER_NODE wins when set.
CONTAINER_WORKDIR=/workspace/nemo_craft

_under_extra_mount() {  # _under_extra_mount PATH: PATH is at or below an EXTRA_MOUNTS destination
  local mount dst
  IFS=',' read -r -a _mounts <<< "${EXTRA_MOUNTS:-}"
  for mount in "${_mounts[@]}"; do
    dst="${mount#*:}"
    dst="${dst%%:*}"   # src:dst[:flags]
    [[ -n "${dst}" && ( "$1" == "${dst}" || "$1" == "${dst%/}/"* ) ]] && return 0
  done
  return 1
}

container_setup() {
  SRUN_CONTAINER=()
  if [[ "${CONTAINER_IMAGE}" == "none" ]]; then
    SRUN_CONTAINER=(--chdir="${CODE_DIR}")
    return 0
  fi
  local mounts="${CODE_DIR}:${CONTAINER_WORKDIR},${LOG_DIR}:${LOG_DIR}" arg key value dir
  [[ -n "${EXTRA_MOUNTS:-}" ]] && mounts="${mounts},${EXTRA_MOUNTS}"
  for arg in "$@"; do
    [[ "${arg}" == *=/* ]] || continue
    key="${arg%%=*}"
    value="${arg#*=}"
    _under_extra_mount "${value}" && continue
    case "${key}" in
      run_dir | checkpoint.dir | *cache_dir) mkdir -p "${value}" ;;
    esac
    if [[ -d "${value}" ]]; then
      dir="${value}"
    elif [[ -e "${value}" ]]; then
      dir="$(dirname "${value}")"
    else
      echo "${key}=${value}: no such path on $(hostname -s), so it cannot be mounted into the container;" \
           "fix the path, or mount the directory that holds it with EXTRA_MOUNTS=SRC:DST (DST a parent of it)" >&2
      return 2
    fi
    [[ ",${mounts}," == *",${dir}:${dir},"* ]] || mounts="${mounts},${dir}:${dir}"
  done
  SRUN_CONTAINER=(--container-image="${CONTAINER_IMAGE}" --container-mounts="${mounts}"
                  --container-workdir="${CONTAINER_WORKDIR}" --no-container-mount-home)
}

ranks_per_node() {
  local n="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}"
  if ! [[ "${n}" =~ ^[0-9]+$ ]] || (( n < 1 )); then
    echo "ranks per node: SLURM gave this job no GPU on this node (SLURM_GPUS_ON_NODE='${SLURM_GPUS_ON_NODE:-}')" \
         "and NPROC_PER_NODE='${NPROC_PER_NODE:-}'; set NPROC_PER_NODE to a positive integer" >&2
    return 2
  fi
  GPUS_PER_NODE="${n}"
  export GPUS_PER_NODE
}
