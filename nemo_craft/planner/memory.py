"""Memory of one GPU during an RL step: the formulas, one function per term.

Shape letters: s tokens of a sequence on this rank (the sequence over CP), b trajectories of a
micro-batch, h hidden, f ffn hidden, a query heads, g key/value heads, d head dim, V the padded
vocabulary, t TP, L layers. ``ab`` is the byte size of activations (the params dtype: bf16 on
GPUs), all results are bytes.

A mixture of experts (``model.num_experts``): E experts, k of them per token, expert width
f_e, EP / ETP its expert parallel sizes. Its layers keep the routed tokens' expert
activations instead of the dense MLP's, its routers' fp32 logits and probabilities; the
all-to-all dispatcher holds one layer's permuted tokens at a time; a rank's expert weights
are ``num_experts / EP`` experts, their Adam states shard over the expert data-parallel group,
and a frozen router (the RL default) has no gradient and no optimizer state.

The peak is persistent + the largest phase (generation, experience, training) + overhead. What
each term holds, per layer and under context parallel: docs/cluster.md#what-the-planner-counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RankMemory", "dispatcher_bytes", "layer_activation_bytes", "rank_memory", "routed_tokens", "GIB"]

GIB = float(1 << 30)
_DTYPE_BYTES = {"bf16": 2, "fp32": 4}
_LOSS_CHUNK_BUFFERS = 2  # the vocabulary-parallel loss keeps about two [C, V/t] fp32 buffers


@dataclass
class RankMemory:
    """Bytes on one GPU of a pipeline rank (every TP/DP rank of that stage is the same)."""

    weights: float
    grads: float
    optimizer: float
    reference: float
    activations_per_microbatch: float
    """The stage's layers for one micro-batch, with the configured recomputation."""
    activations_per_microbatch_full_recompute: float
    microbatches_in_flight: float
    """Micro-batches (of the whole stage) whose activations are held at the 1F1B peak."""
    train_activations: float
    """All in-flight activations plus the last stage's output-layer terms."""
    logits: float
    """Last stage: a micro-batch's logits and their gradient (params dtype)."""
    loss_chunk: float
    """Last stage: the vocabulary-parallel loss's chunk buffers (fp32)."""
    experience: float
    """Peak of the no-grad passes (old / teacher / reference log-probs)."""
    kv_cache: float
    """Generation: KV cache of the rank's generation batch, plus one decode step's logits."""
    overhead: float
    expert_weights: float = 0.0
    """Of ``weights``: this rank's experts (num_experts / EP per MoE layer, split over ETP)."""
    router_weights: float = 0.0
    """Of ``weights``: the routers (no gradient, no optimizer state when frozen)."""
    dispatcher_buffers: float = 0.0
    """The all-to-all dispatcher's permuted tokens of one layer (in the train and experience peaks)."""

    @property
    def persistent(self) -> float:
        return self.weights + self.grads + self.optimizer + self.reference

    @property
    def phase(self) -> str:
        """Which phase sets the peak: "train", "experience" or "generation"."""
        phases = {"train": self.train_activations, "experience": self.experience, "generation": self.kv_cache}
        return max(phases, key=phases.get)

    @property
    def peak(self) -> float:
        return self.persistent + max(self.train_activations, self.experience, self.kv_cache) + self.overhead


def routed_tokens(model, *, s: int, b: int, tp: int, sp: bool, etp: int) -> float:
    """Token copies one rank's experts process in one MoE layer, with balanced routing: the
    rank's tokens (over TP under SP) x top-k, gathered over ETP after the all-to-all."""
    return s * b / (tp if sp else 1) * model.moe_router_topk * etp


def dispatcher_bytes(model, *, s: int, b: int, tp: int, sp: bool, etp: int, ab: int) -> float:
    """The all-to-all's buffers of one layer: the permuted tokens before and after the exchange."""
    if model.num_experts is None:
        return 0.0
    return 2 * ab * routed_tokens(model, s=s, b=b, tp=tp, sp=sp, etp=etp) * model.hidden_size


