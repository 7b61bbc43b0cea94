"""A generation rank of a disaggregated run (docs/async.md): the engine and the environments.

    serve_generation(run, sides)      # returns when the trainers say stop

It builds the policy on its own (tensor parallel 1: each generation rank is one engine), takes
the weights the trainers send (``weight_wire``), and rolls out each step's batch for the
data-parallel ranks it serves (rank r is served by generation rank r mod generation_ranks) with
exactly the task seeds, sampling seeds and group ids those ranks would have used colocated. The
batch of step t is generated with the weights of ``batch_version(t)``: at most
``rollout.max_staleness`` versions old. Every turn records that version.

Messages, all on the wire, each paired with the trainers' side (``trainer/async_link.py``):
from each training rank its data-parallel coordinates (``hello``); from training rank 0 the
start step and then every version's weights (``recv_weights``) or a stop; to each training rank
of a data-parallel rank its step's batch (``send_batch``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from nemo_craft.runtime.disaggregated import Sides, batch_version, step_tasks
from nemo_craft.runtime.policy_stack import PolicyStack
from nemo_craft.runtime.weight_wire import load_hf_tensors, recv_object, recv_weights, send_object
from nemo_craft.seeds import step_sampling_seed

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["serve_generation", "send_hello", "recv_hello", "send_batch", "recv_batch", "Stop"]


class Stop(Exception):
    """The trainers asked this generation rank to stop."""


def send_hello(sides: Sides, *, dp_rank: int, dp_size: int, start_step: int) -> None:
    """A training rank's coordinates (and the run's start step) to every generation rank."""
    hello = {"world_rank": sides.world_rank, "dp_rank": dp_rank, "dp_size": dp_size, "start_step": start_step}
    for dst in sides.generation_world_ranks:
        send_object(sides.wire, hello, dst)


def recv_hello(sides: Sides) -> list[dict]:
    """Every training rank's ``send_hello``, in world-rank order."""
    return [recv_object(sides.wire, src) for src in range(sides.train_ranks)]


def send_batch(sides: Sides, batch: dict, dsts: list[int]) -> None:
    """One step's trajectories of one data-parallel rank, with their version and timings."""
    for dst in dsts:
        send_object(sides.wire, batch, dst)


def recv_batch(sides: Sides, src: int) -> dict:
    return recv_object(sides.wire, src)


class _Engine:
    """The policy of this generation rank and the version of its weights."""

    def __init__(self, run: RunConfig, sides: Sides):
        gen_parallel = dataclasses.replace(
            run.parallel,
            tensor_model_parallel_size=1,
            pipeline_model_parallel_size=1,
            virtual_pipeline_model_parallel_size=None,
            context_parallel_size=1,
            sequence_parallel=False,
        )
        self.run = dataclasses.replace(run, parallel=gen_parallel)
        self.sides = sides
        self.stack = PolicyStack.build(self.run, seed=run.seed, for_training=False)
        self.runner = self.stack.start_episodes(self.run, validation=False)
        self.version = -1
        self.wait_s = 0.0

    def update_to(self, version: int) -> None:
        """Load versions from training rank 0 until this one (the wait is ``generation_wait_s``)."""
        while self.version < version:
            t0 = time.perf_counter()
            got, tensors = recv_weights(self.sides.wire, src=0)
            self.wait_s += time.perf_counter() - t0
            if got < 0:
                raise Stop()
            load_hf_tensors(self.stack.chunks, self.run.model, tensors)
            self.stack.generator.weights_changed()  # an engine with its own copy (vllm) refits
            self.version = got


def serve_generation(run: RunConfig, sides: Sides) -> None:
    """Roll out every step's batches until the trainers send the stop (version < 0)."""
    engine = _Engine(run, sides)
    hellos = recv_hello(sides)
    dp_size, start = hellos[0]["dp_size"], hellos[0]["start_step"]
    ranks_of_dp = {r: [h["world_rank"] for h in hellos if h["dp_rank"] == r] for r in range(dp_size)}
    mine = [r for r in range(dp_size) if r % len(sides.generation_world_ranks) == sides.side_rank]
    ckpt = run.checkpoint
    save_every = ckpt.save_every if ckpt.dir is not None else 0
    r_cfg = run.rollout
    try:
        for step in range(start, run.trainer.max_steps):
            engine.wait_s = 0.0
            version = batch_version(step, max_staleness=r_cfg.max_staleness, start_step=start, save_every=save_every)
            engine.update_to(version)
            for dp_rank in mine:
                t0 = time.perf_counter()
                seeds, first = step_tasks(run.seed, step, r_cfg.tasks_per_step, dp_rank, dp_size)
                trajs = engine.runner.run(
                    seeds, seed=step_sampling_seed(run.seed, step), group_offset=first, dp_rank=dp_rank
                )
                for tr in trajs:  # one version per batch: sibling groups are whole and of one policy
                    tr.policy_versions = [engine.version] * max(tr.num_turns, 1)
                batch = {
                    "step": step,
                    "version": engine.version,
                    "trajectories": trajs,
                    "rollout_s": time.perf_counter() - t0,
                    "generation_wait_s": engine.wait_s,
                }
                send_batch(sides, batch, ranks_of_dp[dp_rank])
        engine.update_to(run.trainer.max_steps + 1)  # only the stop can come now
    except Stop:
        pass
    finally:
        engine.runner.close()
