"""sibling_sums in one process: exact, order-independent sums per key (the DP path with group=None)."""

import torch

from nemo_craft.parallel.sibling_stats import gather_table, sibling_sums


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
