"""Two megatron-core 0.16 settings that give wrong numbers, without an error, when left at their
defaults (docs/megatron_notes.md). Applied by the provider on every machine, GPUs included: the bugs
are in megatron-core's schedules and gradient finalisation, not in the CPU mode.
"""

from __future__ import annotations

__all__ = ["use_unbatched_p2p_for_interleaved_pipeline", "use_finalize_model_grads"]


def use_unbatched_p2p_for_interleaved_pipeline(config) -> None:
    """Bug 1: the interleaved (virtual pipeline) 1F1B schedule at PP=2 with megatron-core's default
    ``batch_p2p_comm=True`` mismatches the forward and backward sends between the two ranks, and
    the losses of later micro-batches come out wrong. Megatron-LM's argument checks force
    ``overlap_p2p_comm=True, batch_p2p_comm=False`` for any virtual pipeline; megatron-core does
    not. Set the same here whenever VPP is on (PP=4 is correct either way; this keeps one rule).
    ``config`` is the model's TransformerConfig, which the schedules read.
    """
    if config.virtual_pipeline_model_parallel_size is not None and config.pipeline_model_parallel_size > 1:
        config.overlap_p2p_comm = True
        config.batch_p2p_comm = False


def use_finalize_model_grads(config) -> None:
    """Bug 2: without ``config.finalize_model_grads_func``, the schedules never all-reduce the
    gradients of parameters replicated over TP whose gradients are partial per rank: the norm
    weights under sequence parallel (marked ``sequence_parallel``), Qwen3's q/k norm weights,
    and the tied embedding copies across pipeline stages. The replicas then drift apart across
    ranks. ``finalize_model_grads`` does those reductions (plus the data-parallel one) at the end
    of ``forward_backward_func``; it needs the model chunks wrapped in megatron's
    DistributedDataParallel, which the trainer does.
    """
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads
