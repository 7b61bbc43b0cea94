"""Closed choices are ``Literal[...]`` fields, refused at construction in one line naming the value
and the allowed ones (docs/design.md#configuration)."""

from __future__ import annotations

import typing

import pytest

from nemo_craft.config import compose
from nemo_craft.core.typed import check_choices
from nemo_craft.envs.pool import PoolConfig
from nemo_craft.losses.config import LossConfig
from nemo_craft.models.config import ModelConfig
from nemo_craft.parallel.config import OptimConfig, ParallelConfig
from nemo_craft.rollout.config import GenerationConfig
from nemo_craft.trainer.config import WandbConfig


def _literal(hint):
    """The choices of ``Literal[...]`` or ``Optional[Literal[...]]``, else None."""
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


CLASSES = (ModelConfig, WandbConfig, LossConfig, ParallelConfig, OptimConfig, GenerationConfig, PoolConfig)
LITERALS = [
    (cls, name, _literal(hint))
    for cls in CLASSES
    for name, hint in typing.get_type_hints(cls).items()
    if _literal(hint)
]


def test_the_closed_choices_are_literals():
    assert {(c.__name__, n) for c, n, _ in LITERALS} >= {
        ("ModelConfig", "init"),  # architecture is open: the model-family registry refuses a name it lacks
        ("ModelConfig", "params_dtype"),
        ("ModelConfig", "core_attention"),
        ("WandbConfig", "mode"),
        ("LossConfig", "distill"),
        ("LossConfig", "align"),
        ("LossConfig", "advantage_shaping"),
        ("ParallelConfig", "backend"),
        ("ParallelConfig", "recompute_granularity"),
        ("ParallelConfig", "recompute_method"),
        ("OptimConfig", "lr_decay_style"),
        ("GenerationConfig", "backend"),  # rollout.generation.backend
        ("PoolConfig", "backend"),
    }


@pytest.mark.parametrize("cls, name, allowed", LITERALS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_value_outside_a_literal_is_refused_naming_the_allowed_ones(cls, name, allowed):
    with pytest.raises(ValueError) as err:
        cls(**{name: "nope"})
    message = str(err.value)
    assert "\n" not in message and name in message and "'nope'" in message, message
    assert all(repr(value) in message for value in allowed if value is not None), message
    # an allowed value constructs (the architecture's flags may refuse others; routing replay other than
    # none needs a mixture-of-experts model, and r3 is refused until it is built: docs/moe.md)
    cls(**{name: allowed[0] if name == "moe_routing_replay" else allowed[-1]})


def test_the_command_line_refusal_is_one_line():
    from nemo_craft.config import RunConfig

    with pytest.raises(ValueError, match=r"^model.core_attention='flash': allowed values are \('sdpa', 'local'\)$"):
        RunConfig.from_omegaconf(compose(["model.core_attention=flash"]))


def test_optional_literals_accept_none():
    from dataclasses import dataclass

    @dataclass
    class C:
        mode: typing.Optional[typing.Literal["a", "b"]] = None

    check_choices(C(), "c")
    with pytest.raises(ValueError, match=r"c.mode='z': allowed values are \('a', 'b', None\)"):
        check_choices(C(mode="z"), "c")
