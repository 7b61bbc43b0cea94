"""What every generation backend does around megatron's model: the model's state during generation
(``generation_mode``) and the model-parallel sampling step (``sample_and_share``, and
``skip_draws`` for steps at which no row samples).

Shape letters: B rows being sampled, V' megatron's padded vocabulary, N rows of the batch whose
random draw the sampled rows take part in.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from nemo_craft.rollout.sampling import exponential_noise, sample_next_tokens

__all__ = ["generation_mode", "paged_engine_kwargs", "sample_and_share", "skip_draws"]


def paged_engine_kwargs(config) -> dict:
    """The paged engines' (dynamic, vllm) settings of a ``GenerationConfig``: one home for what both build from."""
    return {
        "max_batch_size": config.max_batch_size,
        "kv_cache_gb": config.kv_cache_gb,
        "max_tokens_per_step": config.max_tokens_per_step,
        "cuda_graphs": config.cuda_graphs,
    }


def sample_and_share(
    logits_BV: torch.Tensor | None,
    batch: int,
    *,
    vocab_size: int,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator,
    device: torch.device,
    draw_rows: tuple[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens_B, logprobs_B)``, the same on every rank of the model-parallel group.

    Sampled on the last pipeline stage (the only one whose ``logits_BV`` is read; [B, V'] there,
    anything elsewhere) by its tensor-parallel rank 0, then broadcast to the TP group and down the
    pipeline: B (token, log-prob) pairs instead of megatron's [B, V'] logits, and one random stream,
    so no rank can draw differently.

    ``draw_rows`` = (N, rows_B): the B rows are rows_B of a batch of N, and the random numbers are
    drawn for all N (so the stream, and each row's draw, is the same whichever rows still run)."""
    from megatron.core import parallel_state as ps

    packed_2B = torch.empty(2, batch, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        noise_BV = None
        if draw_rows is not None and temperature > 0:
            noise_NV = exponential_noise(draw_rows[0], vocab_size, generator=generator, device=device)
            noise_BV = noise_NV[draw_rows[1].to(device)]
        next_B, logp_B = sample_next_tokens(
            logits_BV,
            vocab_size=vocab_size,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            noise_BV=noise_BV,
        )
        packed_2B[0], packed_2B[1] = next_B, logp_B
        if ps.get_tensor_model_parallel_world_size() > 1:
            dist.broadcast(
                packed_2B, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
            )
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            packed_2B, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return packed_2B[0].long(), packed_2B[1].float()


def skip_draws(steps: int, batch: int, *, vocab_size: int, temperature: float, generator, device) -> None:
    """Advance ``generator`` as ``steps`` sampling steps of ``batch`` rows would (greedy draws
    nothing); on the last pipeline stage, the only one that draws."""
    from megatron.core import parallel_state as ps

    if temperature > 0 and steps > 0 and ps.is_pipeline_last_stage(ignore_virtual=True):
        noise_NV = exponential_noise(batch, vocab_size, generator=generator, device=device)
        for _ in range(steps - 1):
            noise_NV.exponential_(1.0, generator=generator)


@contextlib.contextmanager
def generation_mode(model: torch.nn.Module):
    """Eval mode, no sequence parallel and no context parallel while generating (megatron's static
    path supports neither; for the dynamic path sequence parallel only pads the token count, and
    without it the math is the same): every CP rank generates its data-parallel rank's whole
    sequences, as at CP 1. All restored afterwards, with RoPE's cache cleared (its entries made
    under inference mode must not reach a training forward) and megatron's global memory buffer
    renewed."""
    from megatron.core.transformer.utils import set_model_to_sequence_parallel
    from megatron.core.utils import get_model_config, unwrap_model

    from nemo_craft.parallel.context_parallel import context_parallel_off  # lazy: imports megatron

    was_training = model.training
    unwrapped = unwrap_model(model)
    sequence_parallel = get_model_config(model).sequence_parallel
    if sequence_parallel:
        set_model_to_sequence_parallel(unwrapped, False)
    model.eval()
    try:
        with context_parallel_off(model):
            yield
    finally:
        if sequence_parallel:
            set_model_to_sequence_parallel(unwrapped, True)
        model.train(was_training)
        _clear_rotary_cache()
        _reset_global_memory_buffer()


def _reset_global_memory_buffer() -> None:
    """megatron's global memory buffer (the scratch of the TP / sequence-parallel all-gathers) is
    allocated on first use; allocated during generation it is an inference tensor, and the next
    training forward under sequence parallel fails writing into it ("Inplace update to inference
    tensor outside InferenceMode"). A fresh buffer is allocated by training on its first use."""
    from megatron.core import parallel_state as ps

    ps.destroy_global_memory_buffer()
    ps._set_global_memory_buffer()


def _clear_rotary_cache() -> None:
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    cache_clear = getattr(RotaryEmbedding.forward, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
