"""Agentic environments behind one interface (see ``nemo_craft.envs.base``)."""

from nemo_craft.envs.base import EnvConfig, TextEnv
from nemo_craft.envs.pool import EnvPool, EnvResult, PoolConfig
from nemo_craft.envs.registry import ENVIRONMENTS, env_class, env_factory, make_config, make_env, register_env
from nemo_craft.envs.spec import HELD_OUT, EvalSplit, PaperMetric

__all__ = [
    "ENVIRONMENTS",
    "HELD_OUT",
    "EnvConfig",
    "EnvPool",
    "EnvResult",
    "EvalSplit",
    "PaperMetric",
    "PoolConfig",
    "TextEnv",
    "env_class",
    "env_factory",
    "make_config",
    "make_env",
    "register_env",
]
