"""Context parallel (nemo_craft/parallel/context_parallel.py, SDPAttention under CP): CP2 equals CP1
to 1e-5 in fp32 on gloo, alone and with TP2 / DP2."""

import pytest

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