def layer_activation_bytes(
    model,
    *,
    s: int,
    b: int,
    tp: int,
    sp: bool,
    recompute: str,
    attention: str,
    ab: int,
    cp: int = 1,
    moe: bool = False,
    etp: int = 1,
) -> float:
    """Bytes one transformer layer keeps for backward, for one micro-batch (see module doc);
    ``s`` is the rank's tokens of a sequence, S / ``cp`` under context parallel; ``moe``: the
    layer has experts (split over ``etp``) instead of a dense MLP."""
    h, f = model.hidden_size, model.ffn_hidden_size
    a, g, d = model.num_attention_heads, model.num_query_groups, model.kv_channels
    residual = s * b * h / (tp if sp else 1)
    if recompute == "full":
        return ab * residual
    x = 4 * ab * residual
    x += ab * s * b * (a * d + 2 * g * d) / tp
    if model.qk_layernorm:
        x += ab * s * b * (a * d + g * d) / tp
    x += ab * s * b * a * d / tp + 4 * b * a * s / tp
    if cp > 1 and recompute != "selective":
        x += ab * s * cp * b * 2 * g * d / tp  # the whole sequence's keys and values, gathered over CP
    if attention == "unfused" and recompute != "selective":
        x += ab * b * a * s * s * cp / tp
    if not moe:
        x += ab * s * b * 3 * f / tp
        return x
    tokens = routed_tokens(model, s=s, b=b, tp=tp, sp=sp, etp=etp)
    x += ab * tokens * (model.hidden_size + 3 * model.moe_ffn_hidden_size / etp)  # expert input, fc1, SwiGLU
    x += 2 * 4 * s * b / (tp if sp else 1) * model.num_experts  # the router's fp32 logits and probabilities
    return x


def _moe_layers(model, stage) -> int:
    """MoE layers among the stage's chunks (their 1-based first layer and count)."""
    pattern = model.moe_layer_pattern()
    return sum(sum(pattern[c.first_layer - 1 : c.first_layer - 1 + c.num_layers]) for c in stage.chunks if c.num_layers)


