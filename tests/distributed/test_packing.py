"""Sequence packing (nemo_craft/trainer/packing.py) against the padded micro-batches it replaces:
the old, teacher and reference log-probs, the training loss and its gradient agree to 1e-5 (fp32)
at world size 1 and under TP2 (with and without sequence parallel), PP2 and DP2; the switch-off
contract of docs/algorithm.md#the-switch-contract holds bit for bit on packs; SDPAttention's
block-diagonal causal attention on thd input equals each sequence run alone."""

import pytest

from nemo_craft.testing.distributed import run_distributed
from tests.distributed import _bodies_packing as bodies

TOL = 1e-5
BUDGET = 96  # tokens per packed micro-batch: 2-5 of the bodies' 10-70-token sequences

# name: (world_size, tp, pp, sp)
LAYOUTS = {"1": (1, 1, 1, False), "TP2": (2, 2, 1, False), "TP2+SP": (2, 2, 1, True), "PP2": (2, 1, 2, False)}
LAYOUTS["DP2"] = (2, 1, 1, False)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_packed_step_equals_padded_step(name):
    world, tp, pp, sp = LAYOUTS[name]
    outs = run_distributed(bodies.padded_vs_packed, world_size=world, tp=tp, pp=pp, sp=sp, args=("craft", BUDGET))
    for o in outs:
        pad_loss, pack_loss = o["loss"]
        assert abs(pack_loss - pad_loss) <= TOL * abs(pad_loss), o["loss"]
        assert o["grad_err"] <= TOL * o["grad_scale"], (o["grad_err"], o["grad_scale"])
        for k, err in o["logp_err"].items():
            assert err <= TOL, (k, err)
        padded, packed = o["padding"]
        keys = {"perf/pad_frac_old", "perf/pad_frac_teacher", "perf/pad_frac_ref", "train"}
        assert set(padded) == set(packed) == keys
        for k in ("perf/pad_frac_old", "perf/pad_frac_teacher", "train"):
            assert 0.0 <= packed[k] < padded[k], (k, packed[k], padded[k])


def test_switch_off_is_bit_identical_on_packs():
    (out,) = run_distributed(bodies.switch_off_is_baseline_when_packed, world_size=1, args=(BUDGET,))
    assert out == dict(bit_identical=True, craft_differs=True)


def test_packed_attention_is_each_sequence_alone():
    (out,) = run_distributed(bodies.attention_packed_vs_alone, world_size=1)
    assert out["shape"] == (18, 64)
    assert out["out_err"] < 1e-6 and out["grad_err"] < 1e-6, out
    wrong_format, short = out["refusals"]
    assert wrong_format == "SDPAttention takes packed sequences in qkv_format 'thd', got 'sbhd'"
    assert short.startswith("packed self-attention needs cu_seqlens_q == cu_seqlens_kv ending at the 18 tokens")
