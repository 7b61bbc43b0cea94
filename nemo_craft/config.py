"""Compose the run config from ``conf/`` with Hydra-style overrides, and validate it at start-up.

    run = load_run(["method=sdar", "trainer.max_steps=20"])   # typed, validated sections
    run.trainer.optim.lr, run.rollout.generation.temperature, run.env.config

The top of the package: it composes once with Hydra (``compose``), builds every section's
dataclass once (``RunConfig``) and validates them before any process group; the trainer, the
evaluator, the policy stack and the planner read only the typed fields.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_craft.core.paths import CONF_DIR
from nemo_craft.core.typed import field_defaults, nested_class, to_dataclass
from nemo_craft.envs import PoolConfig, env_class, env_factory
from nemo_craft.envs.registry import make_config
from nemo_craft.losses.config import LossConfig
from nemo_craft.models.config import ModelConfig
from nemo_craft.models.hf_config import record_resolved
from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.planner.config import ClusterConfig, Workload
from nemo_craft.rollout.backends import check_run
from nemo_craft.rollout.config import RolloutConfig
from nemo_craft.runtime.checkpoint_layout import CONFIG_YAML, CheckpointInfo, resolve_checkpoint
from nemo_craft.runtime.config import CheckpointConfig
from nemo_craft.trainer.config import LoggingConfig, TrainerConfig

__all__ = ["CONF_DIR", "SECTIONS", "MOVED_KEYS", "compose", "load_run", "load_eval_run", "RunConfig", "EnvSection"]


# Section of the run config -> the dataclass that owns its fields and their defaults.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "cluster": ClusterConfig,
    "rollout": RolloutConfig,
    "trainer": TrainerConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "loss": LossConfig,  # defaults: the method's preset (LossConfig.preset)
    "plan": Workload,  # not filled: its defaults derive from rollout/trainer
}
# Keys of a section that are no dataclass field: the loss preset's name and label, the env's name.
_EXTRA_KEYS = {"loss": ("preset", "name"), "env": ("name",)}
_UNFILLED = ("plan",)

# Keys that moved into nested sections: a command line naming the old key is told the new one,
# and the config.yaml of a checkpoint written before the move is read with its keys moved.
MOVED_KEYS = {
    **{
        f"trainer.{k}": f"trainer.optim.{k}"
        for k in ("lr", "min_lr", "lr_warmup_steps", "lr_decay_style", "weight_decay", "adam_beta1", "adam_beta2")
    },
    "trainer.clip_grad": "trainer.optim.clip_grad",
    "rollout.max_tokens_per_turn": "rollout.generation.max_new_tokens",
    **{
        f"rollout.{k}": f"rollout.generation.{k}"
        for k in (
            "temperature",
            "top_p",
            "top_k",
            "backend",
            "stop_strings",
            "max_batch_size",
            "max_sequence_length",
            "kv_cache_gb",
            "max_tokens_per_step",
            "cuda_graphs",
        )
    },
    **{f"rollout.val_{k}": f"rollout.validation.{k}" for k in ("temperature", "top_p", "top_k")},
}


def section_class(section: str) -> type:
    return SECTIONS[section]


def env_sections(env_name: str | None) -> dict[str, type]:
    """The dataclasses of the ``env`` section: ``pool``, and ``config`` (the environment's own)
    when the environment is known."""
    return {"pool": PoolConfig, **({"config": env_class(env_name).config_cls} if env_name else {})}


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
        moved = MOVED_KEYS.get(key.lstrip("+~"))
        if moved is not None:
            raise ValueError(f"config key '{key.lstrip('+~')}' is now '{moved}': write {moved}={o.split('=', 1)[-1]}")
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
    ``rollout.generation.stop_strings`` from the environment (where its actions end)."""
    struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    defaults = {s: field_defaults(section_class(s)) for s in SECTIONS if s not in (*_UNFILLED, "loss")}
    env_name = OmegaConf.select(cfg, "env.name")
    if env_name is not None:
        defaults["env"] = {k: field_defaults(v) for k, v in env_sections(env_name).items()}
        defaults["rollout"]["generation"]["stop_strings"] = list(env_class(env_name).stop_strings)
    preset = OmegaConf.select(cfg, "loss.preset")
    if preset is not None:
        defaults["loss"] = dataclasses.asdict(LossConfig.preset(preset))
    for section, values in defaults.items():
        given = cfg.get(section) or {}  # an empty group file (parallel=single) composes to None
        cfg[section] = OmegaConf.merge(OmegaConf.create(values), given)
    OmegaConf.set_struct(cfg, struct)


# ------------------------------------------------------------------------------- moved keys


def migrate_moved_keys(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a checkpoint's config.yaml written before keys moved) with each key of
    ``MOVED_KEYS`` at its new place, and ``model.init`` (which such a config lacks) "random" where
    the run had no ``model.hf_path``: it was trained from random initialisation. A current config
    is returned as it is."""
    with open_dict(cfg):
        model = cfg.get("model")
        if model is not None and "init" not in model:
            model.init = "pretrained" if model.get("hf_path") else "random"
        for old, new in MOVED_KEYS.items():
            section, name = old.split(".")
            node = cfg.get(section)
            if node is not None and name in node:
                OmegaConf.update(cfg, new, node.pop(name), merge=False, force_add=True)
    return cfg


# ------------------------------------------------------------------------------- typed sections


@dataclass
class EnvSection:
    """The ``env:`` section: which environment, its own config dataclass, how its instances run."""

    name: str
    config: Any
    """The environment's config dataclass (``env_class(name).config_cls``)."""
    pool: PoolConfig

    def factory(self, **changes: Any):
        """A picklable factory of this environment (``env_factory``), with ``changes`` to its config."""
        return env_factory(self.name, **{**dataclasses.asdict(self.config), **changes})


@dataclass
class RunConfig:
    """The typed sections of one run, every one built and validated from the composed config
    (so a bad value fails before any process group, model or weight exists). Everything past
    the CLI reads these fields; the composed config itself is kept only to be written out
    (``to_yaml``: a checkpoint's config.yaml, the logged config)."""

    model: ModelConfig
    parallel: ParallelConfig
    cluster: ClusterConfig
    rollout: RolloutConfig
    trainer: TrainerConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    loss: LossConfig
    env: EnvSection
    plan: Workload
    """The planner's view of the step (``plan:`` overrides on top of what the sections imply)."""
    seed: int
    run_dir: str
    composed: DictConfig = dataclasses.field(repr=False, default=None)

    @property
    def env_name(self) -> str:
        return self.env.name

    @classmethod
    def from_omegaconf(cls, cfg: DictConfig) -> RunConfig:
        loss_node = OmegaConf.to_container(cfg.loss, resolve=True)
        preset = loss_node.pop("preset", None)
        if preset is None:
            raise ValueError("config section 'loss' needs a 'preset' (pick one with method=NAME)")
        name = loss_node.pop("name", preset)
        loss = LossConfig.preset(preset, **loss_node)
        if name != loss.name:
            loss = dataclasses.replace(loss, name=name)
        env_node = OmegaConf.to_container(cfg.env, resolve=True)
        env_name = env_node.pop("name", None)
        if env_name is None:
            raise ValueError("config section 'env' needs a 'name' (pick one with env=NAME)")
        env = EnvSection(
            name=env_name,
            config=make_config(env_name, **env_node.get("config", {})),
            pool=to_dataclass(PoolConfig, env_node.get("pool", {}), "env.pool"),
        )

        def typed(section: str):
            node = cfg.get(section)
            values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
            return to_dataclass(SECTIONS[section], values, section)

        model, rollout, trainer, parallel = typed("model"), typed("rollout"), typed("trainer"), typed("parallel")
        record_resolved(cfg.get("model"), model)  # model=from_hf: config.json's values in the composed config
        plan_node = cfg.get("plan")
        plan = Workload.from_sections(
            model=model,
            rollout=rollout,
            trainer=trainer,
            parallel=parallel,
            loss=loss,
            overrides=OmegaConf.to_container(plan_node, resolve=True) if plan_node is not None else {},
        )
        return cls(
            model=model,
            parallel=parallel,
            cluster=typed("cluster"),
            rollout=rollout,
            trainer=trainer,
            checkpoint=typed("checkpoint"),
            logging=typed("logging"),
            loss=loss,
            env=env,
            plan=plan,
            seed=int(cfg.seed),
            run_dir=str(cfg.run_dir),
            composed=cfg,
        )

    def validate(self) -> RunConfig:
        """What every command that builds the policy needs, checked before any process group:
        the model against the layout, a layout that can generate, the generation backend on this
        machine, the environment's config, engine and data."""
        self.model.check_weights()
        self.model.validate_layout(self.parallel)
        self.parallel.check_generation()
        check_run(self.rollout.generation.backend, self.parallel, self.model)
        self.env.factory()  # inside the pool a failure would only end episodes
        return self

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.composed, resolve=True)

    def to_dict(self) -> dict:
        return OmegaConf.to_container(self.composed, resolve=True)


def load_run(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose ``conf/`` with ``overrides``, build every typed section and validate them: the
    one place a command-line config becomes a run."""
    return RunConfig.from_omegaconf(compose(overrides)).validate()


# ------------------------------------------------------------------------------- evaluation

# group name on the command line -> the config section it fills (and top-level names derived from it)
_GROUP_SECTIONS = {
    "model": ("model",),
    "env": ("env", "env_name"),
    "method": ("loss", "method_name"),
    "parallel": ("parallel",),
    "cluster": ("cluster",),
}


def _override_key(override: str) -> str:
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    return override.split("=", 1)[0].lstrip("+~")


def _resume_path(overrides: Sequence[str]) -> Optional[str]:
    paths = [o.split("=", 1)[1] for o in overrides if _override_key(o) == "checkpoint.resume"]
    path = paths[-1] if paths else None
    return None if path in (None, "", "null", "None") else path


def load_eval_run(overrides: Sequence[str]) -> tuple[RunConfig, Optional[CheckpointInfo]]:
    """The run config of an evaluation (or a conversion) and its checkpoint (None without one).

    With ``checkpoint.resume=PATH`` the config comes from the checkpoint (its ``config.yaml``: the
    resolved config it was trained with), with the command line's overrides on top: ``key=value``
    replaces that key, a group choice (``env=``, ``model=``, ``method=``, ``parallel=``,
    ``cluster=``) replaces the whole section. Without a checkpoint the config is composed from
    ``conf/`` as for training. Nothing is saved: ``checkpoint.dir`` is cleared.
    """
    overrides = list(overrides)
    composed = compose(overrides)
    path = _resume_path(overrides)
    if path == "auto":
        raise ValueError(
            "evaluate: checkpoint.resume=auto has no run to look in; pass a checkpoint path "
            "(a step_<n> directory, or a run's checkpoints directory for its newest)"
        )
    info = resolve_checkpoint(None, path) if path is not None else None
    cfg = composed
    if info is not None and (info.path / CONFIG_YAML).is_file():
        cfg = migrate_moved_keys(OmegaConf.create((info.path / CONFIG_YAML).read_text()))
        for o in overrides:
            key = _override_key(o)
            if key == "recipe":
                raise ValueError(
                    "evaluate with a checkpoint takes the run's config from the checkpoint; a recipe "
                    "is not applied on top of it: override the sections to change (e.g. parallel=dp)"
                )
            with open_dict(cfg):
                for section in _GROUP_SECTIONS.get(key, (key,)):
                    OmegaConf.update(cfg, section, OmegaConf.select(composed, section), merge=False)
    with open_dict(cfg):
        cfg.checkpoint.resume = str(info.path) if info is not None else None
        cfg.checkpoint.dir = None
        cfg.checkpoint.save_every = 0
    return RunConfig.from_omegaconf(cfg).validate(), info