def rank_memory(model, parallel, workload, stage, *, dp: int, padded_vocab: int) -> RankMemory:
    """The memory of pipeline rank ``stage.pp_rank`` (``stage``: meta_build.StageParams)."""
    tp = parallel.tensor_model_parallel_size
    pp = parallel.pipeline_model_parallel_size
    vpp = parallel.virtual_pipeline_model_parallel_size
    cp = parallel.context_parallel_size
    sp = parallel.sequence_parallel
    r = stage.pp_rank
    pb = ab = _DTYPE_BYTES[model.params_dtype]
    params = stage.params
    v_local = padded_vocab / tp

    weights = params * pb
    experts = getattr(stage, "expert_params", 0)
    router = getattr(stage, "router_params", 0)
    frozen = router if model.num_experts is not None and model.moe_freeze_router else 0
    trained = params - frozen
    grads = trained * (4 if workload.grad_reduce_in_fp32 else pb)
    adam = 12 if pb == 2 else 8  # fp32 master + exp_avg + exp_avg_sq; no master copy for fp32 params
    if parallel.use_distributed_optimizer:
        # dense states shard over DP x CP; the experts' over the expert data-parallel group
        world = dp * tp * pp * cp
        expert_dp = max(world // (parallel.expert_model_parallel_size * parallel.expert_tensor_size * pp), 1)
        optimizer = (trained - experts) * adam / (dp * cp) + experts * adam / expert_dp
    else:
        optimizer = trained * adam
    reference = weights if workload.reference_on_gpu else 0.0

    # -- training: in-flight activations of the 1F1B (or interleaved) schedule
    s = math.ceil(workload.seq_length / cp)
    b = workload.micro_batch_size
    etp = parallel.expert_tensor_size
    layer = dict(tp=tp, sp=sp, attention=workload.attention, ab=ab, cp=cp, etp=etp)
    layers = stage.num_layers
    sparse = _moe_layers(model, stage)

    def stage_layers(seq: int, micro: int, recompute: str) -> float:
        """The stage's dense and MoE layers for one micro-batch."""
        one = dict(s=seq, b=micro, recompute=recompute, **layer)
        dense = layer_activation_bytes(model, **one)
        return (layers - sparse) * dense + sparse * (layer_activation_bytes(model, moe=True, **one) if sparse else 0)

    per_stage = stage_layers(s, b, workload.recompute)
    per_stage_full = stage_layers(s, b, "full")
    # one layer rebuilt at a time during a fully recomputed backward: the larger kind
    per_layer_none = layer_activation_bytes(model, s=s, b=b, recompute="none", moe=sparse > 0, **layer)
    dispatcher = dispatcher_bytes(model, s=s, b=b, tp=tp, sp=sp, etp=etp, ab=ab) if sparse else 0.0
    microbatches = math.ceil(workload.trajectories_per_step / (dp * b))
    if vpp:
        chunks = min((pp - r - 1) * 2 + (vpp - 1) * pp + 1, microbatches * vpp)
        in_flight = chunks / vpp
    else:
        in_flight = min(pp - r, microbatches)
    train = in_flight * per_stage + dispatcher
    if workload.recompute == "full":
        train += per_layer_none  # one layer rebuilt at a time during backward
    if pp > 1:
        train += 2 * ab * s * b * model.hidden_size / (tp if sp else 1)  # p2p send/recv buffers
    last = stage.chunks[-1].post_process
    logits = loss_chunk = 0.0
    if last:
        train += 2 * ab * s * b * model.hidden_size / (tp if sp else 1)  # final norm + output layer inputs
        logits = 2 * ab * s * b * v_local
        loss_chunk = _LOSS_CHUNK_BUFFERS * workload.logits_chunk_tokens * v_local * 4
        train += logits + loss_chunk

    # -- experience: no-grad forward passes, the teacher's being the longest
    fb = workload.forward_micro_batch_size or b
    s_teacher = math.ceil((workload.seq_length + workload.privileged_tokens) / cp)
    experience = layer_activation_bytes(model, s=s_teacher, b=fb, recompute="none", moe=sparse > 0, **layer)
    if sparse:
        experience += dispatcher_bytes(model, s=s_teacher, b=fb, tp=tp, sp=sp, etp=etp, ab=ab)
    if last:
        experience += ab * s_teacher * fb * v_local + loss_chunk

    # -- generation: the KV cache of this rank's share of the trajectories
    share = math.ceil(workload.trajectories_per_step / dp)
    gen_b = min(workload.generation_batch or share, share)
    kv_heads_local = max(model.num_query_groups // tp, 1)
    if workload.generation_kv_gb is None:  # static: every row holds its whole sequence
        kv_cache = gen_b * workload.seq_length * layers * 2 * kv_heads_local * model.kv_channels * ab
    else:  # dynamic, vllm: a fixed paged buffer, rows wait for blocks
        kv_cache = workload.generation_kv_gb * GIB
    if workload.generation_weights_copy:  # vllm: the engine's weights, sharded over TP like training's
        kv_cache += weights
    if last:
        kv_cache += gen_b * padded_vocab * 4  # the last token's logits, gathered over TP, fp32
    if workload.generation_gpus:  # disaggregated: other GPUs generate (planner/generation.py)
        kv_cache = 0.0

    return RankMemory(
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        reference=reference,
        activations_per_microbatch=per_stage,
        activations_per_microbatch_full_recompute=per_stage_full,
        microbatches_in_flight=in_flight,
        train_activations=train,
        logits=logits,
        loss_chunk=loss_chunk,
        experience=experience,
        kv_cache=kv_cache,
        overhead=workload.overhead_gb * GIB,
        expert_weights=experts * pb,
        router_weights=router * pb,
        dispatcher_buffers=dispatcher,
    )
