"""The planner's per-rank weight bytes (``nemo-craft plan``'s memory table) against the model the
trainer builds: megatron's GPTModel on real gloo process groups of the planned layout, its
parameters' numel x element size summed on each rank (the planner itself counts a meta build)."""

from __future__ import annotations

import pytest

from nemo_craft.testing.distributed import run_distributed

MODEL = dict(
    num_layers=4,
    hidden_size=64,
    ffn_hidden_size=160,
    num_attention_heads=4,
    num_query_groups=2,
    kv_channels=16,
    vocab_size=250,  # padded by the layout (a multiple of 128 x TP)
    max_position_embeddings=256,
)
# world size, tp, pp, tied embedding
LAYOUTS = {"TP2xPP2": (4, 2, 2, False), "PP2-tied": (2, 1, 2, True), "TP2-tied": (2, 2, 1, True)}


def _configs(tp, pp, tied):
    from nemo_craft.models.config import ModelConfig
    from nemo_craft.parallel.config import ParallelConfig

    model = ModelConfig(**MODEL, tie_word_embeddings=tied)
    return model, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


def built_weight_bytes(tp, pp, tied):
    """(pipeline rank, bytes of this rank's parameters) of the trainer's model build."""
    import torch
    from megatron.core import parallel_state as ps

    from nemo_craft.models.provider import build_model

    torch.manual_seed(0)
    chunks = build_model(*_configs(tp, pp, tied))
    unique = {id(p): p for c in chunks for p in c.parameters()}
    return ps.get_pipeline_model_parallel_rank(), sum(p.numel() * p.element_size() for p in unique.values())


def _plan(tp, pp, tied, gpus):
    from nemo_craft.planner.config import ClusterConfig, Workload
    from nemo_craft.planner.plan import make_plan

    plan = make_plan(
        *_configs(tp, pp, tied), ClusterConfig(gpus_per_node=gpus), Workload(seq_length=128), suggest=False
    )
    assert plan.ranks, plan.problems
    return plan


def check_weights(planned, built):
    """Every rank of every pipeline stage holds the bytes the planner gave its stage."""
    assert built, "no rank reported"
    for pp_rank, nbytes in built:
        assert planned[pp_rank] == nbytes, (pp_rank, planned, built)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_planned_weight_bytes_are_the_built_models(layout):
    world, tp, pp, tied = LAYOUTS[layout]
    built = run_distributed(built_weight_bytes, world_size=world, tp=tp, pp=pp, args=(tp, pp, tied))
    plan = _plan(tp, pp, tied, world)
    check_weights([r.memory.weights for r in plan.ranks], built)
    # negative controls: the plan of another layout, and weights counted as the model's share
    # (a tied embedding once, not on both the first and the last stage), are caught
    with pytest.raises(AssertionError):
        check_weights([r.memory.weights for r in _plan(1, 1, tied, 1).ranks] * pp, built)
    if tied and pp > 1:
        share = [r.memory.weights * r.stage.model_share(tp) / r.stage.params / tp for r in plan.ranks]
        with pytest.raises(AssertionError):
            check_weights(share, built)
