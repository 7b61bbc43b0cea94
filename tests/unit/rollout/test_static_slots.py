"""The static backend's KV-slot bookkeeping (``_Slots``) on a stand-in cache, and the parts of
megatron's static KV cache it relies on."""

import inspect

import torch

from nemo_craft.rollout.static_backend import _Slots


def _cache(slots: int, columns: int = 6) -> dict:
    """layer -> (keys, values), [columns, slots, 1]: slot s holds the value 100 * s + column."""
    base = (100 * torch.arange(slots)[None, :] + torch.arange(columns)[:, None]).float()[..., None]
    return {1: (base.clone(), base.clone() + 0.5), 2: (base.clone(), base.clone() + 0.5)}


def test_rows_start_in_order_run_in_one_slot_range_and_an_ended_rows_slot_goes_to_the_last_running_row():
    slots = _Slots([3, 0, 2, 1])  # start order: row 3 first
    assert slots.rows == [1, 2, 0, 3] and slots.running == [] and slots.waiting == 4 and slots.next_waiting == 3
    for _ in range(3):
        slots.start_next()
    assert slots.first == 1 and slots.running == [2, 0, 3] and slots.next_waiting == 1
    kv = _cache(4)
    slots.finish([2], kv, columns=4)  # row 2 (slot 1) ends: row 3 (slot 3) moves into slot 1
    assert slots.running == [3, 0]
    keys, values = kv[1]
    assert keys[:4, 1, 0].tolist() == [300, 301, 302, 303] and values[:4, 1, 0].tolist() == [300.5, 301.5, 302.5, 303.5]
    assert keys[4:, 1, 0].tolist() == [104, 105], "only the columns written so far are copied"
    assert kv[2][0][:4, 2, 0].tolist() == [200, 201, 202, 203], "rows that go on are not copied"
    slots.start_next()  # row 1 joins in front of the running range: [1, 3, 0] in slots 0..2
    assert slots.first == 0 and slots.running == [1, 3, 0] and not slots.waiting


def test_several_rows_ending_at_one_step_leave_the_others_contiguous_with_their_own_cache():
    slots = _Slots(list(range(5)))
    for _ in range(5):
        slots.start_next()
    assert slots.running == [4, 3, 2, 1, 0]
    kv = _cache(5)
    slots.finish([4, 0, 2], kv, columns=6)  # slots 0, 4 (the last) and 2
    assert sorted(slots.running) == [1, 3]
    for slot, row in enumerate(slots.running):
        # each running row's cache is the one its original slot (4 - row) had
        assert kv[1][0][:, slot, 0].tolist() == [100 * (4 - row) + c for c in range(6)]
    slots.finish(slots.running, kv, columns=6)
    assert slots.running == [] and not slots.waiting


def test_megatrons_static_cache_is_read_and_written_where_the_backend_points_it():
    """When megatron-core moves these, this fails here, on the CPU: the backend sets
    ``sequence_len_offset`` and ``batch_size_offset`` of the context before each decode step and
    copies rows of ``key_value_memory_dict``'s [columns, rows, ...] buffers."""
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.transformer.attention import Attention

    context = StaticInferenceContext(4, 16)
    assert (context.sequence_len_offset, context.batch_size_offset, context.key_value_memory_dict) == (0, 0, {})
    source = inspect.getsource(Attention._adjust_key_value_for_inference)
    for line in (
        "batch_start = inference_context.batch_size_offset",
        "sequence_start = inference_context.sequence_len_offset",
        "inference_key_memory[sequence_start:sequence_end, batch_start:batch_end, ...] = key",
        "key = inference_key_memory[:sequence_end, batch_start:batch_end, ...]",
    ):
        assert line in source, line
