"""The GPUs that only generate (``rollout.placement=disaggregated``): their engines' weights, KV
cache and logits, per GPU, and the training ranks' share of the cluster.

A disaggregated run splits the world: ``generation_gpus`` run the engines (``generation_tp`` GPUs
each, their own tensor parallel), the rest train with the planned layout and hold no KV cache.
Whole nodes generate on a multi-node cluster, so that neither side's collectives cross a node
they do not need.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from nemo_craft.planner.config import ClusterConfig, Workload
from nemo_craft.planner.memory import _DTYPE_BYTES, GIB

__all__ = ["GenerationMemory", "training_cluster", "generation_memory"]


@dataclass
class GenerationMemory:
    """Bytes per generation GPU."""

    gpus: int
    tp: int
    engines: int
    rows_per_engine: int
    weights: float
    kv_cache: float
    logits: float
    overhead: float

    @property
    def peak(self) -> float:
        return self.weights + self.kv_cache + self.logits + self.overhead

    def format(self, budget_gb: float) -> str:
        return (
            f"generation: {self.gpus} GPU(s) = {self.engines} engine(s) of TP={self.tp}, {self.rows_per_engine} rows "
            f"each; per GPU weights {self.weights / GIB:.1f} + KV cache {self.kv_cache / GIB:.1f} + logits "
            f"{self.logits / GIB:.1f} + overhead {self.overhead / GIB:.1f} = {self.peak / GIB:.1f} GiB of {budget_gb:g}"
        )


def training_cluster(cluster: ClusterConfig, generation_gpus: int) -> tuple[Optional[ClusterConfig], Optional[str]]:
    """(the cluster the training layout is planned on, None) or (None, why the split is refused)."""
    if not generation_gpus:
        return cluster, None
    world, per_node = cluster.world_size, cluster.gpus_per_node
    if generation_gpus >= world:
        return None, (
            f"rollout.generation_ranks={generation_gpus} leaves no training GPU of {world}; allowed: 1 to {world - 1}"
        )
    if generation_gpus % per_node == 0:
        return dataclasses.replace(cluster, nodes=cluster.nodes - generation_gpus // per_node), None
    if cluster.nodes == 1:
        return dataclasses.replace(cluster, gpus_per_node=per_node - generation_gpus), None
    return None, (
        f"rollout.generation_ranks={generation_gpus} on {cluster.nodes} nodes: whole nodes generate; allowed: a "
        f"multiple of cluster.gpus_per_node={per_node} below {world}"
    )


def generation_memory(model, workload: Workload, total_params: int, padded_vocab: int) -> GenerationMemory:
    """Per generation GPU: its engine's share of the weights (split over the engine's TP), the KV
    cache of the rows it decodes together (paged: ``generation_kv_gb``; static: every row its
    whole sequence), one decode step's logits (fp32, gathered), and the overhead."""
    tp = workload.generation_tp
    gpus = workload.generation_gpus
    engines = max(gpus // tp, 1)
    ab = _DTYPE_BYTES[model.params_dtype]
    share = math.ceil(workload.trajectories_per_step / engines)
    rows = min(workload.generation_batch or share, share)
    kv_heads_local = max(model.num_query_groups // tp, 1)
    if workload.generation_kv_gb is None:
        kv = rows * workload.seq_length * model.num_layers * 2 * kv_heads_local * model.kv_channels * ab
    else:
        kv = workload.generation_kv_gb * GIB
    return GenerationMemory(
        gpus=gpus,
        tp=tp,
        engines=engines,
        rows_per_engine=rows,
        weights=total_params * ab / tp,
        kv_cache=kv,
        logits=rows * padded_vocab * 4,
        overhead=workload.overhead_gb * GIB,
    )
