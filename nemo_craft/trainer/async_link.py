"""The training side of a disaggregated run (docs/async.md): batches in, weights out.

    link = AsyncLink(run, sides, dp_rank, dp_size)
    link.start(step, named_weights)        # hello + the weights of version ``step``
    trajs, stats = link.batch(step)        # this data-parallel rank's trajectories of ``step``
    link.send_weights(named_weights, version=step + 1)   # after the update
    link.close(step)                       # drain what is still coming, then stop the generators

Only training rank 0 sends weights (every rank of its tensor-parallel group gathers them with it:
``full_hf_weights`` is collective); each training rank receives its own data-parallel rank's
batch from the generation rank that serves it. The counterpart is
``runtime/generation_worker.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from nemo_craft.parallel.reductions import reduce_named
from nemo_craft.runtime.disaggregated import Sides, batch_version
from nemo_craft.runtime.generation_worker import recv_batch, send_hello
from nemo_craft.runtime.weight_wire import WeightSender, send_object

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["AsyncLink", "staleness_stats"]


class AsyncLink:
    def __init__(self, run: RunConfig, sides: Sides, *, dp_rank: int, dp_size: int):
        self.run, self.sides = run, sides
        self.dp_rank, self.dp_size = dp_rank, dp_size
        gen = sides.generation_world_ranks
        self.src = gen[dp_rank % len(gen)]
        self.sender = WeightSender(sides.wire, gen) if sides.world_rank == 0 else None
        ckpt = run.checkpoint
        self.save_every = ckpt.save_every if ckpt.dir is not None else 0
        self.start_step = 0
        self.sent = -1
        """The last version sent (every training rank counts it, only rank 0 sends)."""
        self.received = -1
        """The last step whose batch this rank received."""

    def start(self, step: int, named: Iterable) -> None:
        self.start_step = step
        self.received = step - 1
        send_hello(self.sides, dp_rank=self.dp_rank, dp_size=self.dp_size, start_step=step)
        self.send_weights(named, version=step)

    def send_weights(self, named: Iterable, *, version: int) -> None:
        """Version ``version`` to every generation rank (rank 0; the others only iterate ``named``)."""
        if self.sender is not None:
            self.sender.send(named, version=version)
        else:
            for _ in named:  # a collective over the TP group: every rank takes part
                pass
        self.sent = version

    def needs(self, version: int) -> bool:
        """Whether a generation rank will still read version ``version`` (a batch before the
        end is generated with it or a later one)."""
        last = self.run.trainer.max_steps - 1
        return version <= self._version_of(last)

    def batch(self, step: int) -> tuple[list, dict]:
        """(trajectories, timings) of ``step`` for this data-parallel rank."""
        t0 = time.perf_counter()
        msg = recv_batch(self.sides, self.src)
        wait = time.perf_counter() - t0
        if msg["step"] != step:
            raise RuntimeError(f"generation sent the batch of step {msg['step']}, the trainer is at step {step}")
        self.received = step
        timings = {"time/train_wait_s": wait, "time/generation_wait_s": msg["generation_wait_s"]}
        return msg["trajectories"], timings

    def close(self, step: int) -> None:
        """Take the batches the generation ranks will still send (from versions already sent)
        and drop them, then send the stop; a stop between checkpoints discards that work (the
        resumed run regenerates it from the checkpoint's weights)."""
        for t in range(self.received + 1, self.run.trainer.max_steps):
            if self._version_of(t) > self.sent:
                break
            recv_batch(self.sides, self.src)
        if self.sender is not None:
            self.sender.wait()
            for dst in self.sides.generation_world_ranks:
                send_object(self.sides.wire, {"version": -1}, dst)

    def _version_of(self, step: int) -> int:
        k = self.run.rollout.max_staleness
        return batch_version(step, max_staleness=k, start_step=self.start_step, save_every=self.save_every)


def staleness_stats(trajs, step: int, dp_group, device) -> dict:
    """``rollout/staleness_mean|max``: how many versions behind the trained step each turn's
    weights were, over every data-parallel rank's turns."""
    ages = [step - v for tr in trajs for v in tr.policy_versions]
    sums = reduce_named({"age": float(sum(ages)), "turns": float(len(ages))}, dp_group, device=device)
    top = reduce_named({"age": float(max(ages, default=0))}, dp_group, op="max", device=device)
    return {"rollout/staleness_mean": sums["age"] / max(sums["turns"], 1.0), "rollout/staleness_max": top["age"]}
