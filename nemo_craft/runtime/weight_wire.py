"""The policy's weights over the wire, from a training rank to the generation ranks, in buckets
(docs/async.md#weights-over-the-wire).

    # training rank 0, after an update (every rank of its TP group iterates full_hf_weights)
    sender.send(full_hf_weights(chunks, model_cfg), version=step)
    # a generation rank, before it generates with version >= v
    version, tensors = recv_weights(wire, src=0)
    load_hf_tensors(chunks, model_cfg, tensors)

The weights travel in Hugging Face names and layout (the project's mapping, ``models/refit.py``:
megatron's TP shards gathered and merged as the export does), so the generation side cuts its own
shards whatever its layout. A bucket is the bytes of up to ``bucket_bytes`` of tensors, preceded
by its names, shapes and dtypes; the receiver rebuilds each tensor from its bytes, so the engine
gets the trainer's weights bit for bit. The last message is an empty bucket with the version.

Point-to-point on ``wire``, a process group over the whole world (``runtime/disaggregated.py``);
messages between one pair arrive in the order sent.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable, Iterator
from typing import Optional

import torch

from nemo_craft.models.hf_mapping import global_named_parameters, read_tp_shard, weight_rule

__all__ = ["send_object", "recv_object", "WeightSender", "recv_weights", "load_hf_tensors", "BUCKET_BYTES"]

BUCKET_BYTES = 256 << 20
"""Bytes of one bucket (the largest single tensor goes alone when it is larger)."""


def send_object(wire, obj, dst: int) -> None:
    """A picklable object to ``dst``: its length, then its bytes (paired with ``recv_object``)."""
    data_U8 = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    wire.send([torch.tensor([data_U8.numel()], dtype=torch.int64)], dst, 0).wait()
    wire.send([data_U8], dst, 0).wait()


def recv_object(wire, src: int):
    """The object ``send_object`` sent from ``src``."""
    n_1 = torch.zeros(1, dtype=torch.int64)
    wire.recv([n_1], src, 0).wait()
    data_U8 = torch.empty(int(n_1), dtype=torch.uint8)
    wire.recv([data_U8], src, 0).wait()
    return pickle.loads(data_U8.numpy().tobytes())


def _buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[tuple[list, torch.Tensor]]:
    """(header [(name, shape, dtype)], bytes [n] uint8 on the CPU): a copy of the tensors, so the
    caller may update its weights while the bytes are on their way."""
    header, parts, size = [], [], 0
    for name, tensor in named:
        t = tensor.detach().contiguous()
        if parts and size + t.nbytes > bucket_bytes:
            yield header, torch.cat(parts)
            header, parts, size = [], [], 0
        header.append((name, tuple(t.shape), t.dtype))
        parts.append(t.reshape(-1).view(torch.uint8).cpu())
        size += t.nbytes
    if parts:
        yield header, torch.cat(parts)


def _send_bucket(wire, header: list, data_U8: torch.Tensor, dst: int) -> None:
    send_object(wire, header, dst)
    wire.send([data_U8], dst, 0).wait()


def _recv_bucket(wire, header: list, src: int) -> list[tuple[str, torch.Tensor]]:
    sizes = [torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() for _, shape, dtype in header]
    data_U8 = torch.empty(sum(sizes), dtype=torch.uint8)
    wire.recv([data_U8], src, 0).wait()
    out, start = [], 0
    for (name, shape, dtype), n in zip(header, sizes):
        out.append((name, data_U8[start : start + n].view(dtype).reshape(shape)))
        start += n
    return out


class WeightSender:
    """Sends each version to the generation ranks from a background thread: the update's weights
    are copied into buckets first (so the next step may change them), then the trainer goes on
    while the generation ranks take them when they are ready. One version in flight at a time."""

    def __init__(self, wire, dsts: list[int], bucket_bytes: int = BUCKET_BYTES):
        self.wire, self.dsts, self.bucket_bytes = wire, list(dsts), bucket_bytes
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def send(self, named: Iterable[tuple[str, torch.Tensor]], *, version: int) -> None:
        buckets = list(_buckets(named, self.bucket_bytes))
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(buckets, version), daemon=True)
        self._thread.start()

    def _run(self, buckets: list, version: int) -> None:
        try:
            for dst in self.dsts:
                for header, data_U8 in buckets:
                    _send_bucket(self.wire, header, data_U8, dst)
                send_object(self.wire, {"version": version}, dst)
        except BaseException as err:  # re-raised on the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Until the version in flight has reached every generation rank."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise RuntimeError(f"sending the weights to the generation ranks failed: {self._error}")


def recv_weights(wire, src: int) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, {hf_name: tensor}) of the next version ``src`` sends."""
    tensors: dict[str, torch.Tensor] = {}
    while True:
        header = recv_object(wire, src)
        if isinstance(header, dict):
            return int(header["version"]), tensors
        tensors.update(_recv_bucket(wire, header, src))


def load_hf_tensors(chunks, model_cfg, tensors: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of every parameter of ``chunks`` from full Hugging Face tensors
    (the loader of checkpoints, ``read_tp_shard``, reading from memory): no restart, no file."""
    from megatron.core import parallel_state as ps

    def read(name, rows=None, cols=None):
        t = tensors[name]
        if rows is not None:
            t = t[rows[0] : rows[1]]
        if cols is not None:
            t = t[:, cols[0] : cols[1]]
        return t

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for chunk in chunks:
            for name, param in global_named_parameters(chunk):
                param.copy_(read_tp_shard(weight_rule(name, model_cfg), read, model_cfg, tp_rank, tp_size))
