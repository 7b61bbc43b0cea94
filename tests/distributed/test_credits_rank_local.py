"""compute_credits over 2 gloo ranks: with every sibling group on one rank (the trainer's layout)
nothing is gathered, with groups split over the ranks the units are gathered; both give the
single-process credits bit for bit."""

import pytest
import torch

from nemo_craft.losses import LossConfig, compute_credits
from nemo_craft.testing.distributed import run_distributed
from tests.unit.losses._reference import bits_equal, make_batch

CONFIGS = {
    "craft": LossConfig.preset("craft"),
    "craft_turn_mean": LossConfig.preset("craft", align="turn_mean"),
    "grpo": LossConfig.preset("grpo"),
}
N_GROUPS, G = 5, 4


def _batch():
    """Groups 0..2 of 4 siblings, 3 and 4 of 2, and 5 with a single trajectory: rank-local
    groups of different sizes on the two ranks."""
    full = make_batch(n_groups=N_GROUPS, group_size=G, seq=20, seed=7, singleton=True)
    keep = [i for i in range(full.batch_size) if int(full.group_ids[i]) < 3 or i % G < 2 or i == N_GROUPS * G]
    return full.select(keep)


def _layouts(group_ids: torch.Tensor) -> dict:
    """{name: (samples of rank 0, samples of rank 1)}, each in a scrambled order."""
    scramble = torch.randperm(group_ids.shape[0], generator=torch.Generator().manual_seed(3))
    ids = group_ids[scramble]

    def where(select):
        return scramble[select(ids)]

    return {
        # as the trainer places them: rank 0 the tasks 0..2, rank 1 the tasks 3..5
        "rank_local": (where(lambda g: g < 3), where(lambda g: g >= 3)),
        # every group on one rank, but the id ranges overlap: the gathered path, still exact
        "interleaved": (where(lambda g: g % 2 == 0), where(lambda g: g % 2 == 1)),
        # siblings split over the ranks
        "split": (scramble[0::2], scramble[1::2]),
    }


def credits_body():
    import torch.distributed as dist

    from nemo_craft.parallel import sibling_stats

    rank, raw = dist.get_rank(), _batch()
    gathers = []
    real_all_gather = dist.all_gather

    def counted_all_gather(*args, **kwargs):
        gathers.append(1)
        return real_all_gather(*args, **kwargs)

    dist.all_gather = counted_all_gather
    out = {}
    try:
        for layout, shards in _layouts(raw.group_ids).items():
            idx = shards[rank]
            local = sibling_stats.groups_are_local(raw.group_ids[idx], dist.group.WORLD)
            for name, cfg in CONFIGS.items():
                before = len(gathers)
                got = compute_credits(raw.select(idx), cfg, dp_group=dist.group.WORLD)
                out[(layout, name)] = dict(
                    idx=idx,
                    local=local,
                    gathers=len(gathers) - before,
                    stats=got.stats,
                    **{f: getattr(got, f) for f in ("advantages", "delta", "gate", "cti", "credit")},
                )
    finally:
        dist.all_gather = real_all_gather
    return out


def test_rank_local_and_split_groups_give_the_single_process_credits():
    outs = run_distributed(credits_body, world_size=2, timeout=120)
    raw = _batch()
    for name, cfg in CONFIGS.items():
        single = compute_credits(raw, cfg)
        for layout, local in (("rank_local", True), ("interleaved", False), ("split", False)):
            for rank_out in outs:
                got = rank_out[(layout, name)]
                assert got["local"] is local, (layout, name)
                assert (got["gathers"] == 0) is local, (layout, name, got["gathers"])
                for field in ("advantages", "delta", "gate", "cti", "credit"):
                    expect = getattr(single, field)
                    if expect is None:
                        assert got[field] is None
                        continue
                    assert bits_equal(got[field], expect[got["idx"]]), (layout, name, field)
                assert got["stats"].keys() == single.stats.keys()
                for key, value in single.stats.items():
                    if isinstance(value, int):
                        assert got["stats"][key] == value, (layout, name, key)
                    else:  # a float64 sum of per-rank counts
                        assert got["stats"][key] == pytest.approx(value, rel=1e-12), (layout, name, key)
        assert single.stats["n_singleton_groups"] == 1
