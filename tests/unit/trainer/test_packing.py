"""Packing a step's sequences by a token budget (nemo_craft/trainer/packing.py): the plan, the
packed tensors and their map back to rows; the padded split unchanged; the refusals."""

import dataclasses

import pytest
import torch

from nemo_craft.trainer.config import TrainerConfig
from nemo_craft.trainer.packing import check_packing, plan_packs, select_sequences, split_micro_batches


def _batch(lengths, S=None, seed=0):
    S = S or max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (len(lengths), S), generator=g)
    valid = torch.arange(S)[None] < torch.tensor(lengths)[:, None]
    ids = ids * valid
    tensors = {"input_ids": ids, "targets": ids + 100 * valid, "loss_mask": valid, "index": torch.arange(len(lengths))}
    return tensors, torch.tensor(lengths)


def test_plan_balances_the_packs():
    lengths = [30, 7, 12, 25, 3, 18, 40, 40]
    plan = plan_packs(lengths, 50)
    # first-fit decreasing needs 4 packs (the longest holds 50 tokens); spread longest first to the
    # emptiest pack: 40+7 | 40+3 | 30+12 | 25+18, so every pack is padded to 47, not 50 (5 packs
    # would be padded to 40: 200 tokens, not 188)
    assert plan == [[1, 6], [4, 7], [0, 2], [3, 5]]
    assert [sum(lengths[i] for i in p) for p in plan] == [47, 43, 42, 43]


def test_plan_takes_more_packs_when_that_pads_less():
    # 5 x 18 tokens in a budget of 40: 3 packs of 36, 36, 18 pad to 108; 5 packs of 18 to 90
    assert plan_packs([18] * 5, 40) == [[0], [1], [2], [3], [4]]


def test_plan_depends_only_on_the_lengths():
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 100, (64,), generator=g).tolist()
    plan = plan_packs(lengths, 256)
    assert plan == plan_packs(list(lengths), 256)
    assert sorted(i for p in plan for i in p) == list(range(64))
    assert all(sum(lengths[i] for i in p) <= 256 for p in plan)
    width = max(sum(lengths[i] for i in p) for p in plan)
    assert len(plan) * width <= 1.05 * sum(lengths)  # balanced: every pack is padded to the longest


def test_a_sequence_longer_than_the_budget_is_refused():
    with pytest.raises(ValueError, match=r"a sequence of 70 tokens does not fit trainer.max_tokens_per_microbatch=64"):
        plan_packs([10, 70], 64)


def test_packs_hold_the_sequences_end_to_end_with_positions_restarting():
    tensors, lengths = _batch([5, 3, 6, 3], S=8)
    mbs = split_micro_batches(tensors, lengths, max_tokens=12, pad_multiple=4)
    assert mbs.packed and len(mbs.items) == 2
    first, second = mbs.items
    assert first["pack"].rows == (2, 3) and second["pack"].rows == (0, 1)
    # one shape for the schedule: the longest pack (9 tokens) rounded up to the multiple
    assert first["input_ids"].shape == second["input_ids"].shape == (1, 12)
    ids = tensors["input_ids"]
    assert torch.equal(first["input_ids"][0, :9], torch.cat([ids[2, :6], ids[3, :3]]))
    assert first["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2]
    # the padding is a segment of its own: it attends only to itself
    assert first["packed_seq_params"].cu_seqlens_q.tolist() == [0, 6, 9, 12]
    assert first["packed_seq_params"].qkv_format == "thd" and first["packed_seq_params"].max_seqlen_q == 6
    assert second["packed_seq_params"].cu_seqlens_kv.tolist() == [0, 5, 8, 12]
    assert not bool(second["loss_mask"][0, 8:].any())  # the padding is never trained
    assert first["index"].tolist() == [2, 3]
    assert mbs.pad_fraction == pytest.approx(1 - 17 / 24)


def test_values_of_the_packs_return_to_their_rows():
    tensors, lengths = _batch([5, 3, 6, 2, 7], S=9)
    mbs = split_micro_batches(tensors, lengths, max_tokens=12)
    values = torch.cat([mb["targets"] for mb in mbs.items]).float()  # what forward_only returns
    rows = mbs.to_rows(values)
    assert rows.shape == (5, 9)
    assert torch.equal(rows, tensors["targets"].float() * tensors["loss_mask"])


def test_the_padded_split_is_unchanged():
    tensors, lengths = _batch([5, 3, 6, 2], S=8)
    mbs = split_micro_batches(tensors, lengths, micro_batch_size=2)
    assert not mbs.packed and len(mbs.items) == 2
    for i, mb in enumerate(mbs.items):
        for k, v in tensors.items():
            assert torch.equal(mb[k], v[2 * i : 2 * i + 2])
        assert mb["position_ids"].tolist() == [list(range(8))] * 2
    assert mbs.pad_fraction == pytest.approx(1 - 16 / 32)
    assert mbs.to_rows(tensors["targets"]) is tensors["targets"]


def test_a_packed_sequence_sees_its_own_slice():
    tensors, lengths = _batch([5, 3, 2], S=8)
    (mb,) = split_micro_batches(tensors, lengths, max_tokens=10).items
    logits = torch.arange(10.0).reshape(1, 10, 1)
    seqs = list(mb["pack"].sequences(mb, logits))
    assert [m["targets"].shape[1] for m, _ in seqs] == [5, 3, 2]
    assert [lg.flatten().tolist() for _, lg in seqs] == [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9]]
    assert [m["index"].tolist() for m, _ in seqs] == [[0], [1], [2]]
    assert torch.equal(seqs[1][0]["targets"], tensors["targets"][1:2, :3])


def test_select_sequences_cuts_the_per_token_fields():
    from tests.unit.losses._reference import make_batch

    batch = make_batch(n_groups=2, group_size=2, seq=12)
    sub = select_sequences(batch, torch.tensor([2]), 7)
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            assert torch.equal(getattr(sub, f.name), v[2:3, :7]), f.name
    assert torch.equal(sub.rewards, batch.rewards[2:3])
    full = select_sequences(batch, torch.tensor([1, 3]), 12)
    assert torch.equal(full.loss_mask, batch.loss_mask[[1, 3]])


def test_refusals_name_the_value_and_the_fix():
    from nemo_craft.models.config import ModelConfig

    with pytest.raises(ValueError, match=r"max_tokens_per_microbatch=0: need >= 1 or null"):
        TrainerConfig(max_tokens_per_microbatch=0)
    with pytest.raises(ValueError, match=r"model.core_attention=local\) cannot take; use model.core_attention=sdpa"):
        check_packing(ModelConfig(core_attention="local"), 4096, 1)
    with pytest.raises(ValueError, match=r"max_tokens_per_microbatch=4095 is not a multiple of 2"):
        check_packing(ModelConfig(), 4095, 2)
    check_packing(ModelConfig(), 4096, 2)
    assert TrainerConfig().max_tokens_per_microbatch is None  # off by default
