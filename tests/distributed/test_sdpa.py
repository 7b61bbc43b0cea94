"""SDPAttention (nemo_craft/models/sdpa.py) against megatron's DotProductAttention, which it
replaces in the local spec: output and gradients of every mask case (training's causal, a static
KV-cache window, a decode step, padding), grouped-query heads, TP=1 and TP=2 (heads split across
real process groups); then the whole model on each attention, and the refusals."""

from __future__ import annotations

import pytest

from nemo_craft.testing.distributed import run_distributed
from tests.distributed import _bodies_sdpa as bodies

TOL = 1e-5


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("heads,groups", [(4, 4), (8, 2)], ids=["mha", "gqa"])
def test_sdpa_matches_megatrons_local_attention(tp, heads, groups):
    out = run_distributed(bodies.compare_with_megatron, world_size=tp, tp=tp, args=(heads, groups, 16))
    for rank_out in out:
        assert set(rank_out) == {"causal", "window", "decode", "padded"}
        for case, r in rank_out.items():
            assert r["finite"], case
            assert r["out"] < TOL, (case, r)
            assert r["grad"] < TOL, (case, r)
        assert rank_out["causal"]["shape"] == (11, 3, heads // tp * 16)


def test_sdpa_dropout_uses_megatrons_rng():
    (out,) = run_distributed(bodies.dropout_draws_from_the_model_parallel_rng, world_size=1)
    assert out["device"] == "cpu" and out["eval_deterministic"]
    assert out["eval_error"] < TOL, out  # eval is attention without dropout
    assert out["broken_eval_error"] > 100 * TOL, out  # the check sees dropout left on in eval
    assert out["same_seed_same"] and out["train_differs_from_eval"]


def test_the_local_spec_takes_sdpa_unless_told_local():
    (out,) = run_distributed(bodies.core_attention_of_the_local_spec, world_size=1)
    assert out["sdpa"] == "SDPAttention" and out["local"] == "DotProductAttention"
    assert out["local_windowed"] == "built"
    assert "core_attention='sdpa' does not support window_size=(8, 0)" in out["sdpa_windowed"]
    assert "set model.core_attention=local" in out["sdpa_windowed"]
