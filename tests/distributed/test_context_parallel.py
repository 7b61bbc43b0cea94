"""Context parallel (nemo_craft/parallel/context_parallel.py, SDPAttention under CP): CP2 equals CP1
to 1e-5 in fp32 on gloo, alone and with TP2 / DP2."""

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed
from tests.distributed import _bodies_context_parallel as bodies

TOL = 1e-5


@pytest.mark.parametrize("world,tp", [(2, 1), (4, 2)], ids=["CP2", "CP2xTP2"])
def test_sdpa_under_cp_equals_the_whole_sequence(world, tp):
    outs = run_distributed(bodies.attention_cp_vs_whole, world_size=world, tp=tp, cp=2)
    for o in outs:
        for mask, errs in o["errs"].items():
            assert max(errs) < TOL, (mask, errs)  # output, dq, dk, dv
        assert o["refusal"].startswith("SDPAttention does not take packed (thd) sequences under context parallel")
    # load-balanced chunks of 24 tokens: rank 0 holds 0-5 and 18-23, rank 1 holds 6-17
    expected = {0: [*range(0, 6), *range(18, 24)], 1: list(range(6, 18))}
    assert all(o["cols"] == expected[o["cp_rank"]] for o in outs)
    assert {o["cp_rank"] for o in outs} == {0, 1}


# name: (CP1 world, CP2 world, tp, loss preset); the CP2 run has the CP1 run's TP and DP sizes
STEP_LAYOUTS = {
    "CP2": (1, 2, 1, "craft"),
    "CP2-cringe": (1, 2, 1, "adaptive_cringe"),  # its draws are seeded by position
    "CP2xTP2": (2, 4, 2, "craft"),
    "CP2xDP2": (2, 4, 1, "craft"),
}


@pytest.mark.parametrize("name", list(STEP_LAYOUTS))
def test_rl_step_at_cp2_equals_cp1(name):
    """The old / teacher / reference log-probs, the training loss and the gradient of one step
    (all four passes) at CP2 equal CP1's to 1e-5 (fp32); each CP rank of a (TP, DP) position
    holds the CP1 rank's values."""
    world1, world2, tp, method = STEP_LAYOUTS[name]
    one = {o["where"][:2]: o for o in run_distributed(bodies.rl_step, world_size=world1, tp=tp, args=(method,))}
    two = run_distributed(bodies.rl_step, world_size=world2, tp=tp, cp=2, args=(method,))
    assert sorted(o["where"][2] for o in two) == sorted([0, 1] * (world2 // 2))
    for o in two:
        ref = one[o["where"][:2]]
        assert o["width"] % 4 == 0  # padded to 2 * CP
        assert abs(o["loss"] - ref["loss"]) <= TOL * abs(ref["loss"]), (o["loss"], ref["loss"])
        err = float((o["grad"] - ref["grad"]).abs().max())
        assert err <= TOL * float(ref["grad"].abs().max()), err
        for k in ("logp_old", "logp_teacher", "logp_ref"):
            assert o[k].shape == ref[k].shape and float((o[k] - ref[k]).abs().max()) <= TOL, k


def test_generation_runs_whole_sequences_under_cp():
    """Generation with a CP2 model switches CP off (megatron's inference runs at CP 1): greedy and
    seeded sampled tokens equal CP1's on every rank, and the training-side forward after it (CP
    back on) scores the sampled tokens as CP1 does, and as the sampler did."""
    (one,) = run_distributed(bodies.generate_then_score, world_size=1)
    two = run_distributed(bodies.generate_then_score, world_size=2, cp=2)
    for o in two:
        assert o["greedy"] == one["greedy"] and o["sampled"] == one["sampled"]
        assert o["training"] is True
        assert float((o["scored"] - one["scored"]).abs().max()) <= TOL
        sampler = torch.tensor([lp for row in o["sampled_logprobs"] for lp in row])
        assert float((o["scored"] - sampler).abs().max()) <= 1e-4
