"""The memory terms are the documented formulas (checked on a layout where they are easy)."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_craft.losses.config import LossConfig
from nemo_craft.models.config import ModelConfig
from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.planner.config import Workload
from nemo_craft.planner.memory import layer_activation_bytes, rank_memory
from nemo_craft.planner.meta_build import ChunkParams, StageParams
from nemo_craft.rollout.config import RolloutConfig
from nemo_craft.trainer.config import TrainerConfig

MODEL = ModelConfig(
    architecture="qwen3",
    num_layers=8,
    hidden_size=1024,
    ffn_hidden_size=3072,
    num_attention_heads=16,
    num_query_groups=4,
    kv_channels=128,
    vocab_size=32768,
    params_dtype="bf16",
)
W = Workload(
    seq_length=2048,
    privileged_tokens=256,
    trajectories_per_step=64,
    micro_batch_size=2,
    generation_batch=16,
    logits_chunk_tokens=128,
)


def _stage(pp_rank, layers, params, post):
    return StageParams(
        pp_rank=pp_rank,
        chunks=[
            ChunkParams(
                vp_stage=None,
                first_layer=1,
                num_layers=layers,
                params=params,
                embedding_params=0,
                sharded_params=params,
                duplicate_params=0,
                pre_process=pp_rank == 0,
                post_process=post,
            )
        ],
    )


def test_persistent_terms_and_distributed_optimizer_sharding():
    p = ParallelConfig(
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=2,
        sequence_parallel=True,
        use_distributed_optimizer=True,
    )
    m = rank_memory(MODEL, p, W, _stage(0, 4, 1_000_000, False), dp=4, padded_vocab=32768)
    assert (m.weights, m.grads, m.optimizer, m.reference) == (2e6, 4e6, 12e6 / 4, 0)
    m = rank_memory(
        MODEL,
        dataclasses.replace(p, use_distributed_optimizer=False),
        W,
        _stage(0, 4, 1_000_000, False),
        dp=4,
        padded_vocab=32768,
    )
    assert m.optimizer == 12e6


def test_kv_cache_logits_chunk_and_in_flight_microbatches():
    p = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, sequence_parallel=True)
    first = rank_memory(MODEL, p, W, _stage(0, 4, 10, False), dp=2, padded_vocab=32768)
    last = rank_memory(MODEL, p, W, _stage(1, 4, 10, True), dp=2, padded_vocab=32768)
    kv = 16 * 2048 * 4 * 2 * (4 // 2) * 128 * 2  # batch x seq x layers/pp x 2 x kv_heads/tp x head_dim x bf16
    assert first.kv_cache == kv and last.kv_cache == kv + 16 * 32768 * 4
    assert last.loss_chunk == 2 * 128 * (32768 / 2) * 4  # two [chunk, V/TP] fp32 buffers
    assert last.logits == 2 * 2 * 2048 * 2 * (32768 / 2)  # logits + their gradient, bf16, [s, b, V/TP]
    assert (first.microbatches_in_flight, last.microbatches_in_flight) == (2, 1)  # 1F1B: pp - rank
    assert first.logits == first.loss_chunk == 0


def test_interleaved_schedule_holds_more_on_the_first_rank():
    p = ParallelConfig(
        tensor_model_parallel_size=1, pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=2
    )
    m = rank_memory(MODEL, p, W, _stage(0, 2, 10, False), dp=1, padded_vocab=32768)
    assert m.microbatches_in_flight == ((4 - 0 - 1) * 2 + (2 - 1) * 4 + 1) / 2  # megatron's warm-up + 1, in stages


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_sequence_parallel_and_recompute_only_shrink_activations(recompute):
    kw = dict(s=2048, b=1, attention="unfused", ab=2)
    tp1 = layer_activation_bytes(MODEL, tp=1, sp=False, recompute=recompute, **kw)
    tp2 = layer_activation_bytes(MODEL, tp=2, sp=False, recompute=recompute, **kw)
    tp2_sp = layer_activation_bytes(MODEL, tp=2, sp=True, recompute=recompute, **kw)
    assert tp1 >= tp2 >= tp2_sp and tp2_sp == pytest.approx(tp1 / 2)
    full = layer_activation_bytes(MODEL, tp=1, sp=False, recompute="full", **kw)
    assert full == 2 * 2048 * 1024 <= tp1


def test_dynamic_generation_holds_its_paged_buffer_whatever_the_batch():
    p = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    for batch in (16, 64):
        w = dataclasses.replace(W, generation_batch=batch, generation_kv_gb=3.5)
        first = rank_memory(MODEL, p, w, _stage(0, 4, 10, False), dp=2, padded_vocab=32768)
        assert first.kv_cache == 3.5 * 2**30


@pytest.mark.parametrize(
    "backend, dtype, expected",
    [
        ("auto", "bf16", 6.0),
        ("dynamic", "bf16", 6.0),
        ("static", "bf16", None),
        ("auto", "fp32", None),
        ("vllm", "bf16", 6.0),
        ("vllm", "fp32", 6.0),
    ],
)
def test_workload_reads_the_generation_backend(backend, dtype, expected):
    workload = Workload.from_sections(
        model=dataclasses.replace(MODEL, params_dtype=dtype, max_position_embeddings=4096),
        rollout=RolloutConfig(tasks_per_step=4, group_size=2, generation={"backend": backend, "kv_cache_gb": 6.0}),
        trainer=TrainerConfig(),
        parallel=ParallelConfig(),
        loss=LossConfig(),
    )
    assert workload.seq_length == 4096 and workload.trajectories_per_step == 8
    assert workload.generation_kv_gb == expected
    assert workload.generation_weights_copy == (backend == "vllm")


def test_vllm_generation_holds_a_copy_of_the_weights_beside_its_cache():
    p = ParallelConfig(tensor_model_parallel_size=2)
    dynamic = dataclasses.replace(W, generation_kv_gb=3.5)
    vllm = dataclasses.replace(dynamic, generation_weights_copy=True)
    stage = _stage(0, 1, 20, True)
    a = rank_memory(MODEL, p, dynamic, stage, dp=2, padded_vocab=32768)
    b = rank_memory(MODEL, p, vllm, stage, dp=2, padded_vocab=32768)
    assert b.kv_cache - a.kv_cache == a.weights > 0
    assert b.persistent == a.persistent  # released (sleep mode) while the trainer runs


def test_context_parallel_divides_the_sequence_but_not_the_generation_kv_cache():
    """CP2 holds half of every sequence in training and the no-grad passes (activations, logits),
    plus the whole sequence's gathered keys and values per layer; generation runs whole sequences
    at CP 1, so its KV cache is CP1's; the distributed optimizer shards over DP x CP."""
    kw = dict(b=2, tp=1, sp=False, recompute="none", attention="flash", ab=2)
    half = layer_activation_bytes(MODEL, s=1024, **kw)
    gathered_kv = 2 * 2048 * 2 * 2 * 4 * 128  # ab * S * b * 2 g d
    assert layer_activation_bytes(MODEL, s=1024, cp=2, **kw) == half + gathered_kv
    assert layer_activation_bytes(MODEL, s=1024, cp=2, **dict(kw, recompute="selective")) == layer_activation_bytes(
        MODEL, s=1024, **dict(kw, recompute="selective")
    )  # core attention recomputed: nothing gathered is kept
    one = ParallelConfig(use_distributed_optimizer=True)
    two = dataclasses.replace(one, context_parallel_size=2)
    m1 = rank_memory(MODEL, one, W, _stage(0, 8, 100, True), dp=2, padded_vocab=32768)
    m2 = rank_memory(MODEL, two, W, _stage(0, 8, 100, True), dp=2, padded_vocab=32768)
    assert m2.logits == m1.logits / 2 and m2.experience < m1.experience
    assert m2.activations_per_microbatch == 8 * (layer_activation_bytes(MODEL, s=1024, cp=2, **kw))
    assert m2.train_activations < m1.train_activations
    assert m2.kv_cache == m1.kv_cache
    assert m2.optimizer == m1.optimizer / 2


def test_context_parallel_layout_problems():
    from nemo_craft.planner.config import ClusterConfig
    from nemo_craft.planner.layout import layout_problems

    cluster = ClusterConfig(nodes=1, gpus_per_node=8)
    cp2 = ParallelConfig(context_parallel_size=2, tensor_model_parallel_size=4, sequence_parallel=True)
    assert layout_problems(MODEL, cp2, cluster, W) == []  # 2048 tokens: 4 chunks, 512 per TP x CP rank
    odd = dataclasses.replace(W, seq_length=2050)
    problems = layout_problems(MODEL, cp2, cluster, odd)
    assert any("not divisible by 2 x context_parallel_size = 4" in p for p in problems)
    assert any("tensor_model_parallel_size=4 x context_parallel_size=2" in p for p in problems)
    unfused = layout_problems(MODEL, cp2, cluster, dataclasses.replace(W, attention="unfused"))
    assert unfused and "megatron's local attention" in unfused[0]
