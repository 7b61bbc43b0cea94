"""Rank bodies for test_harness.py (module level, so ranks can import them)."""

import os
import time

import torch
import torch.distributed as dist


def report_layout():
    from megatron.core import parallel_state as ps

    from nemo_craft.parallel.cpu_mode import cpu_mode_active
    from nemo_craft.testing.distributed import current_layout

    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return dict(
        rank=dist.get_rank(),
        pid=os.getpid(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        layout_dp=current_layout().dp,
        total=t.item(),
        cpu_mode=cpu_mode_active(),
        backend=dist.get_backend(),
    )


def fail_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("deliberate failure on rank one")
    dist.barrier()  # rank 0 would hang here forever without the harness
    return "unreachable"


def hang_forever(pid_file):
    with open(f"{pid_file}.{dist.get_rank()}", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)
