"""Closed choices are ``Literal[...]`` fields, refused at construction in one line naming the value
and the allowed ones (docs/design.md#configuration)."""

from __future__ import annotations

import typing

import pytest

from nemo_craft.config import check_choices, compose
from nemo_craft.models.config import ModelConfig
from nemo_craft.trainer.logger import WandbConfig

LITERALS = [(cls, name, typing.get_args(hint)) for cls in (ModelConfig, WandbConfig)
            for name, hint in typing.get_type_hints(cls).items() if typing.get_origin(hint) is typing.Literal]


def test_the_closed_choices_are_literals():
    assert {(c.__name__, n) for c, n, _ in LITERALS} >= {
        ("ModelConfig", "architecture"), ("ModelConfig", "params_dtype"), ("ModelConfig", "core_attention"),
        ("WandbConfig", "mode")}


@pytest.mark.parametrize("cls, name, allowed", LITERALS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_value_outside_a_literal_is_refused_naming_the_allowed_ones(cls, name, allowed):
    with pytest.raises(ValueError, match=rf"\.{name}='nope': allowed values are \(.*'{allowed[0]}'"):
        cls(**{name: "nope"})
    cls(**{name: allowed[-1]})  # every allowed value constructs (the architecture's flags may refuse others)


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
