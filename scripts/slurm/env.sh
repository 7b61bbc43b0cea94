# Environment of a multi-node nemo_craft run: sourced by train.sbatch, read by
# scripts/nemo_run/launch.py (lines of the form `export NAME=${NAME:-value}` only, so that a
# value already in the environment wins). Site-specific values (the InfiniBand HCAs, the socket
# interface) are left to the cluster's own settings; uncomment and adapt them if NCCL picks wrong.

# megatron-core: one CUDA work queue, so TP/SP communication overlaps compute in issue order.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# A failed or hung collective aborts the process (a clean error, then requeue) instead of hanging.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Dump the flight recorder of in-flight collectives when a watchdog timeout fires.
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
# InfiniBand: longer transport timeout and more retries ride over fabric hiccups at scale.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-10}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_6,mlx5_7,mlx5_8,mlx5_9
# export NCCL_SOCKET_IFNAME=bond0
# Python output straight to the logs; no tokenizer thread pools fighting the data loader.
export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
