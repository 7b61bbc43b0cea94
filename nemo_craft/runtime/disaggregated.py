"""The world of a disaggregated run split in two sides (docs/async.md#placement).

    sides = split_world(generation_ranks=1, backend="gloo")
    sides.role        # "train" on world ranks 0 .. T-1, "generate" on the last generation_ranks
    sides.wire        # a gloo process group over the whole world: weights and trajectories

Each side gets its own default process group (and so its own megatron parallel state, built
afterwards by ``initialize_parallel`` as usual): the trainers' data-parallel collectives never
wait on a rank that generates. Both groups, and the wire, come from the one rendezvous store of
the launcher (``env://``: torchrun, SLURM, or a single process).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch.distributed as dist

from nemo_craft.seeds import train_task_seed0

__all__ = ["Sides", "split_world", "batch_version", "step_tasks"]


@dataclass
class Sides:
    role: str
    """"train" or "generate"."""
    world_rank: int
    world_size: int
    train_ranks: int
    """World ranks 0 .. train_ranks - 1 train; the rest generate."""
    wire: object
    """A gloo process group over the whole world (its ranks are the world ranks)."""

    @property
    def side_rank(self) -> int:
        return self.world_rank if self.role == "train" else self.world_rank - self.train_ranks

    @property
    def generation_world_ranks(self) -> list[int]:
        return list(range(self.train_ranks, self.world_size))


def split_world(generation_ranks: int, *, backend: str = "gloo", timeout_minutes: float = 30.0) -> Sides:
    """Initialise this rank's side as torch.distributed's default group, and the wire."""
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    train_ranks = world - generation_ranks
    if not 1 <= generation_ranks < world:
        raise ValueError(
            f"rollout.generation_ranks={generation_ranks} leaves no training rank of the world size {world}; "
            f"allowed: 1 to {world - 1}"
        )
    role = "train" if rank < train_ranks else "generate"
    side_rank, side_size = (rank, train_ranks) if role == "train" else (rank - train_ranks, generation_ranks)
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"nemo_craft/{role}", store),
        rank=side_rank,
        world_size=side_size,
        timeout=timeout,
    )
    wire = dist.ProcessGroupGloo(dist.PrefixStore("nemo_craft/wire", store), rank, world, timeout)
    return Sides(role=role, world_rank=rank, world_size=world, train_ranks=train_ranks, wire=wire)


def batch_version(step: int, *, max_staleness: int, start_step: int, save_every: int) -> int:
    """The policy version (optimizer steps taken) whose weights generate the batch of ``step``:
    as old as allowed, ``step - max_staleness``, but never older than the run's first step or
    the last scheduled checkpoint (``save_every`` > 0): the pipeline drains at a checkpoint, so
    it holds no in-flight work and a resumed run continues as the uninterrupted one. A fixed
    schedule, not "the freshest weights that arrived": runs are reproducible."""
    floor = start_step
    if save_every > 0:
        floor = max(floor, step // save_every * save_every)
    return max(step - max_staleness, floor)


def step_tasks(seed: int, step: int, tasks_per_step: int, dp_rank: int, dp_size: int) -> tuple[list[int], int]:
    """(task seeds, index of the first task in the step) of one data-parallel rank's share of ``step``."""
    n_local = tasks_per_step // dp_size
    first = step * tasks_per_step + dp_rank * n_local
    seed0 = train_task_seed0(seed)
    return [seed0 + first + i for i in range(n_local)], first
