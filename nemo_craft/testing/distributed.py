"""Run a function on a parallel layout in spawned ranks: the project's distributed test harness.

    results = run_distributed(body, world_size=4, tp=2, pp=2, args=(x,))

starts ``world_size`` processes, initialises torch.distributed and megatron's parallel state with
the layout, calls ``body(*args)`` on every rank and returns the ranks' return values, in rank
order. A rank that raises, or a run past ``timeout``, fails the call; every rank is killed, so no
process is left behind. ``device`` is ``"cpu"`` (gloo, the default unless
``NEMO_CRAFT_TEST_DEVICE`` says otherwise) or ``"cuda"`` (NCCL). Details:
docs/design.md#the-distributed-test-harness.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from nemo_craft.parallel.rendezvous import free_port

__all__ = ["Layout", "run_distributed", "current_layout", "free_port", "DistributedTestError"]

_PRELOAD = ["torch", "megatron.core", "megatron.core.parallel_state", "nemo_craft.parallel.initialize"]
_LAYOUT: Optional[Layout] = None


@dataclass(frozen=True)
class Layout:
    world_size: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    vpp: Optional[int] = None
    sp: bool = False
    seed: int = 1234
    ep: int = 1
    etp: Optional[int] = None

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp * self.cp)


class DistributedTestError(RuntimeError):
    pass


def current_layout() -> Layout:
    """The layout of the rank this is called on (inside a ``run_distributed`` body)."""
    if _LAYOUT is None:
        raise RuntimeError("current_layout() is only defined inside a run_distributed body")
    return _LAYOUT


DEVICES = ("cpu", "cuda")


def _resolve_device(device: Optional[str], world_size: int) -> str:
    """The device the ranks run on; a clear error where the machine cannot give it."""
    import torch

    chosen = device or os.environ.get("NEMO_CRAFT_TEST_DEVICE") or "cpu"
    if chosen not in DEVICES:
        source = "device" if device else "NEMO_CRAFT_TEST_DEVICE"
        raise ValueError(f"{source}={chosen!r} is not a test device; allowed: {', '.join(DEVICES)}")
    if chosen == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"device='cuda' needs one GPU per rank: world_size={world_size}, "
            f"{torch.cuda.device_count()} GPU(s) visible; run on device='cpu'"
        )
    return chosen


def _rank_main(rank: int, layout: Layout, port: int, fn: Callable, args: Sequence[Any], results) -> None:
    global _LAYOUT
    faulthandler.enable()  # a rank killed by a signal (a C++ abort in gloo) still shows where it was
    try:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(layout.world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        import torch

        torch.set_num_threads(1)  # bit-reproducibility needs a fixed thread count
        from nemo_craft.parallel.config import ParallelConfig  # lazy: the launching process imports no megatron
        from nemo_craft.parallel.initialize import (  # lazy: the launching process imports no megatron
            destroy_parallel,
            initialize_parallel,
        )

        cfg = ParallelConfig(
            tensor_model_parallel_size=layout.tp,
            pipeline_model_parallel_size=layout.pp,
            virtual_pipeline_model_parallel_size=layout.vpp,
            context_parallel_size=layout.cp,
            sequence_parallel=layout.sp,
            expert_model_parallel_size=layout.ep,
            expert_tensor_parallel_size=layout.etp,
            distributed_timeout_minutes=5,
        )
        _LAYOUT = layout
        initialize_parallel(cfg, seed=layout.seed, init_method=f"tcp://127.0.0.1:{port}")
        out = fn(*args)
        # Plain pickle: tensors travel by value, not as shared-memory handles that die with the rank.
        results.put((rank, "ok", pickle.dumps(out)))
        destroy_parallel()
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit
        results.put((rank, "error", traceback.format_exc()))


def _describe_failures(layout: Layout, rank: int, error: str, results, procs, outputs, grace: float = 3.0) -> str:
    """The failure report: every rank that failed within ``grace`` seconds of the first, the
    likely root cause first (a rank whose peer died fails too, with a connection error)."""
    errors = {rank: error}
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            r, status, value = results.get(timeout=max(end - time.monotonic(), 0.01))
        except queue.Empty:
            break
        if status == "error":
            errors[r] = value
    secondary = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    for r, p in enumerate(procs):
        if r not in errors and r not in outputs and not p.is_alive() and p.exitcode not in (0, None):
            errors[r] = f"died with exit code {p.exitcode} without reporting (a signal, os._exit or out of memory)"
    order = sorted(errors, key=lambda r: (any(m in errors[r] for m in secondary), r))
    return "\n".join(f"rank {r} of layout {asdict(layout)} failed:\n{errors[r]}" for r in order)


def _context():
    import torch

    if torch.cuda.is_available():  # NVML only: does not initialise CUDA here
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


@contextlib.contextmanager
def _rank_environment(device: str):
    """The environment the ranks start with (``spawn`` copies ``os.environ`` at start)."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def run_distributed(
    fn: Callable,
    *,
    world_size: int,
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    vpp: Optional[int] = None,
    sp: bool = False,
    seed: int = 1234,
    ep: int = 1,
    etp: Optional[int] = None,
    timeout: float = 180.0,
    args: Sequence[Any] = (),
    device: Optional[str] = None,
) -> list:
    """Run ``fn(*args)`` on every rank of the layout; return the per-rank results."""
    if world_size % (tp * pp * cp) != 0:
        raise ValueError(f"world_size={world_size} is not divisible by tp*pp*cp={tp * pp * cp}")
    device = _resolve_device(device, world_size)
    layout = Layout(world_size=world_size, tp=tp, pp=pp, cp=cp, vpp=vpp, sp=sp, seed=seed, ep=ep, etp=etp)
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [
        # Not daemonic: megatron's checkpoint writer forks workers, which daemonic processes may not.
        # Every rank is killed on the way out below, so none is left behind.
        ctx.Process(target=_rank_main, args=(r, layout, port, fn, tuple(args), results), daemon=False)
        for r in range(world_size)
    ]
    with _rank_environment(device):
        for p in procs:
            p.start()
    outputs: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(outputs))
                raise DistributedTestError(
                    f"timed out after {timeout:.0f}s on layout {asdict(layout)}; ranks {missing} "
                    "had not finished (a hang in a collective, or the timeout is too short)"
                )
            try:
                rank, status, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [
                    r
                    for r, p in enumerate(procs)
                    if r not in outputs and not p.is_alive() and p.exitcode not in (0, None)
                ]
                if dead:
                    raise DistributedTestError(
                        f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} on layout "
                        f"{asdict(layout)} without reporting (killed by a signal or out of memory)"
                    ) from None
                continue
            if status == "error":
                raise DistributedTestError(_describe_failures(layout, rank, value, results, procs, outputs))
            outputs[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=5 if len(outputs) == world_size else 0.1)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    return [outputs[r] for r in range(world_size)]
