"""The planner's memory of one GPU against what CUDA allocates for the trainer's model: its weight
bytes (exact, up to the allocator's 512-byte rounding per tensor) and the training phase of one
micro-batch (forward, the loss's token stats, backward: gradients + activations + logits), which must stay within
the planned bytes (a plan that fits must fit) and not far below them (an estimate, not a bound
at any price). Skipped on machines without CUDA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = dict(
    num_layers=4,
    hidden_size=256,
    ffn_hidden_size=768,
    num_attention_heads=8,
    num_query_groups=4,
    kv_channels=32,
    vocab_size=32768,
    max_position_embeddings=1024,
    params_dtype="bf16",
)
SEQ, MICRO_BATCH = 512, 2
LOW = 0.25  # measured / planned below this: the planner overestimates fourfold


def _configs():
    from nemo_craft.models.config import ModelConfig
    from nemo_craft.parallel.config import ParallelConfig

    return ModelConfig(**MODEL), ParallelConfig()


def measure():
    """Bytes CUDA allocates: (the built model, the peak of one micro-batch's step above it)."""
    from nemo_craft.losses import LossConfig
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    (model,) = build_model(*_configs())
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - base
    ids = torch.randint(0, MODEL["vocab_size"], (MICRO_BATCH, SEQ), device="cuda")
    pos = torch.arange(SEQ, device="cuda")[None].expand(MICRO_BATCH, -1)
    mask = torch.ones(MICRO_BATCH, SEQ, dtype=torch.bool, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    # the trainer's loss path: the logits, then the chunked vocabulary-parallel token stats
    logits_BSV = model(ids, pos, None)
    stats = vocab_parallel_token_stats(logits_BSV, ids, mask, chunk_size=LossConfig.chunk_size)
    (stats.logp.sum() + stats.entropy.sum()).backward()
    torch.cuda.synchronize()
    step = torch.cuda.max_memory_allocated() - base - weights
    return weights, step, sum(1 for _ in model.parameters())


def planned():
    from nemo_craft.planner.config import ClusterConfig, Workload
    from nemo_craft.planner.plan import make_plan

    workload = Workload(seq_length=SEQ, micro_batch_size=MICRO_BATCH, trajectories_per_step=MICRO_BATCH)
    (rank,) = make_plan(*_configs(), ClusterConfig(gpus_per_node=1), workload, suggest=False).ranks
    return rank.memory


def check_step(measured_step, memory):
    """The measured training phase lies in [LOW x planned, planned] (planned: gradients + activations)."""
    planned_step = memory.grads + memory.train_activations
    assert LOW * planned_step <= measured_step <= planned_step, (measured_step, planned_step)


def test_planned_weights_and_training_peak_match_cuda():
    weights, step, tensors = run_distributed(measure, world_size=1, device="cuda")[0]
    memory = planned()
    assert memory.weights <= weights <= memory.weights + 512 * tensors, (weights, memory.weights)
    check_step(step, memory)
    # negative controls: a plan of no training memory, or of ten times the planned, is caught
    with pytest.raises(AssertionError):
        check_step(step, dataclasses.replace(memory, train_activations=0.0, grads=0.0))
    with pytest.raises(AssertionError):
        check_step(
            step, dataclasses.replace(memory, train_activations=10 * memory.train_activations, grads=10 * memory.grads)
        )
