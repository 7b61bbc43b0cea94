"""The policy's weights as full Hugging Face tensors on every rank, for a serving engine's refit.

    for hf_name, tensor in full_hf_weights(chunks, model_cfg):   # collective over the TP group
        engine_weights[hf_name].copy_(tensor)

A serving engine colocated with training (``nemo_craft.rollout.vllm_backend``) keeps its own copy
of the weights, in Hugging Face names and layout, sharded its own way. After every optimizer step
it is refit from megatron's shards, in memory, one parameter at a time: the tensor-parallel shards
of a parameter are all-gathered over the TP group, merged by the same rules that export uses
(``hf_mapping.merge_tp_shards``) and handed over; the engine cuts its own shard out of the full
tensor. So at most one full parameter (the embedding, for most models) is alive at a time beyond
the two models' own weights.

Only layouts where every rank holds every layer are served: pipeline parallel 1 and one model
chunk (``check_refit_layout``). With pipeline stages each rank would first need the other stages'
layers, and the engine would hold the whole model on every stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.hf_mapping import (
    REPLICATED,
    expected_names,
    global_named_parameters,
    merge_tp_shards,
    weight_rule,
)

__all__ = ["check_refit_layout", "full_hf_weights"]


def check_refit_layout(parallel_cfg, *, what: str = "rollout.generation.backend=vllm") -> None:
    """Refuse a layout the refit does not serve, naming the layout and one that does."""
    pp = parallel_cfg.pipeline_model_parallel_size
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    cp = parallel_cfg.context_parallel_size
    if pp != 1 or vpp not in (None, 1) or cp != 1:
        raise ValueError(
            f"{what} serves layouts where every rank holds the whole model (its weights are refit "
            f"from megatron's tensor-parallel shards); got pipeline_model_parallel_size={pp}, "
            f"virtual_pipeline_model_parallel_size={vpp}, context_parallel_size={cp}. Use tensor "
            "parallel instead (e.g. parallel.tensor_model_parallel_size="
            f"{parallel_cfg.tensor_model_parallel_size * pp * cp} with pipeline and context parallel 1), "
            "or rollout.generation.backend=static"
        )


def full_hf_weights(chunks: Sequence[torch.nn.Module], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, full tensor)`` for every Hugging Face tensor of the model, in a fixed order.

    Collective over the tensor-parallel group: every TP rank must iterate it to the end, in step
    (each parameter is one all-gather). Tensors are detached and in the parameters' dtype; a
    replicated parameter is yielded as the rank's own tensor (no copy: consume it before the next
    optimizer step)."""
    from megatron.core import parallel_state as ps

    if len(chunks) != 1 or ps.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("full_hf_weights needs the whole model on this rank (one chunk, pipeline parallel 1)")
    local = dict(global_named_parameters(chunks[0]))
    tp_size = ps.get_tensor_model_parallel_world_size()
    tp_group = ps.get_tensor_model_parallel_group() if tp_size > 1 else None
    for name in expected_names(cfg):
        rule = weight_rule(name, cfg)
        shard = local[name].detach()
        if rule.kind == REPLICATED or tp_size == 1:
            shards = [shard]
        else:
            shard = shard.contiguous()
            shards = [torch.empty_like(shard) for _ in range(tp_size)]
            dist.all_gather(shards, shard, group=tp_group)
        yield from merge_tp_shards(rule, shards, cfg).items()
