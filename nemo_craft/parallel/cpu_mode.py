"""Run the real megatron-core on a machine without CUDA (the "CPU mode").

megatron-core (0.16 to 0.19, see ``mcore_compat``) assumes CUDA in a few dozen places. On a
machine where ``torch.cuda.is_available()`` is False, :func:`enable_cpu_mode` makes those places
run on the CPU, so that the same megatron code paths (GPTModel, TP/PP/DP/VPP/SP, the pipeline
schedules, the (distributed) optimizer, dist_checkpointing, the static inference engine) run on
the gloo backend. Nothing here is active on a machine with CUDA: :func:`enable_cpu_mode` refuses
to run there, and :func:`maybe_enable_cpu_mode` (what the rest of the project calls) only enters
the mode when CUDA is absent. Which call sites need what, and why:
docs/design.md#running-megatron-core-without-a-gpu-the-cpu-mode.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["cpu_mode_active", "enable_cpu_mode", "maybe_enable_cpu_mode", "compute_device"]

_STATE = threading.Lock()
_ACTIVE = False
_MODE: _CudaToCpuMode | None = None

_CPU = torch.device("cpu")


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is a CUDA ordinal in torch's device arguments (megatron passes
    # torch.cuda.current_device()).
    return isinstance(device, int) and not isinstance(device, bool)


def _cuda_type_name(tensor: torch.Tensor) -> str:
    name = torch.Tensor.type(tensor)  # e.g. "torch.FloatTensor"
    return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda") else name


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU for every torch call made under it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.autograd.backward or func is torch.Tensor.backward:
            return self._backward(func, args, kwargs)
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _cuda_type_name(args[0])
        if func is torch.Tensor.pin_memory:
            return args[0]
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs = dict(kwargs, device=_CPU)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)

    def _backward(self, func, args, kwargs):
        """Run the autograd engine with this mode pushed again.

        A mode is popped while its ``__torch_function__`` runs, so calling ``func`` here would
        run every backward of the graph without the mode, and megatron's backward functions
        allocate on ``torch.cuda.current_device()`` (the sequence-parallel reduce-scatter in
        ``LinearWithGradAccumulationAndAsyncCommunication.backward``). So this replays
        ``torch.autograd.backward``'s argument handling and calls the engine under the mode.
        """
        from torch.autograd import _make_grads, _tensor_or_tensors_to_tuple
        from torch.autograd.graph import _engine_run_backward

        if func is torch.Tensor.backward:
            tensor, *rest = args
            names = ("gradient", "retain_graph", "create_graph", "inputs")
            opts = dict(zip(names, rest), **kwargs)
            tensors, grads = (tensor,), opts.get("gradient")
        else:
            tensors, *rest = args
            names = ("grad_tensors", "retain_graph", "create_graph", "grad_variables", "inputs")
            opts = dict(zip(names, rest), **kwargs)
            tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
            grads = opts.get("grad_tensors")
        inputs = opts.get("inputs")
        inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
        create_graph = bool(opts.get("create_graph", False))
        retain_graph = opts.get("retain_graph")
        retain_graph = create_graph if retain_graph is None else retain_graph
        grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grads, len(tensors)), is_grads_batched=False)
        with self:
            _engine_run_backward(
                tensors, grads, retain_graph, create_graph, inputs, allow_unreachable=True, accumulate_grad=True
            )


class _InertEvent:
    """Stand-in for ``torch.cuda.Event``: records nothing, times nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


class _InertStream(_InertEvent):
    """Stand-in for ``torch.cuda.Stream``: work runs synchronously on the CPU."""

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _InertEvent()


class _InertNvtx:
    @staticmethod
    def range_push(*args, **kwargs):
        pass

    @staticmethod
    def range_pop(*args, **kwargs):
        pass

    @staticmethod
    @contextlib.contextmanager
    def range(*args, **kwargs):
        yield


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    # torch.manual_seed would call torch.cuda.manual_seed_all, which must stay untouched
    # (routing it here recursed); the CPU default generator is all there is.
    torch.default_generator.manual_seed(int(seed))


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.synchronize = lambda *a, **k: None
    cuda.Event = _InertEvent
    cuda.Stream = _InertStream
    cuda.current_stream = lambda *a, **k: _InertStream()
    cuda.default_stream = lambda *a, **k: _InertStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.set_device = lambda *a, **k: None
    cuda.nvtx = _InertNvtx
    cuda.memory_stats = lambda *a, **k: {}
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.get_rng_state = _cpu_get_rng_state
    cuda.set_rng_state = _cpu_set_rng_state
    cuda.manual_seed = _cpu_manual_seed
    cuda.random.get_rng_state = _cpu_get_rng_state
    cuda.random.set_rng_state = _cpu_set_rng_state


def _patch_megatron_rng() -> None:
    import logging

    from megatron.core.tensor_parallel import random as mcore_random

    # The tracker warns when the CPU generator moves inside a CUDA-RNG fork; here the two
    # are one generator, which the fork saves and restores, so the warning is noise.
    logging.getLogger(mcore_random.__name__).setLevel(logging.ERROR)

    mcore_random._get_cuda_rng_state = _cpu_get_rng_state
    mcore_random._set_cuda_rng_state = _cpu_set_rng_state


def enable_cpu_mode() -> None:
    """Enter the CPU mode for this process (idempotent). Refuses when CUDA is present."""
    global _ACTIVE, _MODE
    with _STATE:
        if _ACTIVE:
            return
        if torch.cuda.is_available():
            raise RuntimeError(
                "enable_cpu_mode() called on a machine with CUDA; the CPU mode is only for "
                "machines without a GPU. Use maybe_enable_cpu_mode() instead."
            )
        _patch_torch_cuda()
        _patch_megatron_rng()
        _MODE = _CudaToCpuMode()
        _MODE.__enter__()
        _ACTIVE = True


def maybe_enable_cpu_mode() -> bool:
    """Enter the CPU mode when CUDA is absent; returns whether it is active."""
    if not torch.cuda.is_available():
        enable_cpu_mode()
    return _ACTIVE


def cpu_mode_active() -> bool:
    return _ACTIVE


def compute_device() -> torch.device:
    """The device tensors of this process live on: the current GPU, or the CPU in CPU mode."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return _CPU
