"""``make_env(name, **cfg)``: build an environment by name; engines are imported on first use.

An environment is its class (with its config, stop strings, evaluation splits and paper metrics:
``TextEnv``), a YAML under ``conf/env/`` and one entry here, ``register_env`` for environments
outside this package (docs/extending.md#environment)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv

# name -> (module, class); modules are imported lazily (ScienceWorld / ALFWorld are heavy).
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "sokoban": ("nemo_craft.envs.sokoban.env", "SokobanEnv"),
    "search_qa": ("nemo_craft.envs.search_qa.env", "SearchQAEnv"),
    "webshop": ("nemo_craft.envs.webshop.env", "WebShopEnv"),
    "alfworld": ("nemo_craft.envs.alfworld.env", "ALFWorldEnv"),
    "scienceworld": ("nemo_craft.envs.scienceworld", "ScienceWorldEnv"),
}

# name -> the modules of its optional engine (the ``envs`` extra of setup.cfg)
ENGINES: dict[str, tuple[str, ...]] = {
    "alfworld": ("alfworld", "textworld"),
    "scienceworld": ("scienceworld",),
}
INSTALL_ENGINES = "pip install 'nemo_craft[envs]' (or bash scripts/install.sh test)"


def register_env(name: str, cls_path: str, *, engines: tuple[str, ...] = ()) -> None:
    """Make environment ``name`` the ``TextEnv`` subclass at ``cls_path`` ("package.module:Class");
    ``engines``: the modules it needs installed (named by ``make_env`` when missing)."""
    module, _, cls = cls_path.partition(":") if isinstance(cls_path, str) else ("", "", "")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"environment name must be an identifier, got {name!r}")
    if not module or not cls:
        raise ValueError(f"environment {name!r}: cls_path must be 'package.module:Class', got {cls_path!r}")
    if ENVIRONMENTS.get(name, (module, cls)) != (module, cls):
        raise ValueError(f"environment {name!r} is already registered as {':'.join(ENVIRONMENTS[name])!r}")
    ENVIRONMENTS[name] = (module, cls)
    if engines:
        ENGINES[name] = tuple(engines)


class MissingEngineError(ImportError):
    """An environment's optional engine is not installed; the message is one line naming the
    environment, the missing module and the install command."""


def require_engine(name: str) -> None:
    """Raise :class:`MissingEngineError` when environment ``name``'s engine cannot be imported."""
    missing = [m for m in ENGINES.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingEngineError(
            f"environment {name!r} needs {' and '.join(missing)}, which is not installed: {INSTALL_ENGINES}"
        )


def env_class(name: str) -> type[TextEnv]:
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    module, cls = ENVIRONMENTS[name]
    return getattr(importlib.import_module(module), cls)


def make_config(name: str, **cfg: Any) -> EnvConfig:
    """The environment's config dataclass from keyword values; unknown keys are named."""
    config_cls = env_class(name).config_cls
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{name}: unknown config key(s) {unknown}; known: {sorted(known)}")
    return config_cls(**cfg)


def make_env(name: str, **cfg: Any) -> TextEnv:
    """An environment by registry name, e.g. ``make_env("sokoban", height=7, num_boxes=2)``."""
    require_engine(name)
    return env_class(name)(make_config(name, **cfg))


def env_factory(name: str, **cfg: Any) -> functools.partial:
    """A picklable zero-argument factory (for ``EnvPool``). Checks now what would otherwise fail
    inside the pool, where a failure only ends each episode: the config, the engine, and what the
    environment's ``preflight(config)`` checks (e.g. a data directory)."""
    config = make_config(name, **cfg)
    require_engine(name)
    preflight = getattr(env_class(name), "preflight", None)
    if preflight is not None:
        preflight(config)
    return functools.partial(make_env, name, **cfg)
