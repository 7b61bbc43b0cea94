"""Whether a parallel layout can split a model on a cluster, and which layout would.

``layout_problems`` lists what does not divide (each message names the value and what would);
``layout_warnings`` what divides but is likely a mistake; ``candidate_layouts`` the layouts of a
cluster, smallest model-parallel size first, for the search of one that fits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

__all__ = ["layout_problems", "layout_warnings", "candidate_layouts", "divisors"]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _tp_options(model, cluster) -> list[int]:
    """TP sizes that split the model's heads, key/value heads and MLP and fit in one node."""
    return [
        t
        for t in divisors(cluster.gpus_per_node)
        if model.num_attention_heads % t == 0 and model.num_query_groups % t == 0 and model.ffn_hidden_size % t == 0
    ]


def layout_problems(model, parallel, cluster, workload) -> list[str]:
    """Every reason the layout cannot run, as messages for the user (empty when it can)."""
    tp = parallel.tensor_model_parallel_size
    pp = parallel.pipeline_model_parallel_size
    vpp = parallel.virtual_pipeline_model_parallel_size or 1
    cp = parallel.context_parallel_size
    problems = []
    for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        value = getattr(model, name)
        if value % tp:
            problems.append(
                f"model.{name}={value} is not divisible by parallel.tensor_model_parallel_size={tp}; "
                f"TP sizes that divide the heads, the key/value heads and the MLP and fit in a node of "
                f"{cluster.gpus_per_node} GPUs: {_tp_options(model, cluster)}"
            )
    if model.num_layers % (pp * vpp):
        what = f"pipeline_model_parallel_size={pp}" + (
            f" x virtual_pipeline_model_parallel_size={vpp}" if vpp > 1 else ""
        )
        problems.append(
            f"model.num_layers={model.num_layers} is not divisible by parallel.{what} = {pp * vpp}; "
            f"PP x VPP must be one of {divisors(model.num_layers)}"
        )
    world = cluster.world_size
    if world % (tp * pp * cp):
        fitting = [d for d in divisors(world) if d % (tp * cp) == 0 and model.num_layers % (d // (tp * cp)) == 0]
        problems.append(
            f"GPUs = cluster.nodes x cluster.gpus_per_node = {cluster.nodes} x {cluster.gpus_per_node} = {world} "
            f"is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {tp * pp * cp}; with TP={tp}, CP={cp} "
            f"the pipeline size must make TP x PP x CP one of {fitting or 'no value: change TP or the GPUs'}, "
            f"or use a multiple of {tp * pp * cp} GPUs"
        )
    if parallel.sequence_parallel and workload.seq_length % (tp * cp):
        what = f"tensor_model_parallel_size={tp}" + (f" x context_parallel_size={cp}" if cp > 1 else "")
        problems.append(
            f"plan.seq_length={workload.seq_length} is not divisible by {what}, "
            f"which sequence parallel needs; pad sequences to a multiple of {tp * cp}"
        )
    if cp > 1 and workload.attention == "unfused":
        problems.append(
            f"parallel.context_parallel_size={cp} with plan.attention=unfused: megatron's local attention "
            "(model.core_attention=local) does not split the sequence; use plan.attention=flash (SDPA or TE)"
        )
    if cp > 1 and workload.seq_length % (2 * cp):
        problems.append(
            f"plan.seq_length={workload.seq_length} is not divisible by 2 x context_parallel_size = {2 * cp}, "
            f"which load-balanced context parallel needs; pad sequences to a multiple of {2 * cp}"
        )
    problems += _expert_problems(model, parallel, world)
    padded = model.padded_vocab_size(tp)
    if padded % tp or padded < model.vocab_size:
        problems.append(f"model.vocab_size={model.vocab_size} pads to {padded}, which TP={tp} does not split")
    return problems


def _expert_problems(model, parallel, world: int) -> list[str]:
    """What does not divide in the expert layout (EP x ETP x PP tiles the ranks)."""
    ep, etp = parallel.expert_model_parallel_size, parallel.expert_tensor_size
    pp, tp = parallel.pipeline_model_parallel_size, parallel.tensor_model_parallel_size
    if model.num_experts is None:
        if ep > 1 or etp != tp:
            return [
                f"parallel.expert_model_parallel_size={ep} / expert_tensor_parallel_size={etp} with a dense model "
                "(model.num_experts=null); allowed: 1 and null"
            ]
        return []
    problems = []
    if model.num_experts % ep:
        problems.append(
            f"parallel.expert_model_parallel_size={ep} does not divide model.num_experts={model.num_experts}; "
            f"allowed: {divisors(model.num_experts)}"
        )
    if model.moe_ffn_hidden_size % etp:
        problems.append(
            f"parallel.expert_tensor_parallel_size={etp} does not divide model.moe_ffn_hidden_size="
            f"{model.moe_ffn_hidden_size}; allowed: {divisors(model.moe_ffn_hidden_size)}"
        )
    if world % (ep * etp * pp):
        fitting = (
            [d for d in divisors(world // (etp * pp)) if model.num_experts % d == 0] if world % (etp * pp) == 0 else []
        )
        problems.append(
            f"GPUs = {world} is not divisible by EP x ETP x PP = {ep} x {etp} x {pp} = {ep * etp * pp}; "
            f"with ETP={etp}, PP={pp} parallel.expert_model_parallel_size must be one of {fitting or 'no value'}"
        )
    if tp > 1 and not parallel.sequence_parallel:
        problems.append(
            f"parallel.tensor_model_parallel_size={tp} with experts needs parallel.sequence_parallel=true "
            "(megatron's token dispatcher works on sequence-parallel tokens)"
        )
    return problems


def layout_warnings(model, parallel, cluster, workload, dp: int) -> list[str]:
    """What runs but is probably not what was meant."""
    tp = parallel.tensor_model_parallel_size
    pp = parallel.pipeline_model_parallel_size
    notes = []
    if tp > cluster.gpus_per_node:
        notes.append(
            f"TP={tp} spans nodes ({cluster.gpus_per_node} GPUs a node): its all-reduces of every "
            "layer cross the inter-node network; keep TP within a node and add PP instead"
        )
    if tp > 1 and not parallel.sequence_parallel:
        notes.append(
            f"TP={tp} without sequence_parallel: norm and residual activations are replicated on "
            "every TP rank; set parallel.sequence_parallel=true"
        )
    if dp > 1 and not parallel.use_distributed_optimizer:
        notes.append(
            f"DP={dp} without use_distributed_optimizer: every DP rank holds all Adam states; "
            "set parallel.use_distributed_optimizer=true"
        )
    share = dp * workload.micro_batch_size
    if workload.trajectories_per_step % share:
        notes.append(
            f"{workload.trajectories_per_step} trajectories a step do not split evenly into "
            f"DP={dp} x micro_batch_size={workload.micro_batch_size}"
        )
    microbatches = -(-workload.trajectories_per_step // share)
    if parallel.virtual_pipeline_model_parallel_size and microbatches % pp:
        notes.append(f"the interleaved schedule wants micro-batches per rank ({microbatches}) divisible by PP={pp}")
    if pp > 1 and microbatches < pp:
        notes.append(f"only {microbatches} micro-batches per rank for PP={pp}: the pipeline bubble dominates")
    pad = model.padded_vocab_size(tp) - model.vocab_size
    if pad:
        notes.append(
            f"vocabulary padded from {model.vocab_size} to {model.padded_vocab_size(tp)} "
            f"(+{pad} rows, make_vocab_size_divisible_by={model.make_vocab_size_divisible_by} x TP={tp})"
        )
    return notes


def candidate_layouts(model, parallel, cluster, workload) -> Iterator:
    """ParallelConfigs that divide on ``cluster``, smallest TP x PP first (then smaller PP):
    TP within a node, sequence parallel with TP, the distributed optimizer, CP as given."""
    cp = parallel.context_parallel_size
    world = cluster.world_size
    options = []
    for tp in _tp_options(model, cluster):
        for pp in divisors(model.num_layers):
            if world % (tp * pp * cp):
                continue
            options.append((tp * pp, pp, tp))
    for _, pp, tp in sorted(options):
        candidate = dataclasses.replace(
            parallel,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=None,
            sequence_parallel=tp > 1,
            use_distributed_optimizer=world // (tp * pp * cp) > 1 or parallel.use_distributed_optimizer,
            overlap_param_gather=False,
        )
        if not layout_problems(model, candidate, cluster, workload):
            yield candidate
