"""The reference policy pi_ref: the frozen initial weights, swapped into the policy's modules
for the reference pass and swapped out again (as NeMo-RL does).

Why swapping and not a second model: a second model costs a full copy of the rank's weights
in GPU memory for a pass that runs once a step; swapping keeps the reference on the host
(pinned on CUDA, so the copies run at PCIe/NVLink-C2C speed) and the policy's own weights in a
host stash for the duration of the pass. GPU memory stays that of one model. The swap is exact:
the policy's parameters are restored bit for bit (a plain ``copy_`` in both directions).

Checkpoints hold pi_ref as sharded model state beside the policy (``CheckpointManager``
swaps it in and saves the modules' own ``sharded_state_dict``), so it is written in parallel by
every rank and reshards like the model when a run resumes at another TP / PP / DP layout; on
load the reference is read into the modules and captured from them with :meth:`capture`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator

import torch

__all__ = ["ReferenceWeights", "named_tensors"]


def named_tensors(model_chunks: Iterable[torch.nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and floating-point buffer of the chunks, named ``<chunk>.<name>``."""
    for i, chunk in enumerate(model_chunks):
        for name, param in chunk.named_parameters():
            yield f"{i}.{name}", param
        for name, buf in chunk.named_buffers():
            if buf.is_floating_point():
                yield f"{i}.{name}", buf


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=torch.cuda.is_available())
    out.copy_(tensor.detach())
    return out


class ReferenceWeights:
    """Host copy of the rank's shard of the initial weights."""

    def __init__(self, model_chunks: list[torch.nn.Module]):
        self._ref = {name: _host_copy(t) for name, t in named_tensors(model_chunks)}
        self.token = uuid.uuid4().hex
        """Changes whenever the weights do: a checkpoint that saved this token's pi_ref can lend
        its files to the next one (pi_ref never changes during a run)."""

    def capture(self, model_chunks: list[torch.nn.Module]) -> None:
        """Make the modules' current weights the reference (e.g. after loading pi_ref into them)."""
        names = [name for name, _ in named_tensors(model_chunks)]
        if names != list(self._ref):
            raise ValueError(
                f"the modules' tensors ({len(names)}) are not those the reference was built "
                f"from ({len(self._ref)}): capture from the same model chunks"
            )
        with torch.no_grad():
            for name, t in named_tensors(model_chunks):
                self._ref[name].copy_(t)
        self.token = uuid.uuid4().hex

    @contextlib.contextmanager
    def swapped_in(self, model_chunks: list[torch.nn.Module]):
        """Inside the block the modules compute pi_ref; afterwards pi_theta again, bit for bit."""
        stash = {}
        with torch.no_grad():
            for name, t in named_tensors(model_chunks):
                stash[name] = _host_copy(t)
                t.copy_(self._ref[name], non_blocking=True)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, t in named_tensors(model_chunks):
                    t.copy_(stash[name], non_blocking=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
