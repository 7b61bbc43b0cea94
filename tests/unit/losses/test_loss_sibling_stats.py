"""sibling_sums in one process: exact, order-independent sums per key (the DP path with group=None)."""

import torch

from nemo_craft.parallel.sibling_stats import gather_table, groups_are_local, ranges_disjoint, sibling_sums


def _units(n=500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.stack([torch.randint(0, 7, (n,), generator=gen), torch.randint(0, 5, (n,), generator=gen)], 1)
    values = torch.randn(n, 2, generator=gen, dtype=torch.float64) * torch.exp(
        10 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    )
    return keys, values


def test_sums_match_float64_and_do_not_depend_on_order():
    keys, values = _units()
    sums, counts = sibling_sums(keys, values)
    loo, _ = sibling_sums(keys, values, leave_one_out=True)
    for i in range(0, keys.shape[0], 23):
        same = (keys == keys[i]).all(1)
        assert int(counts[i]) == int(same.sum())
        torch.testing.assert_close(sums[i], values[same].sum(0), rtol=1e-12, atol=0)
        same[i] = False
        torch.testing.assert_close(loo[i], values[same].sum(0), rtol=1e-12, atol=1e-300)
    perm = torch.randperm(keys.shape[0], generator=torch.Generator().manual_seed(1))
    sums_p, _ = sibling_sums(keys[perm], values[perm])
    loo_p, _ = sibling_sums(keys[perm], values[perm], leave_one_out=True)
    assert torch.equal(sums_p.view(torch.int64), sums[perm].view(torch.int64))
    assert torch.equal(loo_p.view(torch.int64), loo[perm].view(torch.int64))


def test_leave_one_out_of_a_pair_is_the_other_value_exactly():
    keys = torch.tensor([[0], [0], [1], [2], [2]])
    values = torch.tensor([[1.25], [3.0], [-2.5], [1e-300], [3.0]], dtype=torch.float64)
    loo, counts = sibling_sums(keys, values, leave_one_out=True)
    assert counts.tolist() == [2, 2, 1, 2, 2]
    assert loo[:, 0].tolist()[:3] == [3.0, 1.25, 0.0]
    # a value below its key's grid (2**-61 of the largest) is lost, as in float64 (3.0 + 1e-300 == 3.0)
    assert loo[:, 0].tolist()[3:] == [3.0, 0.0]


def test_keys_with_a_huge_range_and_empty_input():
    keys = torch.tensor([[0, 2**50], [0, 2**50], [2**52, 0]])
    values = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    sums, counts = sibling_sums(keys, values)
    assert sums[:, 0].tolist() == [3.0, 3.0, 4.0] and counts.tolist() == [2, 2, 1]
    empty = gather_table(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 1))
    assert empty.sums().shape == (0, 1) and empty.counts.numel() == 0


def test_a_keys_sums_do_not_depend_on_the_other_keys_in_the_table():
    """compute_credits takes the sums locally when every sibling group is on one rank: they must
    be the sums of the gathered table bit for bit, so a key's fixed-point grid may depend on
    its own units only (here the keys of the subset have fewer units than the others)."""
    keys, values = _units(n=600, seed=2)
    values[:, 1] *= torch.exp(40 * torch.rand(600, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    small = (keys[:, 0] == 0) & (keys[:, 1] < 2)  # whole keys, 2 of the 35, with ~17 units each
    keys[small, 1] = keys[small, 1] + 10 * (torch.arange(int(small.sum())) % 3)  # split into 6 keys of ~6 units
    for loo in (False, True):
        full, full_counts = sibling_sums(keys, values, leave_one_out=loo)
        part, part_counts = sibling_sums(keys[small], values[small], leave_one_out=loo)
        assert torch.equal(part_counts, full_counts[small])
        assert torch.equal(part.view(torch.int64), full[small].view(torch.int64))


def test_rank_locality_is_read_from_the_ranks_id_ranges():
    assert groups_are_local(torch.tensor([3, 1, 2]), None)  # one process: always local
    assert ranges_disjoint([(4, 7), (0, 3), (8, 8)]) and ranges_disjoint([]) and ranges_disjoint([(2, 5)])
    assert not ranges_disjoint([(0, 4), (4, 9)])  # group 4 on both ranks
    assert not ranges_disjoint([(0, 8), (3, 5)])  # ids may be disjoint, the ranges are not: gather
