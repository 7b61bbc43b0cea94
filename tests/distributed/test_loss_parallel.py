"""Sibling statistics and credits bit-identical for DP 1, 2, 4 and any micro-batch split; the
policy loss at TP=2 x DP=2 equal to one process to float32 rounding, with the switch-off
bit-identity of docs/algorithm.md#the-switch-contract holding on that layout too."""

import dataclasses

import torch
import torch.distributed as dist

from nemo_craft.losses import ControllerState, LossConfig, compute_credits, policy_loss
from nemo_craft.parallel.sibling_stats import sibling_sums
from nemo_craft.testing.distributed import run_distributed
from tests.unit.losses._reference import bits_equal, composed_sdar_loss, make_batch

V = 64
CONFIGS = {
    "craft": LossConfig.preset("craft"),
    "craft_turn_mean": LossConfig.preset("craft", align="turn_mean"),
    "sdar": LossConfig.preset("sdar"),
    "all_off": LossConfig.preset("craft", counterfactual=False, controller=False, polarized_kl=False),
    "cf_off": LossConfig.preset("craft", counterfactual=False),
    "ctrl_off": LossConfig.preset("craft", controller=False),
    "pol_off": LossConfig.preset("craft", polarized_kl=False),
}


def _batch():
    return make_batch(n_groups=4, group_size=6, seq=20, seed=7, singleton=True)  # 25 samples


def _units():
    gen = torch.Generator().manual_seed(5)
    n = 300
    keys = torch.stack(
        [
            torch.randint(0, 6, (n,), generator=gen),
            torch.randint(0, 3, (n,), generator=gen),
            torch.randint(0, 4, (n,), generator=gen),
        ],
        1,
    )
    magnitude = torch.exp(8 * torch.randn(n, 1, generator=gen, dtype=torch.float64))
    values = torch.randn(n, 3, generator=gen, dtype=torch.float64) * magnitude
    return keys, values


def _layouts(n_items: int):
    """(name, dp size, shards): which items each DP rank holds, as two micro-batches given in
    reverse order (so neither the DP split nor the micro-batch split is contiguous)."""
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(11))
    out = []
    for dp in (1, 2, 4):
        shards = []
        for r in range(dp):
            mine = perm[r::dp]
            half = mine.shape[0] // 2
            shards.append(torch.cat([mine[half:], mine[:half]]))
        out.append((f"dp{dp}", dp, shards))
    return out


