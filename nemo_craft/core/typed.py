"""Typed config sections: dataclasses built from plain values, with their checks.

Every section of the run config is a dataclass owned by the part that reads it; its field defaults
are the only defaults (docs/design.md#configuration). These helpers build one from the plain dict
of a composed config, list its defaults, and refuse a value outside a ``Literal`` in one line.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["field_defaults", "nested_class", "check_choices", "to_dataclass", "literal_choices"]


def field_defaults(cls: type) -> dict:
    """The raw field defaults of dataclass ``cls`` (nested dataclasses as dicts, tuples as lists);
    fields without a default are left out. Raw: no ``__post_init__`` derives anything."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            value = field_defaults(factory) if dataclasses.is_dataclass(factory) else factory()
        else:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def nested_class(cls: type, name: str) -> type | None:
    """The dataclass of field ``name`` of ``cls`` when it is a nested section, else None."""
    factory = next(f.default_factory for f in dataclasses.fields(cls) if f.name == name)
    return factory if dataclasses.is_dataclass(factory) else None


def literal_choices(hint: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` (or ``Optional[Literal[...]]``) hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and typing.get_origin(inner[0]) is typing.Literal:
            return typing.get_args(inner[0]) + (None,)
        return None
    return args if typing.get_origin(hint) is typing.Literal else None


def check_choices(obj: Any, section: str) -> None:
    """Refuse a value of a ``Literal[...]`` field (or ``Optional[Literal[...]]``) of dataclass
    ``obj`` that is not one of its choices, with one line naming the value and the allowed ones."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        choices = literal_choices(hint)
        if choices is not None and getattr(obj, name) not in choices:
            raise ValueError(f"{section}.{name}={getattr(obj, name)!r}: allowed values are {tuple(choices)}")


def to_dataclass(cls: type, values: Mapping[str, Any] | None, section: str, drop: Sequence[str] = ()) -> Any:
    """Build dataclass ``cls`` from a plain mapping; nested sections are built from their dicts;
    an unknown key (in nested sections too) is an error naming the section and the allowed keys."""
    values = dict(values or {})
    for key in drop:
        values.pop(key, None)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section '{section}'; allowed: {sorted(fields)}")
    for name, value in values.items():
        nested = nested_class(cls, name)
        if nested is not None and isinstance(value, Mapping):
            values[name] = to_dataclass(nested, value, f"{section}.{name}")
    return cls(**values)
