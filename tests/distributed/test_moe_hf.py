"""Qwen3-MoE: Hugging Face <-> megatron-core at EP1, EP2 and EP2 x TP2 (sequence parallel).

A tiny random Qwen3-MoE (8 experts, top-2, a dense layer among the sparse ones via
``mlp_only_layers``) is built here with transformers; megatron's logits must equal transformers'
to 1e-4, and import then export must give back every tensor bit for bit: each expert of every
EP rank, the routers and the dense layer.
"""

from __future__ import annotations

import os

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed
from tests.distributed.test_models_hf import _check_export, _pipeline_logits, _portable

SEQ, BATCH, LOGITS_ATOL = 16, 2, 1e-4
MOE_KWARGS = dict(num_layers=3, mlp_only_layers=(1,), num_experts=8, num_experts_per_tok=2, head_dim=16)
LAYOUTS = {
    "ep1": dict(world_size=1),
    "ep2": dict(world_size=2, ep=2),
    "ep2_tp2_sp": dict(world_size=4, ep=2, tp=2, sp=True),  # ETP = TP = 2
    "ep2_tp2_etp1": dict(world_size=4, ep=2, tp=2, sp=True, etp=1),
}


def _parallel_cfg():
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout

    layout = current_layout()
    return ParallelConfig(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        sequence_parallel=layout.sp,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp,
    )


def body_moe_logits_and_roundtrip(path: str, tokens, out_dir: str):
    from megatron.core import parallel_state as ps

    from nemo_craft.models.hf import load_hf_model, save_hf_checkpoint
    from nemo_craft.models.hf_mapping import global_named_parameters

    model_cfg, chunks = load_hf_model(path, _parallel_cfg())
    logits = _pipeline_logits(chunks, tokens)
    save_hf_checkpoint(chunks, model_cfg, out_dir)
    experts = sorted(
        {int(n.split(".")[6]) for c in chunks for n, _ in global_named_parameters(c) if ".local_experts." in n}
    )
    frozen = [n for c in chunks for n, p in c.named_parameters() if not p.requires_grad]
    return _portable(
        dict(
            logits=None if ps.get_tensor_model_parallel_rank() != 0 else logits[..., : model_cfg.vocab_size],
            experts=experts,
            frozen=frozen,
        )
    )


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    return make_tiny_hf_checkpoint(str(tmp_path_factory.mktemp("hf") / "qwen3_moe"), "qwen3_moe", **MOE_KWARGS)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def hf_logits(moe_checkpoint, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(moe_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_moe_logits_match_hf_and_export_is_bit_exact(layout, moe_checkpoint, tokens, hf_logits, tmp_path):
    out_dir = str(tmp_path / "exported")
    results = run_distributed(
        body_moe_logits_and_roundtrip, **LAYOUTS[layout], args=(moe_checkpoint, tokens, out_dir), timeout=300
    )
    ep = LAYOUTS[layout].get("ep", 1)
    for r in results:
        if r["logits"] is not None:
            diff = (torch.from_numpy(r["logits"]) - hf_logits).abs().max().item()
            assert diff <= LOGITS_ATOL, f"{layout}: max |megatron - HF| logits = {diff}"
        # Each EP rank holds its own contiguous block of experts; the router is frozen (RL default).
        assert len(r["experts"]) == 8 // ep, (layout, r["experts"])
        assert r["frozen"] and all(n.endswith("mlp.router.weight") for n in r["frozen"]), r["frozen"]
    assert sorted({e for r in results for e in r["experts"]}) == list(range(8)), layout
    _check_export(layout, moe_checkpoint, out_dir, sharded=False)
    assert os.path.exists(os.path.join(out_dir, "config.json"))
