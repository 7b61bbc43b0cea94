"""reduce_named without a group: the values by name, whatever their type; a bad op is named."""

import pytest
import torch

from nemo_craft.parallel.reductions import reduce_named


def test_without_a_group_the_values_come_back_by_name_as_floats():
    out = reduce_named({"b": torch.tensor(3), "a": 2.5, "c": torch.tensor([True]).sum()}, None)
    assert out == {"a": 2.5, "b": 3.0, "c": 1.0}
    assert all(type(v) is float for v in out.values())


def test_an_empty_dict_needs_no_collective():
    assert reduce_named({}, None) == {}


def test_an_unknown_op_is_refused_by_name():
    with pytest.raises(ValueError, match=r"op='mean'; allowed: \['max', 'min', 'sum'\]"):
        reduce_named({"a": 1.0}, None, op="mean")
