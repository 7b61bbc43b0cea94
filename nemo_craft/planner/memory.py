"""Memory of one GPU during an RL step: the formulas, one function per term.

Shape letters: s tokens of a sequence on this rank (the sequence over CP), b trajectories of a
micro-batch, h hidden, f ffn hidden, a query heads, g key/value heads, d head dim, V the padded
vocabulary, t TP, L layers. ``ab`` is the byte size of activations (the params dtype: bf16 on
GPUs), all results are bytes.

What is held, and when (the peak is persistent + the largest phase + overhead):

- persistent: weights (params dtype), gradient buffers (fp32 when ``grad_reduce_in_fp32``),
  Adam states (fp32 master copy when params are bf16, exp_avg, exp_avg_sq; sharded over DP x CP
  by the distributed optimizer) and, only if it is kept on the GPU, the frozen reference
  policy's weights (the trainer keeps them on the host);
- generation: the KV cache, b x s x L/pp x 2 x g/t x d x ab (b: rows of a generation pass,
  ``rollout.generation.max_batch_size`` capped by the rank's share), plus one decode step's logits; a paged
  cache (the dynamic engine, vLLM) is its fixed size instead; vLLM also holds its own copy of the
  rank's weights while it generates (it sleeps, holding nothing, while the trainer runs);
- experience (no-grad passes: old, teacher with its privileged prefix, reference): one layer's
  transient activations at the teacher's length, the logits of a micro-batch and the loss chunk;
- training: the activations of the micro-batches in flight on this pipeline rank (1F1B: pp - r
  micro-batches of the stage's layers; interleaved: the schedule's warm-up count of chunks),
  plus, on the last stage, the logits, their gradient and the loss's two [C, V/t] fp32 buffers.

Per layer and micro-batch, what backward needs (flash attention, SwiGLU, RMSNorm, no dropout):
the two norm inputs and the two linear inputs that read the residual stream (4 x sbh, divided by
t under sequence parallel), q/k/v (sb(ad + 2gd)/t), the q/k-norm inputs when there are q/k norms
(sb(ad + gd)/t), the attention output (sb ad/t) and its log-sum-exp (fp32, bas/t), the fc1
output (2 sbf/t) and the SwiGLU output (sbf/t); unfused attention also keeps the softmax
(bas^2/t) unless it is recomputed (selective). Full recomputation keeps only each layer's input
(sbh, /t under SP) and rebuilds one layer at a time in backward.

Context parallel (c ranks): s is the rank's share of the sequence, S / c, in training and in the
no-grad passes (activations, logits and the loss divide by c); attention also keeps the keys and
values of the whole sequence, gathered over the CP group (2 S b g d / t, unless core attention is
recomputed), and unfused scores are b a s S / t. Generation runs every CP rank on whole sequences
(megatron's inference has no CP), so the KV cache is not divided by c; the trajectories of a rank
are its data-parallel rank's (DP = GPUs / (TP x PP x CP)), and the distributed optimizer shards
over DP x CP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RankMemory", "layer_activation_bytes", "rank_memory", "GIB"]

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


def layer_activation_bytes(
    model, *, s: int, b: int, tp: int, sp: bool, recompute: str, attention: str, ab: int, cp: int = 1
) -> float:
    """Bytes one transformer layer keeps for backward, for one micro-batch (see module doc);
    ``s`` is the rank's tokens of a sequence, S / ``cp`` under context parallel."""
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
    x += ab * s * b * 3 * f / tp
    return x


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
    grads = params * (4 if workload.grad_reduce_in_fp32 else pb)
    adam = 12 if pb == 2 else 8  # fp32 master + exp_avg + exp_avg_sq; no master copy for fp32 params
    optimizer = params * adam / (dp * cp if parallel.use_distributed_optimizer else 1)
    reference = weights if workload.reference_on_gpu else 0.0

    # -- training: in-flight activations of the 1F1B (or interleaved) schedule
    s = math.ceil(workload.seq_length / cp)
    b = workload.micro_batch_size
    layer = dict(tp=tp, sp=sp, attention=workload.attention, ab=ab, cp=cp)
    per_layer = layer_activation_bytes(model, s=s, b=b, recompute=workload.recompute, **layer)
    per_layer_full = layer_activation_bytes(model, s=s, b=b, recompute="full", **layer)
    per_layer_none = layer_activation_bytes(model, s=s, b=b, recompute="none", **layer)
    microbatches = math.ceil(workload.trajectories_per_step / (dp * b))
    if vpp:
        chunks = min((pp - r - 1) * 2 + (vpp - 1) * pp + 1, microbatches * vpp)
        in_flight = chunks / vpp
    else:
        in_flight = min(pp - r, microbatches)
    layers = stage.num_layers
    train = in_flight * layers * per_layer
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
    experience = layer_activation_bytes(model, s=s_teacher, b=fb, recompute="none", **layer)
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
        activations_per_microbatch=layers * per_layer,
        activations_per_microbatch_full_recompute=layers * per_layer_full,
        microbatches_in_flight=in_flight,
        train_activations=train,
        logits=logits,
        loss_chunk=loss_chunk,
        experience=experience,
        kv_cache=kv_cache,
        overhead=workload.overhead_gb * GIB,
    )
