"""The load-balanced split of context parallel (no process group needed): which columns a CP rank
holds, the micro-batch it runs, what the sequence length must divide by, and the refusals."""

import pytest
import torch

from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.parallel.context_parallel import _rank_to_global_order, local_columns, split_micro_batch


def test_each_rank_holds_chunks_r_and_2cp_minus_1_minus_r():
    # CP4, 16 tokens: 8 chunks of 2
    assert local_columns(16, 4, 0).tolist() == [0, 1, 14, 15]
    assert local_columns(16, 4, 3).tolist() == [6, 7, 8, 9]
    every = torch.cat([local_columns(16, 4, r) for r in range(4)])
    assert sorted(every.tolist()) == list(range(16))  # a partition of the sequence
    # the gathered pieces (rank order) put back in global order
    order = _rank_to_global_order(4)
    chunks = every.view(8, 2)
    assert chunks[order].flatten().tolist() == list(range(16))
    with pytest.raises(ValueError, match="does not split into 2 \\* context_parallel_size = 8 chunks"):
        local_columns(12, 4, 0)


def test_split_micro_batch_cuts_every_token_tensor_and_keeps_the_rows():
    mb = {
        "input_ids": torch.arange(16).view(2, 8),
        "targets": torch.arange(16).view(2, 8) + 100,
        "position_ids": torch.arange(8).expand(2, 8),
        "index": torch.tensor([4, 5]),
    }
    out = split_micro_batch(mb, cp=2, rank=1)
    assert out["input_ids"].tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]
    assert out["targets"].tolist() == [[102, 103, 104, 105], [110, 111, 112, 113]]
    assert out["position_ids"].tolist() == [[2, 3, 4, 5]] * 2
    assert out["index"] is mb["index"] and out["cp_columns"].tolist() == [2, 3, 4, 5]
    assert split_micro_batch(mb, cp=1, rank=0) is mb
    with pytest.raises(ValueError, match="context parallel does not take packed micro-batches"):
        split_micro_batch(dict(mb, packed_seq_params=object()), cp=2, rank=0)


@pytest.mark.parametrize(
    "cp, tp, sp, multiple", [(1, 1, False, 1), (1, 4, True, 4), (2, 1, False, 4), (2, 4, False, 4), (2, 4, True, 8)]
)
def test_sequence_multiple(cp, tp, sp, multiple):
    cfg = ParallelConfig(context_parallel_size=cp, tensor_model_parallel_size=tp, sequence_parallel=sp)
    assert cfg.sequence_multiple == multiple
