"""Compose the run config from ``conf/`` with Hydra-style overrides, and validate it at start-up.

    cfg = compose(["method=sdar", "trainer.max_steps=20"])   # an OmegaConf DictConfig
    run = RunConfig.from_omegaconf(cfg)                     # typed, validated sections

Each section is the dataclass owned by the class that uses it (ModelConfig, ParallelConfig,
LossConfig, the environment's config, ...); building it validates it, so a bad value fails
before any process group or model exists, with a message that names the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONF_DIR", "compose", "to_dataclass", "rollout_config", "RunConfig"]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None,
            config_name: str = "config") -> DictConfig:
    """The resolved config of ``conf/<config_name>.yaml`` with ``overrides`` applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    conf = Path(config_dir or CONF_DIR).resolve()
    if not (conf / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no {config_name}.yaml in config directory {conf}")
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=_loss_field_overrides(overrides))
    except (ConfigCompositionException, MissingConfigException) as err:
        groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
        options = {g: sorted(f.stem for f in (conf / g).glob("*.yaml")) for g in groups}
        raise ValueError(f"bad config override in {list(overrides)}: {err}\navailable groups: {options}") from None
    OmegaConf.resolve(cfg)
    return cfg


def _loss_field_overrides(overrides: Sequence[str]) -> list[str]:
    """``loss.<field>=v`` for any LossConfig field, whether or not the method's YAML lists it.

    A method file names only its preset (``conf/method/*.yaml``); the preset's values live in
    ``LossConfig.preset``. Hydra refuses to override a key the YAML does not hold, so such an
    override is sent as ``++loss.<field>=v`` (set whether present or not); other keys under
    ``loss.`` keep Hydra's check, and LossConfig refuses unknown fields by name."""
    from nemo_craft.losses.config import LossConfig

    fields = {f.name for f in dataclasses.fields(LossConfig)}
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if key.startswith("loss.") and key[len("loss."):] in fields:
            o = "++" + o
        out.append(o)
    return out


def to_dataclass(cls: type, node: Any, section: str, drop: Sequence[str] = ()) -> Any:
    """Build dataclass ``cls`` from a config node; unknown keys are an error naming the section."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    for key in drop:
        values.pop(key, None)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section '{section}'; allowed: {sorted(fields)}")
    return cls(**values)


def rollout_config(cfg: DictConfig):
    """The run's ``RolloutConfig``; its stop strings default to the environment's (where its
    actions end: ``</action>``, or ``</search>`` / ``</answer>`` for Search-QA)."""
    from nemo_craft.envs import env_class
    from nemo_craft.rollout.episodes import RolloutConfig

    rollout = to_dataclass(RolloutConfig, cfg.rollout, "rollout")
    if "stop_strings" not in cfg.rollout:
        rollout.stop_strings = tuple(env_class(cfg.env.name).stop_strings)
    return rollout


@dataclasses.dataclass
class RunConfig:
    """The typed sections of one run (built and validated from the composed config)."""

    raw: DictConfig
    model: Any
    parallel: Any
    loss: Any
    env_name: str
    env_kwargs: dict

    @classmethod
    def from_omegaconf(cls, cfg: DictConfig) -> "RunConfig":
        from nemo_craft.losses import LossConfig
        from nemo_craft.models.config import ModelConfig
        from nemo_craft.parallel.config import ParallelConfig

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
        return cls(
            raw=cfg,
            model=to_dataclass(ModelConfig, cfg.model, "model"),
            parallel=to_dataclass(ParallelConfig, cfg.parallel, "parallel"),
            loss=loss,
            env_name=env_name,
            env_kwargs=env_node,
        )