def dp_body():
    """World 4, DP 4: the same step computed on DP 1, 2 and 4 sub-layouts."""
    rank = dist.get_rank()
    groups = {1: [None] * 4, 2: [dist.new_group([0, 1]), dist.new_group([2, 3])], 4: [dist.group.WORLD]}
    raw, (keys, values) = _batch(), _units()
    results = {}
    for name, dp, shards in _layouts(raw.batch_size):
        group = groups[dp][rank // dp]
        idx = shards[rank % dp]
        for cname in ("craft", "craft_turn_mean"):
            out = compute_credits(raw.select(idx), CONFIGS[cname], dp_group=group)
            results[(name, cname)] = dict(
                idx=idx, advantages=out.advantages, cti=out.cti, credit=out.credit, stats=out.stats
            )
    for name, dp, shards in _layouts(keys.shape[0]):
        group = groups[dp][rank // dp]
        idx = shards[rank % dp]
        for loo in (False, True):
            sums, counts = sibling_sums(keys[idx], values[idx], group, leave_one_out=loo)
            results[(name, "units", loo)] = dict(idx=idx, sums=sums, counts=counts)
    return results


def test_credits_and_sibling_sums_bit_identical_across_dp_layouts():
    outs = run_distributed(dp_body, world_size=4, timeout=180)
    raw = _batch()
    for cname in ("craft", "craft_turn_mean"):
        single = compute_credits(raw, CONFIGS[cname])
        for layout in ("dp1", "dp2", "dp4"):
            for rank_out in outs:
                got = rank_out[(layout, cname)]
                idx = got["idx"]
                for field in ("advantages", "cti", "credit"):
                    assert bits_equal(got[field], getattr(single, field)[idx]), (cname, layout, field)
                assert got["stats"]["n_singleton_groups"] == 1
                for key in ("num_tokens", "n_fallback_tokens"):
                    assert got["stats"][key] == single.stats[key]
    keys, values = _units()
    for loo in (False, True):
        ref = {}
        for layout in ("dp1", "dp2", "dp4"):
            full = torch.empty_like(values)
            for rank_out in outs:
                got = rank_out[(layout, "units", loo)]
                full[got["idx"]] = got["sums"]
            ref[layout] = full
        assert torch.equal(ref["dp1"].view(torch.int64), ref["dp2"].view(torch.int64))
        assert torch.equal(ref["dp1"].view(torch.int64), ref["dp4"].view(torch.int64))
        # and the sums are the sums: against a plain float64 loop
        for i in range(0, keys.shape[0], 37):
            same = (keys == keys[i]).all(1)
            if loo:
                same[i] = False
            torch.testing.assert_close(ref["dp1"][i], values[same].sum(0), rtol=1e-12, atol=0)


def _loss_data():
    raw = make_batch(n_groups=4, group_size=4, seq=16, seed=9)
    gen = torch.Generator().manual_seed(9)
    logits = 2 * torch.randn(raw.batch_size, 16, V, generator=gen)
    targets = torch.randint(0, V, (raw.batch_size, 16), generator=gen)
    lp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    raw = dataclasses.replace(
        raw,
        logp_old=lp + 0.2 * torch.randn(lp.shape, generator=gen),
        logp_ref=lp + 0.4 * torch.randn(lp.shape, generator=gen),
    )
    return raw, logits, targets


def _loss_and_grad(logits, fn):
    leaf = logits.clone().requires_grad_(True)
    loss = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def tp_dp_body():
    """World 4 as TP 2 x DP 2: each DP rank holds half the samples, each TP rank half the vocab."""
    from megatron.core import parallel_state as ps

    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    tp_group, dp_group = ps.get_tensor_model_parallel_group(), ps.get_data_parallel_group()
    raw, logits, targets = _loss_data()
    idx = torch.randperm(raw.batch_size, generator=torch.Generator().manual_seed(3))[dp_rank::2]
    shard = logits[idx][..., tp_rank * (V // 2) : (tp_rank + 1) * (V // 2)].contiguous()
    local, local_targets = raw.select(idx), targets[idx]
    out = {"idx": idx, "tp_rank": tp_rank, "dp_rank": dp_rank, "bits": {}}
    for name, cfg in CONFIGS.items():
        batch = compute_credits(local, cfg, dp_group=dp_group)
        state = ControllerState.initial(cfg).update(0.95).update(0.9)
        out[name] = _loss_and_grad(
            shard, lambda x: policy_loss(x, local_targets, batch, cfg, state, tp_group=tp_group)[0]
        )
        if name in ("cf_off", "ctrl_off", "pol_off"):  # the same step with that pillar absent
            craft_batch = compute_credits(local, CONFIGS["craft"], dp_group=dp_group)
            credit = batch.gate if name == "cf_off" else craft_batch.credit
            lam, beta = (0.01, 0.01) if name == "ctrl_off" else (state.lam, state.beta)
            absent = _loss_and_grad(
                shard,
                lambda x: composed_sdar_loss(
                    x,
                    local_targets,
                    batch,
                    cfg,
                    lam=lam,
                    beta=beta,
                    credit=credit,
                    polarized=name != "pol_off",
                    tp_group=tp_group,
                    num_global_tokens=batch.num_global_tokens,
                ),
            )
            out["bits"][name] = bits_equal(out[name][0], absent[0]) and bits_equal(out[name][1], absent[1])
    out["bits"]["all_off_is_sdar"] = bits_equal(out["all_off"][0], out["sdar"][0]) and bits_equal(
        out["all_off"][1], out["sdar"][1]
    )
    return out


def test_policy_loss_tp2_dp2_equals_single_process_and_switches_stay_bitwise():
    outs = run_distributed(tp_dp_body, world_size=4, tp=2, timeout=180)
    raw, logits, targets = _loss_data()
    for o in outs:
        assert all(o["bits"].values()), o["bits"]
    for name, cfg in CONFIGS.items():
        batch = compute_credits(raw, cfg)
        state = ControllerState.initial(cfg).update(0.95).update(0.9)
        loss, grad = _loss_and_grad(logits, lambda x: policy_loss(x, targets, batch, cfg, state)[0])
        total = sum(o[name][0] for o in outs if o["tp_rank"] == 0)
        torch.testing.assert_close(total, loss, rtol=1e-6, atol=1e-7)
        for o in outs:
            half = V // 2
            expect = grad[o["idx"]][..., o["tp_rank"] * half : (o["tp_rank"] + 1) * half]
            torch.testing.assert_close(o[name][1], expect, rtol=1e-6, atol=1e-6 * float(grad.abs().max()))
        for o in outs:  # TP ranks of one DP rank hold the same loss bits
            partner = next(p for p in outs if p["dp_rank"] == o["dp_rank"])
            assert bits_equal(o[name][0], partner[name][0])
