"""reduce_named over a real gloo group: each named value reduced with its namesake on the other
ranks, whatever order each rank built its dict in."""

from nemo_craft.testing.distributed import run_distributed


def named_body():
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from nemo_craft.parallel.reductions import reduce_named

    rank = dist.get_rank()
    values = {"episodes": 2.0 + rank, "reward": 10.0 * (rank + 1)}
    if rank == 1:
        values = dict(reversed(list(values.items())))
    group = ps.get_data_parallel_group()
    return (reduce_named(values, group), reduce_named(values, group, op="max"), reduce_named(values, group, op="min"))


def test_named_sums_and_maxima_over_two_ranks():
    for sums, maxes, mins in run_distributed(named_body, world_size=2):
        assert sums == {"episodes": 5.0, "reward": 30.0}
        assert maxes == {"episodes": 3.0, "reward": 20.0}
        assert mins == {"episodes": 2.0, "reward": 10.0}
