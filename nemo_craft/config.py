"""Compose the run config from ``conf/`` with Hydra-style overrides, and validate it at start-up.

    cfg = compose(["method=sdar", "trainer.max_steps=20"])   # an OmegaConf DictConfig
    run = RunConfig.from_omegaconf(cfg)                     # typed, validated sections

One home per default (docs/design.md#configuration): each section is the dataclass owned by the
class that uses it (``SECTIONS``: ModelConfig, ParallelConfig, TrainerConfig, ...), and its field
defaults are the only defaults; a YAML under ``conf/`` holds only what differs from them.
``compose`` fills every field the YAML leaves out from its dataclass, so the composed config
(what a checkpoint's config.yaml records) is the full effective one, and any field
can be overridden on the command line whether or not a YAML lists it. A misspelt key fails
before composition, naming the key and the section's fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONF_DIR",
    "SECTIONS",
    "compose",
    "to_dataclass",
    "field_defaults",
    "check_choices",
    "rollout_config",
    "RunConfig",
]

# Inside the package, so that a wheel ships it: in a checkout nemo_craft/conf links to the
# top-level conf/ that users edit (setup.cfg's package_data copies the files into the wheel).
CONF_DIR = Path(__file__).resolve().parent / "conf"

# Section of the run config -> "module:dataclass" that owns its fields and their defaults.
SECTIONS = {
    "model": "nemo_craft.models.config:ModelConfig",
    "parallel": "nemo_craft.parallel.config:ParallelConfig",
    "cluster": "nemo_craft.planner.inputs:ClusterConfig",
    "rollout": "nemo_craft.rollout.episodes:RolloutConfig",
    "trainer": "nemo_craft.trainer.trainer:TrainerConfig",
    "checkpoint": "nemo_craft.trainer.checkpoint:CheckpointConfig",
    "logging": "nemo_craft.trainer.logger:LoggingConfig",
    "loss": "nemo_craft.losses.config:LossConfig",  # defaults: the method's preset (LossConfig.preset)
    "plan": "nemo_craft.planner.inputs:Workload",  # not filled: its defaults derive from rollout/trainer
}
# Keys of a section that are no dataclass field: the loss preset's name and label, the env's name.
_EXTRA_KEYS = {"loss": ("preset", "name"), "env": ("name",)}
_UNFILLED = ("plan",)


def section_class(section: str) -> type:
    module, name = SECTIONS[section].split(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def env_sections(env_name: str | None) -> dict[str, type]:
    """The dataclasses of the ``env`` section: ``pool``, and ``config`` (the environment's own)
    when the environment is known."""
    from nemo_craft.envs import PoolConfig, env_class

    return {"pool": PoolConfig, **({"config": env_class(env_name).config_cls} if env_name else {})}


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


def check_choices(obj: Any, section: str) -> None:
    """Refuse a value of a ``Literal[...]`` field (or ``Optional[Literal[...]]``) of dataclass
    ``obj`` that is not one of its choices, with one line naming the value and the allowed ones."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union and type(None) in args:  # Optional[Literal[...]]
            inner = [a for a in args if a is not type(None)]
            hint, args = inner[0], typing.get_args(inner[0]) + (None,)
        if typing.get_origin(hint) is typing.Literal and getattr(obj, name) not in args:
            raise ValueError(f"{section}.{name}={getattr(obj, name)!r}: allowed values are {tuple(args)}")


# ------------------------------------------------------------------------------- composition


def compose(
    overrides: Sequence[str] = (), config_dir: str | Path | None = None, config_name: str = "config"
) -> DictConfig:
    """The resolved config of ``conf/<config_name>.yaml`` with ``overrides`` applied, every
    section filled with its dataclass's defaults where the YAML and the overrides leave a field out."""
    conf = Path(config_dir or CONF_DIR).resolve()
    if not (conf / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no {config_name}.yaml in config directory {conf}")
    overrides = list(overrides)
    env_name = None
    if any(o.startswith("env.") and not o.startswith("env.name=") for o in overrides):
        # The env section's fields depend on the environment: compose once without them to know it.
        first = _field_overrides([o for o in overrides if not o.startswith("env.")], env_name=None)
        env_name = _hydra_compose(conf, config_name, first, overrides).env.name
    cfg = _hydra_compose(conf, config_name, _field_overrides(overrides, env_name), overrides)
    _fill_defaults(cfg)
    OmegaConf.resolve(cfg)
    return cfg


def _hydra_compose(conf: Path, config_name: str, overrides: list[str], given: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (ConfigCompositionException, MissingConfigException) as err:
        groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
        options = {g: sorted(f.stem for f in (conf / g).glob("*.yaml")) for g in groups}
        raise ValueError(f"bad config override in {given}: {err}\navailable groups: {options}") from None


def _field_overrides(overrides: Sequence[str], env_name: str | None) -> list[str]:
    """``section.field=v`` -> ``++section.field=v`` for a field of the section's dataclass, whether
    or not a YAML lists it (Hydra refuses to override a key the composed YAML does not hold); a
    key that names no field fails here, naming it and the allowed ones. ``env.config.*`` is
    checked against the environment ``env_name``'s config class; other keys are left to Hydra."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        path = key.split(".")
        if "=" not in o or o[0] in "+~" or len(path) < 2 or not (path[0] in SECTIONS or path[0] == "env"):
            out.append(o)
            continue
        if path[0] == "env":
            if path[1] in _EXTRA_KEYS["env"]:
                out.append(o)
                continue
            _check_path(path, env_sections(env_name), "env")
        elif path[1] not in _EXTRA_KEYS.get(path[0], ()):
            _check_path(path[1:], section_class(path[0]), path[0])
        out.append("++" + o)
    return out


def _check_path(path: Sequence[str], schema: type | dict, where: str) -> None:
    """Raise a ValueError unless ``path`` names a field of ``schema`` (a dataclass, or a dict of
    sub-sections), through nested dataclasses."""
    if isinstance(schema, dict):
        allowed = sorted([*schema, *_EXTRA_KEYS.get(where, ())])
        if len(path) < 2 or path[1] not in schema:
            raise ValueError(f"unknown config key '{'.'.join(path)}'; allowed under '{where}': {allowed}")
        return _check_path(path[2:], schema[path[1]], f"{where}.{path[1]}")
    allowed = sorted(f.name for f in dataclasses.fields(schema))
    if not path or path[0] not in allowed:
        name = f"{where}.{'.'.join(path)}"
        raise ValueError(f"unknown config key '{name}'; allowed under '{where}' ({schema.__name__}): {allowed}")
    nested = nested_class(schema, path[0])
    if len(path) > 1 or nested is not None:
        if nested is None:
            raise ValueError(
                f"unknown config key '{where}.{'.'.join(path)}': {where}.{path[0]} is a value, not a section"
            )
        if len(path) > 1:
            _check_path(path[1:], nested, f"{where}.{path[0]}")


def _fill_defaults(cfg: DictConfig) -> None:
    """Every field of every section that the composed YAML leaves out, from its dataclass: the
    loss's from its preset, the env's from the environment's config class and PoolConfig, and
    ``rollout.stop_strings`` from the environment (where its actions end)."""
    from nemo_craft.envs import env_class
    from nemo_craft.losses.config import LossConfig

    struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    defaults = {s: field_defaults(section_class(s)) for s in SECTIONS if s not in (*_UNFILLED, "loss")}
    env_name = OmegaConf.select(cfg, "env.name")
    if env_name is not None:
        defaults["env"] = {k: field_defaults(v) for k, v in env_sections(env_name).items()}
        defaults["rollout"]["stop_strings"] = list(env_class(env_name).stop_strings)
    preset = OmegaConf.select(cfg, "loss.preset")
    if preset is not None:
        defaults["loss"] = dataclasses.asdict(LossConfig.preset(preset))
    for section, values in defaults.items():
        given = cfg.get(section) or {}  # an empty group file (parallel=single) composes to None
        cfg[section] = OmegaConf.merge(OmegaConf.create(values), given)
    OmegaConf.set_struct(cfg, struct)


# ------------------------------------------------------------------------------- typed sections


def to_dataclass(cls: type, node: Any, section: str, drop: Sequence[str] = ()) -> Any:
    """Build dataclass ``cls`` from a config node; unknown keys (in nested sections too) are an
    error naming the section and the allowed keys."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    for key in drop:
        values.pop(key, None)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section '{section}'; allowed: {sorted(fields)}")
    for name, value in values.items():
        nested = nested_class(cls, name)
        if nested is not None and isinstance(value, dict):
            values[name] = to_dataclass(nested, value, f"{section}.{name}")
    return cls(**values)


def rollout_config(cfg: DictConfig):
    """The run's ``RolloutConfig``; its stop strings default to the environment's (where its
    actions end: ``</action>``, or ``</search>`` / ``</answer>`` for Search-QA)."""
    from nemo_craft.envs import env_class
    from nemo_craft.rollout.episodes import RolloutConfig

    rollout = to_dataclass(RolloutConfig, cfg.rollout, "rollout")
    if "stop_strings" not in cfg.rollout:  # a config composed before compose filled it (old checkpoints)
        rollout.stop_strings = tuple(env_class(cfg.env.name).stop_strings)
    return rollout


@dataclasses.dataclass
class RunConfig:
    """The typed sections of one run, every one built and validated from the composed config
    (so a bad value fails before any process group, model or weight exists)."""

    raw: DictConfig
    model: Any
    parallel: Any
    loss: Any
    env_name: str
    env_kwargs: dict
    trainer: Any = None
    rollout: Any = None
    checkpoint: Any = None
    logging: Any = None
    env_config: Any = None
    pool: Any = None

    @classmethod
    def from_omegaconf(cls, cfg: DictConfig) -> RunConfig:
        from nemo_craft.envs import PoolConfig
        from nemo_craft.envs.registry import make_config
        from nemo_craft.losses import LossConfig
        from nemo_craft.models.hf_config import record_resolved

        loss_node = OmegaConf.to_container(cfg.loss, resolve=True)
        preset = loss_node.pop("preset", None)
        if preset is None:
            raise ValueError("config section 'loss' needs a 'preset' (pick one with method=NAME)")
        name = loss_node.pop("name", preset)
        loss = LossConfig.preset(preset, **loss_node)
        if name != loss.name:
            loss = dataclasses.replace(loss, name=name)
        env_node = OmegaConf.to_container(cfg.env, resolve=True)
        env_name = env_node.pop("name", None)  # the rest: config (the env's own), pool
        if env_name is None:
            raise ValueError("config section 'env' needs a 'name' (pick one with env=NAME)")
        sections = {
            s: to_dataclass(section_class(s), cfg[s], s)
            for s in ("model", "parallel", "trainer", "checkpoint", "logging")
            if s in cfg
        }
        record_resolved(cfg.get("model"), sections.get("model"))  # model=from_hf: config.json's values
        return cls(
            raw=cfg,
            loss=loss,
            env_name=env_name,
            env_kwargs=env_node,
            **sections,
            rollout=rollout_config(cfg) if "rollout" in cfg else None,
            env_config=make_config(env_name, **env_node.get("config", {})),
            pool=to_dataclass(PoolConfig, env_node.get("pool", {}), "env.pool"),
        )
