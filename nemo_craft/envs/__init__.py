"""Agentic environments behind one interface (see ``nemo_craft.envs.base``)."""

from nemo_craft.envs.base import EnvConfig, TextEnv
from nemo_craft.envs.pool import EnvPool, EnvResult, PoolConfig
from nemo_craft.envs.registry import ENVIRONMENTS, env_class, env_factory, make_config, make_env

__all__ = [
    "ENVIRONMENTS",
    "EnvConfig",
    "EnvPool",
    "EnvResult",
    "PoolConfig",
    "TextEnv",
    "env_class",
    "env_factory",
    "make_config",
    "make_env",
]
