"""Every shipped recipe and parallel preset, composed as a user composes it and validated at the
world size it is made for (no process group: the trainer validates every section on
construction). The CPU demo's settings must never reach a recipe or a pretrained model."""

from __future__ import annotations

import json

import pytest
import yaml

from nemo_craft.config import CONF_DIR, RunConfig, compose, load_run
from nemo_craft.parallel.config import OptimConfig
from nemo_craft.rollout.config import GenerationConfig
from nemo_craft.trainer.config import TrainerConfig
from nemo_craft.trainer.trainer import RLTrainer

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF_DIR / "parallel").glob("*.yaml"))


def _trainer(overrides, world_size, monkeypatch, cfg=None):
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    return RLTrainer(RunConfig.from_omegaconf(cfg).validate() if cfg is not None else load_run(overrides))


def _checkpoint_dir(tmp_path, model_overrides):
    """A directory whose config.json describes the model ``model_overrides`` compose to (what a
    real checkpoint of it would hold; no weights are read before a model is built)."""
    model = RunConfig.from_omegaconf(compose([*model_overrides, "model.init=random"])).model
    (tmp_path / "config.json").write_text(json.dumps(model.to_hf_config()))
    return str(tmp_path)


def _recipe_yaml(name):
    return yaml.safe_load((CONF_DIR / "recipe" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("pretrained", [False, True])
def test_a_recipe_runs_no_warm_start_and_keeps_its_lr(recipe, pretrained, monkeypatch, tmp_path):
    """From random initialisation (``model.init=random``) or from a checkpoint of the recipe's model."""
    recipe_only = [f"+recipe={recipe}"]
    weights = [f"model.hf_path={_checkpoint_dir(tmp_path, recipe_only)}"] if pretrained else ["model.init=random"]
    overrides = recipe_only + weights
    cfg = compose(overrides)
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    t = _trainer(overrides, world, monkeypatch, cfg)
    own = _recipe_yaml(recipe)
    trainer, generation = own.get("trainer", {}), own.get("rollout", {}).get("generation", {})
    tcfg = t.run.trainer
    assert tcfg.warm_start.steps == 0
    # what a recipe leaves out is the dataclass default (the paper's), never the CPU demo's
    for name in ("lr", "min_lr"):
        assert getattr(tcfg.optim, name) == trainer.get("optim", {}).get(name, getattr(OptimConfig, name)), name
    assert tcfg.micro_batch_size == trainer.get("micro_batch_size", TrainerConfig.micro_batch_size)
    max_new = t.run.rollout.generation.max_new_tokens
    assert max_new == generation.get("max_new_tokens", GenerationConfig.max_new_tokens)
    assert max_new != compose([]).rollout.generation.max_new_tokens  # the demo's 8 tokens


def test_another_model_without_a_recipe_gets_no_demo_settings():
    cfg = compose(["model=qwen3_8b", "model.hf_path=/models/qwen3_8b"])
    assert cfg.trainer.warm_start.steps == 0 and cfg.trainer.optim.lr == 1e-6
    assert cfg.rollout.generation.max_new_tokens == 512


def test_the_demo_keeps_its_own_settings():
    cfg = compose([])
    assert cfg.trainer.warm_start.steps == 60 and cfg.trainer.optim.lr == 3e-4
    assert cfg.rollout.generation.max_new_tokens == 8


def test_a_pretrained_warm_start_must_be_asked_for_by_name(monkeypatch, tmp_path):
    ckpt = _checkpoint_dir(tmp_path, ["model=smollm2_135m"])
    asked = [
        "model=smollm2_135m",
        f"model.hf_path={ckpt}",
        "trainer.warm_start.steps=60",
        "trainer.micro_batch_size=16",
    ]
    with pytest.raises(ValueError, match=rf"trainer.warm_start.steps=60 with model.hf_path={ckpt}.*on_pretrained=true"):
        _trainer(asked, 1, monkeypatch)
    t = _trainer([*asked, "trainer.warm_start.on_pretrained=true"], 1, monkeypatch)
    assert t.run.trainer.warm_start.steps == 60


@pytest.mark.parametrize("preset", PRESETS)
def test_every_parallel_preset_validates_at_its_own_size(preset, monkeypatch):
    p = yaml.safe_load((CONF_DIR / "parallel" / f"{preset}.yaml").read_text()) or {}  # defaults: TP = PP = 1
    model_parallel = p.get("tensor_model_parallel_size", 1) * p.get("pipeline_model_parallel_size", 1)
    world = model_parallel * 2  # two data-parallel replicas
    # the 8-layer-per-chunk presets need a model that splits: Llama-3.1-70B's 80 layers do
    t = _trainer(
        [
            f"parallel={preset}",
            "model=llama3p1_70b",
            "model.init=random",
            "rollout.tasks_per_step=16",
            "rollout.group_size=8",
            "trainer.micro_batch_size=1",
        ],
        world,
        monkeypatch,
    )
    assert t.dp_size == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("parallel.context_parallel_size=4", "world size 2 is not divisible by TP\\*PP\\*CP = 1\\*1\\*4"),
        (
            "parallel.context_parallel_size=2 trainer.max_tokens_per_microbatch=256",
            "context parallel \\(parallel.context_parallel_size=2\\) does not take; leave packing off",
        ),
        ("parallel.context_parallel_size=2 model.core_attention=local", "needs model.core_attention=sdpa"),
        ("rollout.generation.top_p=0.9", "rollout.generation.top_p=0.9.*allowed: top_p=1.0, top_k=0"),
        ("rollout.generation.top_k=5", "rollout.generation.top_k=5"),
        ("rollout.generation.temperature=0", "rollout.generation.temperature=0.*must sample"),
        (
            "parallel.pipeline_model_parallel_size=2 parallel.virtual_pipeline_model_parallel_size=2",
            "virtual_pipeline_model_parallel_size=2: rollouts run megatron's inference engines",
        ),
    ],
)
def test_values_that_cannot_work_are_refused_before_any_process_group(override, message, monkeypatch):
    with pytest.raises(ValueError, match=message):
        _trainer(override.split(), 2, monkeypatch)


def test_validation_may_truncate_its_sampling(monkeypatch):
    t = _trainer(["rollout.validation.top_p=0.9", "rollout.validation.top_k=20"], 1, monkeypatch)
    rollout = t.run.rollout
    g = rollout.generation_config(validation=True)
    assert (g.top_p, g.top_k) == (0.9, 20)
    assert (rollout.generation_config().top_p, rollout.generation_config().top_k) == (1.0, 0)


def test_cli_refuses_bad_values_in_one_line(capsys, monkeypatch):
    from nemo_craft.cli.train import main

    monkeypatch.setenv("RANK", "0")  # as under torchrun: the CLI sets up no rendezvous of its own
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["parallel.context_parallel_size=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nemo-craft train: world size 1 is not divisible by TP*PP*CP")
