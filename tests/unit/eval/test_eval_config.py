"""``evaluate``'s config: the checkpoint's run config with the command line's overrides on top."""

import pytest
from omegaconf import OmegaConf

from nemo_craft.config import MOVED_KEYS, compose, load_eval_run, migrate_moved_keys
from nemo_craft.losses.config import LossConfig
from nemo_craft.runtime.checkpoint_layout import write_complete_marker


def _fake_checkpoint(tmp_path, overrides):
    """A checkpoint directory holding only the resolved config (enough for ``load_eval_run``)."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_000007"
    ckpt.mkdir(parents=True)
    cfg = compose(overrides + [f"run_dir={tmp_path / 'run'}"])
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_complete_marker(ckpt, 7)
    return ckpt


def test_config_comes_from_the_checkpoint_with_overrides_on_top(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, ["env=search_qa", "method=sdar", "env.config.max_turns=3", "seed=5"])
    run, info = load_eval_run([f"checkpoint.resume={ckpt.parent}", "trainer.val_tasks=5"])
    assert info.path == ckpt and info.step == 7
    assert run.env_name == "search_qa" and run.env.config.max_turns == 3 and run.loss.name == "sdar"
    assert run.seed == 5 and run.trainer.val_tasks == 5 and run.run_dir == str(tmp_path / "run")
    assert run.checkpoint.resume == str(ckpt) and run.checkpoint.dir is None and run.checkpoint.save_every == 0
    run, _ = load_eval_run([f"checkpoint.resume={ckpt}", "env=webshop", "method=grpo"])
    assert run.env_name == "webshop" and run.env.name == "webshop" and run.env.config.max_turns == 15
    assert run.loss.name == "grpo" and run.loss == LossConfig.preset("grpo")
    assert run.composed.method_name == "grpo" and run.composed.loss.preset == "grpo"


def test_without_a_checkpoint_the_config_is_composed(tmp_path):
    run, info = load_eval_run(["env=webshop", "checkpoint.resume=null"])
    assert info is None and run.env_name == "webshop" and run.checkpoint.resume is None


def test_bad_checkpoint_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="resume=auto has no run"):
        load_eval_run(["checkpoint.resume=auto"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_eval_run([f"checkpoint.resume={tmp_path}/nope"])
    ckpt = _fake_checkpoint(tmp_path, [])
    with pytest.raises(ValueError, match="recipe is not applied"):
        load_eval_run([f"checkpoint.resume={ckpt}", "+recipe=qwen3_1p7b_1node"])


NEW_SECTIONS = ("trainer.optim", "rollout.generation", "rollout.validation")


def _with_old_keys(cfg):
    """``cfg`` as a config.yaml written before the keys of ``MOVED_KEYS`` moved: each at its old
    place, and no ``trainer.optim`` / ``rollout.generation`` / ``rollout.validation`` section."""
    for old, new in MOVED_KEYS.items():
        section, name = old.split(".")
        cfg[section][name] = OmegaConf.select(cfg, new)
    for nested in NEW_SECTIONS:
        section, name = nested.split(".")
        cfg[section].pop(name)
    return cfg


def test_an_old_checkpoint_config_is_read_with_its_keys_moved():
    new = compose(["trainer.optim.lr=2e-5", "rollout.generation.max_new_tokens=33", "rollout.validation.top_k=7"])
    old = _with_old_keys(OmegaConf.create(OmegaConf.to_container(new, resolve=True)))
    assert old.trainer.lr == 2e-5 and old.rollout.max_tokens_per_turn == 33 and old.rollout.val_top_k == 7
    migrated = migrate_moved_keys(OmegaConf.create(OmegaConf.to_yaml(old)))
    for old_key, new_key in MOVED_KEYS.items():
        section, name = old_key.split(".")
        assert name not in migrated[section], old_key
        assert OmegaConf.select(migrated, new_key) == OmegaConf.select(new, new_key), new_key
    for nested in NEW_SECTIONS:  # nested under its section, holding exactly the keys that moved there
        moved = {n.rsplit(".", 1)[1] for n in MOVED_KEYS.values() if n.startswith(nested + ".")}
        assert set(OmegaConf.select(migrated, nested)) == moved, nested
    assert migrated.trainer.optim.lr == 2e-5 and migrated.rollout.generation.max_new_tokens == 33
    assert migrated.rollout.validation.top_k == 7 and migrated.trainer.max_steps == new.trainer.max_steps
    # a config without old keys is read as it is
    assert OmegaConf.to_container(migrate_moved_keys(new.copy())) == OmegaConf.to_container(new, resolve=True)


def test_evaluate_reads_a_checkpoint_written_before_the_keys_moved(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    cfg = compose(["trainer.optim.lr=2e-5", "rollout.validation.temperature=0.2", f"run_dir={tmp_path / 'run'}"])
    old = _with_old_keys(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(old))
    write_complete_marker(ckpt, 3)
    run, info = load_eval_run([f"checkpoint.resume={ckpt}"])
    assert info.step == 3 and run.trainer.optim.lr == 2e-5 and run.rollout.validation.temperature == 0.2
    assert run.rollout.generation.max_new_tokens == cfg.rollout.generation.max_new_tokens == 8
