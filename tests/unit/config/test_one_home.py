"""One home per default (docs/design.md#configuration): every YAML under conf/ sets only fields
that some dataclass has, and only to values that differ from the default they override."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nemo_craft.config import CONF_DIR, SECTIONS, env_sections, section_class
from nemo_craft.core.typed import field_defaults, nested_class

# Top-level keys no dataclass owns: their home is conf/config.yaml.
TOP_LEVEL = {"seed", "run_dir", "method_name", "env_name"}
GROUPS = {"model": "model", "parallel": "parallel", "cluster": "cluster", "env": "env", "method": "loss"}
GLOBAL = ("demo", "demo_env", "recipe")  # `# @package _global_`: sections of the whole config


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _compare(values: dict, base: dict, schema, where: str, problems: list[str]) -> None:
    """Keys of ``values`` that ``schema`` (a dataclass, or a dict of sub-schemas) lacks, and values
    equal to ``base`` (the value each key overrides)."""
    fields = set(schema) if isinstance(schema, dict) else {f.name for f in dataclasses.fields(schema)}
    for key, value in (values or {}).items():
        if key not in fields:
            problems.append(f"{where}.{key}: no such field (allowed: {sorted(fields)})")
            continue
        sub = schema[key] if isinstance(schema, dict) else nested_class(schema, key)
        if sub is not None and isinstance(value, dict):
            _compare(value, base.get(key, {}), sub, f"{where}.{key}", problems)
        elif key in base and _same(value, base[key]):
            problems.append(f"{where}.{key}: {value!r} repeats the default it overrides")


def _env(values: dict, where: str, problems: list[str]) -> None:
    values = dict(values)
    if "name" not in values:
        problems.append(f"{where}.name: missing")
        return
    schemas = env_sections(values.pop("name"))
    _compare(values, {k: field_defaults(v) for k, v in schemas.items()}, schemas, where, problems)


def _loss(values: dict, where: str, problems: list[str]) -> None:
    from nemo_craft.losses.config import LossConfig

    values = dict(values)
    preset = values.pop("preset", None)
    if preset is None and where.startswith("method/"):
        problems.append(f"{where}.preset: missing")  # a method is a preset of the loss
        return
    # a recipe overlays the chosen method's loss: its fields must exist (their defaults are the preset's)
    base = dataclasses.asdict(LossConfig.preset(preset)) if preset is not None else {}
    _compare(values, base, LossConfig, where, problems)


def _section(section: str, values: dict, base: dict, where: str, problems: list[str]) -> None:
    if section == "env":
        _env(values, where, problems)
    elif section == "loss":
        _loss(values, where, problems)
    else:
        _compare(values, base, section_class(section), where, problems)


def yaml_problems(path: Path, conf: Path = CONF_DIR) -> list[str]:
    """What is wrong with one YAML of ``conf`` (empty when nothing is)."""
    rel = path.relative_to(conf)
    values = yaml.safe_load(path.read_text()) or {}
    values.pop("defaults", None)
    problems: list[str] = []
    if rel.parts[0] == "sweep":
        from nemo_craft.eval.sweep_spec import SweepSpec

        _compare(values, field_defaults(SweepSpec), SweepSpec, str(rel), problems)
        return problems
    if rel.parts[0] in GROUPS:
        _section(
            GROUPS[rel.parts[0]],
            values,
            field_defaults(section_class(GROUPS[rel.parts[0]])) if GROUPS[rel.parts[0]] in SECTIONS else {},
            str(rel),
            problems,
        )
        return problems
    base = {s: field_defaults(section_class(s)) for s in SECTIONS}
    if rel.parts[0] in GLOBAL:  # what a recipe or the demo overrides: the defaults under conf/config.yaml
        for section, given in (yaml.safe_load((conf / "config.yaml").read_text()) or {}).items():
            if isinstance(given, dict) and section in base:
                base[section] = _overlay(base[section], given)
    if rel.parts[0] == "demo_env" and isinstance(values.get("env"), dict):  # <model>_<env>.yaml: that env's fields
        values = {**values, "env": {"name": rel.stem.split("_", 1)[1], **values["env"]}}
    for key, value in values.items():
        if key in TOP_LEVEL and rel.parts[0] not in GLOBAL:
            continue
        if key in TOP_LEVEL:
            continue
        if key not in SECTIONS and key != "env":
            problems.append(
                f"{rel}: {key}: no such section (sections: {sorted([*SECTIONS, 'env'])}, "
                f"top-level keys: {sorted(TOP_LEVEL)})"
            )
            continue
        _section(key, value, base.get(key, {}), f"{rel}:{key}", problems)
    return problems


def _overlay(base: dict, given: dict) -> dict:
    out = dict(base)
    for k, v in given.items():
        out[k] = _overlay(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


@pytest.mark.parametrize("path", sorted(CONF_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_each_yaml_sets_only_existing_fields_to_values_other_than_their_default(path):
    assert yaml_problems(path) == []


def _bad_conf(tmp_path: Path, group: str, name: str, text: str) -> Path:
    (tmp_path / group).mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text((CONF_DIR / "config.yaml").read_text())
    path = tmp_path / group / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "group, text, problem",
    [
        ("model", "num_layers: 4\nhidden_size: 256\n", "model/bad.yaml.num_layers: 4 repeats the default"),
        ("model", "num_layer: 8\n", "model/bad.yaml.num_layer: no such field"),
        ("parallel", "sequence_parallel: false\ntensor_model_parallel_size: 2\n", "sequence_parallel: False repeats"),
        ("env", "name: sokoban\nconfig:\n  height: 6\n", "env/bad.yaml.config.height: 6 repeats"),
        ("env", "name: sokoban\npool:\n  workers: 2\n", "env/bad.yaml.pool.workers: no such field"),
        ("method", "preset: sdar\nname: sdar\n", "method/bad.yaml.name: 'sdar' repeats"),
        ("method", "preset: grpo\nsd_coef: 0.0\n", "method/bad.yaml.sd_coef: 0.0 repeats"),
        ("recipe", "trainer:\n  optim:\n    lr: 1.0e-6\n", "recipe/bad.yaml:trainer.optim.lr: 1e-06 repeats"),
        ("recipe", "trainer:\n  warm_start:\n    stepz: 3\n", "trainer.warm_start.stepz: no such field"),
        ("recipe", "checkpoint:\n  save_every: 10\n", "checkpoint.save_every: 10 repeats"),  # conf/config.yaml's
        ("recipe", "trainr:\n  lr: 1.0\n", "trainr: no such section"),
        ("sweep", "name: s\nlocal:\n  parallel_runs: 1\n", "local.parallel_runs: 1 repeats"),
    ],
)
def test_a_bad_yaml_is_caught(tmp_path, group, text, problem):
    problems = yaml_problems(_bad_conf(tmp_path, group, "bad.yaml", text), conf=tmp_path)
    assert any(problem in p for p in problems), problems


def test_a_method_needs_its_preset_and_a_recipe_overlay_needs_real_fields(tmp_path):
    """A method YAML is a preset of the loss; a recipe's ``loss:`` overlays the chosen method's, so
    its fields must exist (negative controls of both rules)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "method" / "x.yaml").write_text("loss:\n  kl_coef: 0.5\n")
    (conf / "recipe" / "y.yaml").write_text("loss:\n  off_policy: tis\n  nope: 1\n")
    assert yaml_problems(conf / "method" / "x.yaml", conf) == ["method/x.yaml.preset: missing"]
    (problem,) = yaml_problems(conf / "recipe" / "y.yaml", conf)
    assert problem.startswith("recipe/y.yaml:loss.nope: no such field")
