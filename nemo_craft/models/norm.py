"""RMSNorm for megatron-core's local (no Transformer Engine, no apex) spec.

megatron-core's fallback ``WrappedTorchNorm`` asserts that sequence parallel is off
(docs/megatron_notes.md, bug 2). :class:`RMSNorm` is a plain module that works either way: under
sequence parallel each TP rank normalises its own slice of the sequence, so the weight's
gradient on a rank covers only those tokens; the weight is marked ``sequence_parallel=True``
and megatron's ``finalize_model_grads`` all-reduces such gradients over the TP group (the
provider installs it as ``config.finalize_model_grads_func``). The same module serves the
per-head q/k norms of Qwen3, whose gradients ``finalize_model_grads`` sums over TP by name.

Numerics follow Hugging Face's ``Qwen2RMSNorm`` / ``LlamaRMSNorm`` exactly: normalise in fp32,
cast back to the input dtype, then scale by the weight.
"""

from __future__ import annotations

import torch

__all__ = ["RMSNorm"]


class RMSNorm(torch.nn.Module):
    """``y = weight * (x / sqrt(mean(x^2) + eps))`` over the last dimension; ``x`` is ``[..., h]``.

    Signature of megatron's norm modules (``build_module`` passes ``config``, ``hidden_size``,
    ``eps``); the weight is created in ``config.params_dtype``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__()
        if getattr(config, "normalization", "RMSNorm") != "RMSNorm":
            raise ValueError(f"RMSNorm built for normalization={config.normalization!r}")
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # finalize_model_grads all-reduces grads of parameters marked so over TP when sequence
        # parallel is on; TE's and apex's norms mark theirs the same way.
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
